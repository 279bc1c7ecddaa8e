"""The shared training-benchmark runner (benchmarks/train_compare.py) and its polyp front-end, on tiny
synthetic data."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import polyp  # noqa: E402
import train_compare as tc  # noqa: E402

from medseg.data import write_polyp_dataset  # noqa: E402
from medseg.engine.evaluate import read_prediction  # noqa: E402
from medseg.errors import MedsegError  # noqa: E402
from medseg.models.registry import create_model, list_models, unregister_model  # noqa: E402


@pytest.fixture
def peer():
    """MONAI's BasicUNet registered for the test only (the zoo test must never see it)."""
    pytest.importorskip("monai")
    registered_before = tc.MONAI_BASICUNET in list_models()
    yield tc.register_monai_basicunet()
    if not registered_before:
        unregister_model(tc.MONAI_BASICUNET)


def budget(**changes) -> tc.Budget:
    settings = dict(size=(32, 32), epochs=1, minutes_per_model=None, iterations_per_epoch=2, batch_size=2,
                    train_cases=None, val_cases=2, test_cases=3, lr=1e-3, loss="structure", device="cpu",
                    workers=0, tta=False, seed=0)
    return tc.Budget(**{**settings, **changes})


def test_split_is_disjoint_seeded_and_limited():
    ids = [f"case_{i:03d}" for i in range(20)]
    split = tc.split_cases(ids, test_cases=5, val_cases=3, train_cases=None, seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [12, 3, 5]
    assert sorted(split["train"] + split["val"] + split["test"]) == ids
    assert tc.split_cases(list(reversed(ids)), 5, 3, None, seed=0) == split  # input order is irrelevant
    assert tc.split_cases(ids, 5, 3, None, seed=1)["test"] != split["test"]
    limited = tc.split_cases(ids, 5, 3, train_cases=4, seed=0)
    assert limited["test"] == split["test"] and len(limited["train"]) == 4
    assert set(limited["train"]) < set(split["train"])
    with pytest.raises(MedsegError, match="leave no training case"):
        tc.split_cases(ids, 15, 5, None, seed=0)


def test_peer_trains_like_our_models(peer):
    assert tc.register_monai_basicunet() == peer  # a second call is harmless
    model = create_model(peer, in_channels=3, num_classes=2, spatial_dims=2)
    from monai.networks.nets import BasicUNet

    assert isinstance(model, BasicUNet) and model.input_multiple == 16
    x = torch.randn(1, 3, 32, 32)
    assert model.train()(x).shape == (1, 2, 32, 32)
    out = model.eval()(x)
    assert type(out) is torch.Tensor and out.shape == (1, 2, 32, 32)
    volume = create_model(peer, in_channels=1, num_classes=3, spatial_dims=3, features=(2, 2, 2, 2, 2, 2))
    assert volume.eval()(torch.randn(1, 1, 32, 16, 32)).shape == (1, 3, 32, 16, 32)


def test_unknown_model_and_bad_size_fail_before_training():
    with pytest.raises(MedsegError, match="--models: .*not_a_model"):
        tc.check_models(["unet", "not_a_model"], polyp.TASK, budget())
    with pytest.raises(MedsegError, match="--size: .*multiples of 16"):
        tc.check_models(["unet"], polyp.TASK, budget(size=(40, 40)))
    with pytest.raises(MedsegError, match="named twice"):
        tc.check_models(["unet", "UNET"], polyp.TASK, budget())


def test_metric_cell_shows_mean_class_and_nan_count():
    summary = {"metrics": {"dice": {"mean": 0.81234, "nan": 0, "per_class": {1: 0.7, 2: 0.9}},
                           "hd95": {"mean": 3.456, "nan": 2, "per_class": {1: float("nan")}}}}
    assert tc.metric_cell(summary, tc.Column("Dice", "dice")) == "0.812"
    assert tc.metric_cell(summary, tc.Column("Dice", "dice", label=2)) == "0.900"
    assert tc.metric_cell(summary, tc.Column("HD95", "hd95", digits=2)) == "3.46 (2 nan)"
    assert tc.metric_cell(summary, tc.Column("HD95", "hd95", label=1)) == "nan"
    assert tc.metric_cell(summary, tc.Column("IoU", "iou")) == "-"


def test_probability_maps_reach_evaluate_as_probabilities(tmp_path):
    probabilities = np.array([[[0.1, 0.6], [0.5, 0.93]]], dtype=np.float32)
    np.savez_compressed(tmp_path / "case_a_probabilities.npz", probabilities=probabilities)
    folder = tc.probability_maps(tmp_path, tmp_path / "maps")
    prediction = read_prediction(folder / "case_a.tif", classes=(1,))
    np.testing.assert_allclose(prediction.probabilities, probabilities, atol=1e-7)
    np.testing.assert_array_equal(prediction.labels, [[0, 1], [1, 1]])


def test_polyp_front_end_end_to_end(tmp_path, peer):
    data = write_polyp_dataset(tmp_path / "data", n_cases=9, size=(32, 32), seed=0)
    task = dataclasses.replace(polyp.TASK, model_options={"unet": {"features": 4, "depth": 2},
                                                          peer: {"features": (4, 4, 4, 4, 4, 4)}})
    argv = ["--models", "unet", peer, "--size", "32", "--epochs", "1", "--iterations-per-epoch", "1",
            "--batch-size", "2", "--val-cases", "2", "--test-cases", "2", "--workers", "0", "--device", "cpu",
            "--data", str(data), "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results")]
    assert tc.main(task, polyp.parser(), argv) == 0
    report = next((tmp_path / "results").glob("polyp-cpu-*.md")).read_text(encoding="utf-8")
    assert "--test-cases 2" in report and "machine: CPU" in report
    rows = [line for line in report.splitlines() if line.startswith(("| unet ", f"| {peer} "))]
    assert len(rows) == 2
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == 5 + len(polyp.COLUMNS)
    assert 0.0 <= float(cells[5]) <= 1.0  # Dice
    split = (tmp_path / "out" / "split.json").read_text(encoding="utf-8")
    assert split.count("case_") == 9 and "5 training, 2 validation" in report
    assert len(list((tmp_path / "out" / "unet" / "probabilities").glob("*.tif"))) == 2
    # a second run refuses to overwrite the first
    assert tc.main(task, polyp.parser(), argv) == 2


def test_hippocampus_2p5d_variant_is_a_2d_unet_on_slice_windows(tmp_path):
    import hippocampus

    size = (32, 48, 32)
    settings = budget(size=size, loss="dice_ce")
    assert tc.check_models(["unet", "unet2p5d"], hippocampus.TASK, settings) == ["unet", "unet2p5d"]
    folders = (tmp_path / "splits.json", tmp_path / "data", tmp_path / "cache")
    config = tc.build_config(hippocampus.TASK, "unet2p5d", settings, tmp_path / "run", *folders)
    assert config.data.slices == 2 and config.data.patch_size == (64, 48) and config.data.batch_size == 32
    assert config.model.spatial_dims == 2 and config.inference.mode == "whole"
    assert config.model.options == hippocampus.UNET_LAYOUT  # the 3D row's U-Net layout, in 2D
    reference = tc.build_config(hippocampus.TASK, "unet", settings, tmp_path / "run3d", *folders)
    assert reference.data.slices is None and reference.data.patch_size == size
    assert reference.model.spatial_dims == 3 and reference.inference.mode == "sliding_window"
    variant = hippocampus.TASK.variants["unet2p5d"]
    assert variant.input_shape(hippocampus.TASK, size) == (5, 64, 48)


def test_hippocampus_unetr_row_takes_the_training_size_as_img_size(tmp_path):
    import hippocampus

    size = (32, 48, 32)
    config = tc.build_config(hippocampus.TASK, "unetr", budget(size=size), tmp_path / "run",
                             tmp_path / "splits.json", tmp_path / "data", tmp_path / "cache")
    assert config.model.name == "unetr"
    assert config.model.options == {**hippocampus.UNETR_OPTIONS, "img_size": list(size)}
    assert hippocampus.VARIANTS["unetr"].options == hippocampus.UNETR_OPTIONS  # the variant is not mutated
    other = tc.build_config(hippocampus.TASK, "residual_unet3d", budget(size=size), tmp_path / "run",
                            tmp_path / "splits.json", tmp_path / "data", tmp_path / "cache")
    assert "img_size" not in other.model.options
