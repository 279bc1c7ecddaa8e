"""Cascades (:mod:`medseg.engine.cascade`): config validation, the stage-2 input (image + coarse channels
up-sampled to the full-resolution grid), prediction through both stages with the source geometry, and
training both stages on synthetic and real 3D data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import NO_AUGMENTATION, tiny_checkpoint
from medseg.cli import main
from medseg.config_types import ConfigError
from medseg.data.augment import AugmentationConfig, BatchAugmenter
from medseg.data.preprocess import Preprocessor
from medseg.data.synthetic import write_lesion_dataset
from medseg.engine.cascade import CascadeError, augment_with_coarse, coarse_onehot
from medseg.engine.checkpoint import load_checkpoint, save_checkpoint
from medseg.engine.config import config_from_dict
from medseg.engine.predict import load_models, predict_labels, predict_paths
from medseg.engine.trainer import train

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "msd-task04-hippocampus"
AFFINE = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.0, 1.2, 3.0], [0, 0, 0, 1]])


def _cascade_checkpoint(tmp: Path, *, stage1_classes: int = 3) -> Path:
    """A stage-2 checkpoint (1 image + 2 coarse channels) embedding a stage 1 that predicts at half the
    resolution (target spacing twice the source's), both untrained multiclass U-Nets."""
    low = Preprocessor(normalization="zscore", target_spacing=(2.4, 3.0, 4.0)).to_dict()
    stage1 = load_checkpoint(tiny_checkpoint(tmp / "s1.pt", dims=3, num_classes=stage1_classes,
                                             mode="multiclass", preprocessing=low, seed=1))
    full = Preprocessor(normalization="zscore", coarse_channels=2).to_dict()
    path = tiny_checkpoint(tmp / "s2.pt", dims=3, in_channels=3, num_classes=3, mode="multiclass",
                           preprocessing=full)
    ckpt = load_checkpoint(path)
    ckpt["cascade"] = {"stage1": {k: v for k, v in stage1.items() if k != "training"}, "source": "s1.pt"}
    return save_checkpoint(path, ckpt)


def _volume(path: Path, shape: tuple[int, ...] = (16, 16, 24)) -> Path:
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def _input_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    return shapes


# ------------------------------------------------------------------------------------------ config


def test_cascade_from_is_validated_by_the_config() -> None:
    config = config_from_dict({"data": {"cascade_from": "runs/stage1"}})
    assert config.data.cascade_from == "runs/stage1"
    with pytest.raises(ConfigError, match="data.cascade_from: empty path"):
        config_from_dict({"data": {"cascade_from": " "}})
    with pytest.raises(ConfigError, match="data.cascade_from: expected a string or null"):
        config_from_dict({"data": {"cascade_from": 3}})
    with pytest.raises(ConfigError, match="data.cascade_from: .*not label_mode instance"):
        config_from_dict({"data": {"cascade_from": "x.pt", "label_mode": "instance"},
                          "model": {"name": "mask_rcnn"},
                          "train": {"val_metrics": ["ap"], "best_metric": "ap"}})
    with pytest.raises(ConfigError, match="data.cascade_from: .*cannot be combined with 2.5D input"):
        config_from_dict({"data": {"cascade_from": "x.pt", "slices": 2, "patch_size": [32, 32]},
                          "model": {"name": "unet", "spatial_dims": 2}})


def _lesion_config(tmp: Path, run: str, **data: object) -> dict:
    root = tmp / "data"
    write_lesion_dataset(root, n_cases=4, shape=(12, 16, 16), num_classes=3, seed=0)
    return {
        "run_dir": str(tmp / run),
        "data": {"root": str(root), "layout": "decathlon", "label_mode": "multiclass", "num_classes": 3,
                 "normalization": "zscore", "batch_size": 2, "num_workers": 0, "val_fraction": 0.25,
                 "cache_dir": str(tmp / run / "cache"), **data},
        "model": {"name": "unet", "spatial_dims": 3, "options": {"features": 4, "depth": 2}},
        "loss": {"name": "dice_ce"},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 1, "iterations_per_epoch": 2, "device": "cpu", "seed": 0},
        "augmentation": dict(NO_AUGMENTATION),
        "inference": {"mirror": False},
    }


def test_missing_stage1_checkpoint_is_a_one_line_error_leaving_no_run(tmp_path: Path, capsys) -> None:
    config = _lesion_config(tmp_path, "s2", cascade_from=str(tmp_path / "nowhere.pt"))
    with pytest.raises(CascadeError, match=r"^data.cascade_from: stage-1 checkpoint .*nowhere.pt not found$"):
        train(config_from_dict(config), progress=False)
    assert not (tmp_path / "s2").exists()
    (tmp_path / "empty_run").mkdir()
    config["data"]["cascade_from"] = str(tmp_path / "empty_run")
    with pytest.raises(CascadeError, match="run folder .*empty_run holds no best.pt or last.pt"):
        train(config_from_dict(config), progress=False)


def test_stage1_with_other_classes_is_refused(tmp_path: Path) -> None:
    stage1 = tiny_checkpoint(tmp_path / "s1.pt", dims=3, num_classes=2, mode="multiclass")
    config = _lesion_config(tmp_path, "s2", cascade_from=str(stage1))
    with pytest.raises(CascadeError, match=r"s1.pt has classes 2, this run 3"):
        train(config_from_dict(config), progress=False)
    binary = tiny_checkpoint(tmp_path / "b.pt", dims=3, num_classes=1, mode="binary")
    config["data"]["cascade_from"] = str(binary)
    with pytest.raises(CascadeError, match=r"b.pt has label mode 'binary', this run 'multiclass'"):
        train(config_from_dict(config), progress=False)


def test_class_names_are_compared_when_both_runs_list_as_many() -> None:
    from medseg.engine.cascade import check_stage1

    ckpt = {"label_mode": "multiclass", "class_names": ["background", "anterior", "posterior"],
            "model": {"in_channels": 1, "spatial_dims": 3, "num_classes": 3}}
    options = {"label_mode": "multiclass", "image_channels": 1, "spatial_dims": 3, "num_classes": 3}
    check_stage1(ckpt, "s1.pt", class_names=["anterior", "posterior"], **options)  # derived: no background
    check_stage1(ckpt, "s1.pt", class_names=["background", "anterior", "posterior"], **options)
    with pytest.raises(CascadeError, match="s1.pt has class names"):
        check_stage1(ckpt, "s1.pt", class_names=["background", "posterior", "anterior"], **options)
    with pytest.raises(CascadeError, match="s1.pt has image channels 1, this run 2"):
        check_stage1(ckpt, "s1.pt", **{**options, "image_channels": 2})


# ------------------------------------------------------------------------------------------ inputs


def test_coarse_onehot_has_one_channel_per_foreground_class() -> None:
    labels = np.array([[[0, 1], [2, 2]]])
    onehot = coarse_onehot(labels, "multiclass", 3)
    np.testing.assert_array_equal(onehot, [[[0, 1], [0, 0]], [[0, 0], [1, 1]]])
    assert coarse_onehot(labels != 0, "binary", 1).shape == (1, 2, 2)
    assert coarse_onehot(np.zeros((2, 3, 3)), "multilabel", 2).shape == (2, 3, 3)
    with pytest.raises(CascadeError, match="expected one class map"):
        coarse_onehot(np.zeros((2, 3, 3)), "multiclass", 3)


def test_coarse_channels_are_not_normalised_and_resampled_linearly() -> None:
    from medseg.data.geometry import Geometry

    image = np.random.default_rng(0).normal(5, 3, size=(1, 8, 8, 8)).astype(np.float32)
    coarse = np.zeros((2, 8, 8, 8), np.float32)
    coarse[0, :4] = 1
    coarse[1, 4:] = 1
    geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        shape=(8, 8, 8))
    prepared = Preprocessor(normalization="zscore", target_spacing=(2.0, 2.0, 2.0), coarse_channels=2)(
        np.concatenate([image, coarse]), None, geometry)
    assert prepared.image.shape == (3, 4, 4, 4)
    assert abs(prepared.image[0].mean()) < 1.0  # the image is z-scored (its mean was 5)
    assert prepared.image[1:].min() >= 0 and prepared.image[1:].max() <= 1  # linear: no overshoot
    np.testing.assert_allclose(prepared.image[1:].sum(0), 1.0, atol=1e-5)
    assert Preprocessor().to_dict() == Preprocessor(coarse_channels=0).to_dict()  # old caches stay valid


def test_stage2_input_is_image_plus_upsampled_coarse_channels(tmp_path: Path) -> None:
    models = load_models([_cascade_checkpoint(tmp_path)], torch.device("cpu"))
    stage2, stage1 = models[0], models[0].stage1
    assert stage1 is not None and stage2.image_channels == 1 and stage2.coarse_channels == 2
    seen1, seen2 = _input_shapes(stage1.model), _input_shapes(stage2.model)
    path = _volume(tmp_path / "v.nii.gz")
    from medseg.data.io import read_image
    from medseg.engine.predict import PredictSettings

    image, geometry = read_image(path)
    labels, _ = predict_labels(models, image, geometry, PredictSettings(mirror=False), torch.device("cpu"))
    assert labels.shape == (1, 24, 16, 16)  # array order of the NIfTI's (16, 16, 24)
    assert seen1 and seen1[0][1:] == (1, 12, 8, 8)  # stage 1 ran at half resolution (target spacing x2)
    assert seen2 and seen2[0][1:] == (3, 24, 16, 16)  # stage 2: 1 image + 2 coarse channels at full size


def test_coarse_channels_follow_spatial_but_not_intensity_augmentation() -> None:
    config = AugmentationConfig.from_dict({**NO_AUGMENTATION, "mirror": {"p": 1.0, "axes": [0]},
                                           "brightness": {"p": 1.0, "factor": [2.0, 2.0]}})
    image = torch.rand(2, 3, 6, 6, 6)
    image[:, 1:] = (image[:, 1:] > 0.5).float()
    label = torch.randint(0, 3, (2, 1, 6, 6, 6))
    out, out_label = augment_with_coarse(BatchAugmenter(config, 3, seed=0), image, label, 2)
    assert out.shape == image.shape and out_label.shape == label.shape
    torch.testing.assert_close(out[:, 1:], image[:, 1:].flip(2))  # mirrored, not brightened
    torch.testing.assert_close(out[:, :1], 2.0 * image[:, :1].flip(2))
    torch.testing.assert_close(out_label, label.flip(2))


# ------------------------------------------------------------------------------------------ predict


def test_predict_with_a_cascade_checkpoint_runs_both_stages_and_keeps_the_affine(tmp_path: Path) -> None:
    ckpt = _cascade_checkpoint(tmp_path)
    (tmp_path / "in").mkdir()
    source = _volume(tmp_path / "in" / "vol.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(source.parent), str(out), "--no-tta"]) == 0
    result = nib.load(out / "vol.nii.gz")
    np.testing.assert_allclose(result.affine, AFFINE, atol=1e-5)
    assert result.shape == (16, 16, 24)
    assert set(np.unique(np.asarray(result.dataobj))) <= {0, 1, 2}


def test_cascade_checkpoint_refuses_an_image_with_the_stage2_channel_count(tmp_path: Path, capsys) -> None:
    ckpt = _cascade_checkpoint(tmp_path)
    data = np.zeros((16, 16, 24, 3), np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "three.nii.gz")
    assert main(["predict", str(ckpt), str(tmp_path / "three.nii.gz"), str(tmp_path / "o")]) == 2
    assert "3 channels, the model takes 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ training


def test_training_both_stages_caches_stage1_predictions_and_predicts(tmp_path: Path, monkeypatch) -> None:
    stage1 = train(config_from_dict(_lesion_config(tmp_path, "s1", spacing=[2.0, 2.0, 2.0],
                                                  patch_size=[8, 8, 8])), progress=False)
    config = _lesion_config(tmp_path, "s2", cascade_from=str(tmp_path / "s1"))
    result = train(config_from_dict(config), progress=False)
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["model"]["in_channels"] == 3  # 1 image channel + 2 foreground classes
    assert ckpt["cascade"]["source"] == str(stage1.best_checkpoint)
    assert ckpt["cascade"]["stage1"]["preprocessing"]["target_spacing"] == [2.0, 2.0, 2.0]
    assert "training" not in ckpt["cascade"]["stage1"]
    folder = tmp_path / "s2" / "cache" / "stage1"
    manifest = json.loads((folder / "stage1.json").read_text())
    assert sorted(manifest["cases"]) == sorted(p.name[:-7] for p in folder.glob("case_*.nii.gz"))
    assert len(manifest["cases"]) == 4
    coarse = nib.load(folder / "case_000.nii.gz")
    label = nib.load(tmp_path / "data" / "labelsTr" / "case_000.nii.gz")
    np.testing.assert_allclose(coarse.affine, label.affine, atol=1e-5)

    import medseg.engine.cascade_cache as cascade_cache
    from medseg.data.datasets import load_dataset

    calls: list[int] = []
    original = cascade_cache.predict_labels
    monkeypatch.setattr(cascade_cache, "predict_labels", lambda *a, **k: calls.append(1) or original(*a, **k))
    cases = load_dataset(tmp_path / "data").cases
    options = {"label_mode": "multiclass", "image_channels": 1, "spatial_dims": 3, "class_names": None,
               "device": torch.device("cpu"), "progress": False}
    staged = cascade_cache.prepare_coarse_cases(tmp_path / "s1", cases, folder, **options)
    assert calls == []  # the stage-1 predictions are reused
    assert staged.coarse_channels == 2 and staged.cases[0].images[-1].parent == folder
    os.utime(stage1.best_checkpoint, ns=(1, 1))  # a new stage-1 version: predicted again
    cascade_cache.prepare_coarse_cases(tmp_path / "s1", cases, folder, **options)
    assert len(calls) == 4

    out = tmp_path / "pred"
    predict_paths([result.last_checkpoint], tmp_path / "data" / "imagesTr" / "case_001_0000.nii.gz",
                  out, progress=False)
    written = nib.load(out / "case_001_0000.nii.gz")
    source = nib.load(tmp_path / "data" / "imagesTr" / "case_001_0000.nii.gz")
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert written.shape == source.shape


@pytest.mark.slow
@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason="shared hippocampus data not present")
def test_cascade_on_two_hippocampus_volumes_predicts_a_held_out_one(tmp_path: Path) -> None:
    images = sorted((HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))[:3]
    pairs = [{"image": str(p), "label": str(HIPPOCAMPUS / "labelsTr" / p.name)} for p in images[:2]]
    listing = tmp_path / "cases.json"
    listing.write_text(json.dumps(pairs))
    base = {
        "data": {"root": str(listing), "allow_outside_root": True, "label_mode": "multiclass",
                 "num_classes": 3, "normalization": "zscore", "batch_size": 2, "num_workers": 0,
                 "val_fraction": 0.5},
        "model": {"name": "unet", "spatial_dims": 3, "options": {"features": 8, "depth": 3}},
        "loss": {"name": "dice_ce"}, "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 2, "iterations_per_epoch": 3, "device": "cpu", "seed": 0},
        "inference": {"mirror": False, "mode": "sliding_window"},
    }
    low = {**base, "run_dir": str(tmp_path / "low"),
           "data": {**base["data"], "spacing": [2.0, 2.0, 2.0], "patch_size": [24, 32, 24]}}
    train(config_from_dict(low), progress=False)
    full = {**base, "run_dir": str(tmp_path / "full"),
            "data": {**base["data"], "patch_size": [40, 56, 40], "cascade_from": str(tmp_path / "low")}}
    result = train(config_from_dict(full), progress=False)
    held_out = images[2]
    predict_paths([result.best_checkpoint or result.last_checkpoint], held_out, tmp_path / "pred",
                  progress=False)
    written, source = nib.load(tmp_path / "pred" / held_out.name), nib.load(held_out)
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert written.shape == source.shape
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
