"""2.5D and tri-planar runs (``data.slices``): config validation, training and validation on 3D volumes,
prediction rebuilt slice by slice with the source geometry, and the hippocampus preset (slow)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import NO_AUGMENTATION
from helpers import tiny_checkpoint as _checkpoint
from medseg.config_types import ConfigError
from medseg.data import write_lesion_dataset
from medseg.data.io import read_image, read_mask
from medseg.data.preprocess import Preprocessor
from medseg.engine import train
from medseg.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
from medseg.engine.config import config_from_dict, load_config
from medseg.engine.inference import PaddedPredictor, logits_to_labels
from medseg.engine.predict import load_models, predict_paths
from medseg.engine.slice_inference import SlicePredictor

ROOT = Path(__file__).resolve().parents[2]
HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "msd-task04-hippocampus"
ROTATED = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.0, 0.8, 3.0], [0, 0, 0, 1]])
"""A voxel-to-RAS affine with a rotation, anisotropic spacing (2, 1.5, 0.8 mm) and an offset origin."""


def slice_config(**data: object) -> dict:
    return {"data": {"slices": 2, "patch_size": [32, 32], **data}, "model": {"name": "unet"}}


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(("changes", "message"), [
    ({"data": {"slices": -1}}, r"data\.slices: .*>= 0"),
    ({"model": {"name": "unet", "spatial_dims": 3}}, r"data\.slices: .*model\.spatial_dims is 3"),
    ({"model": {"name": "conresnet"}}, r"data\.slices: .*conresnet is 3D only"),
    ({"data": {"slices": None, "slice_axis": "coronal"}}, r"data\.slice_axis: applies to 2\.5D"),
    ({"data": {"slices": 1, "slice_axis": "oblique"}}, r"data\.slice_axis"),
    ({"data": {"patch_size": None}}, r"data\.slices: .*set data\.patch_size"),
    ({"data": {"patch_size": [32, 32, 32]}}, r"data\.patch_size: .*2D slice's \(2 values\)"),
    ({"data": {"spacing": [1.0, 1.0]}}, r"data\.spacing: .*3D volume's \(3 values\)"),
    ({"inference": {"mode": "sliding_window"}}, r"inference\.mode: 2\.5D prediction"),
])
def test_bad_slice_settings_are_one_line_errors(changes: dict, message: str) -> None:
    config = slice_config()
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(config)
    assert "\n" not in str(info.value)


def test_slice_settings_resolve() -> None:
    config = config_from_dict(slice_config(spacing=[1.0, 1.0, 3.0], slice_axis="triplanar"))
    assert config.data.slices == 2 and config.data.slice_axis == "triplanar"
    assert config.spatial_dims == 2  # the model's


def test_preset_reads_and_names_the_3d_presets_classes() -> None:
    config = load_config(ROOT / "configs" / "unet2p5d-hippocampus.yaml")
    reference = load_config(ROOT / "configs" / "unet3d-hippocampus.yaml")
    assert config.data.slices == 2 and config.model.spatial_dims == 2 and config.model.name == "unet"
    assert config.data.class_names == reference.data.class_names
    assert config.data.num_classes == reference.data.num_classes and config.data.root == reference.data.root


# ---------------------------------------------------------------------------------------------- prediction


def _slice_checkpoint(path: Path, axes: list[int], k: int = 2, mirror: bool = False) -> Path:
    return _checkpoint(path, in_channels=2 * k + 1, num_classes=3, dims=2, mode="multiclass",
                       inference={"mirror": mirror, "slices": k, "slice_axes": axes, "window_batch_size": 3})


@pytest.mark.parametrize("axes", [[0], [2], [0, 1, 2]])
def test_prediction_keeps_the_affine_and_equals_the_slicewise_model(tmp_path: Path, axes: list[int]) -> None:
    ckpt = _slice_checkpoint(tmp_path / "m.pt", axes)
    data = np.random.default_rng(0).normal(size=(11, 9, 14)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, ROTATED), tmp_path / "vol.nii.gz")
    loaded = load_models([ckpt], torch.device("cpu"))[0]
    assert (loaded.in_channels, loaded.spatial_dims, loaded.patch_size) == (1, 3, None)
    written = predict_paths([ckpt], tmp_path / "vol.nii.gz", tmp_path / "out", save_probabilities=True,
                            progress=False)
    result = nib.load(written[0])
    np.testing.assert_array_equal(result.affine, nib.load(tmp_path / "vol.nii.gz").affine)
    np.testing.assert_allclose(result.affine, ROTATED, atol=1e-6)
    assert result.shape == data.shape
    image, geometry = read_image(tmp_path / "vol.nii.gz")
    prepared = Preprocessor(normalization="zscore")(image, None, geometry).image
    model = build_model_from_checkpoint(load_checkpoint(ckpt))
    with torch.no_grad():
        predictor = SlicePredictor(PaddedPredictor(model), axes, 2, "multiclass")
        logits = predictor(torch.from_numpy(prepared)[None])
    labels, label_geometry = read_mask(written[0])
    np.testing.assert_array_equal(labels[0], logits_to_labels(logits[0], "multiclass").numpy())
    np.testing.assert_allclose(label_geometry.spacing, geometry.spacing)
    probabilities, _ = read_image(tmp_path / "out" / "vol_probabilities.nii.gz")
    np.testing.assert_allclose(probabilities, logits[0].softmax(0).numpy(), atol=1e-5)


def test_mirrored_triplanar_prediction_writes_probabilities_on_the_source_grid(tmp_path: Path) -> None:
    ckpt = _slice_checkpoint(tmp_path / "m.pt", [0, 1, 2], k=1, mirror=True)
    data = np.random.default_rng(1).normal(size=(7, 10, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, ROTATED), tmp_path / "vol.nii.gz")
    predict_paths([ckpt], tmp_path / "vol.nii.gz", tmp_path / "out", save_probabilities=True, progress=False)
    probabilities = nib.load(tmp_path / "out" / "vol_probabilities.nii.gz")
    np.testing.assert_array_equal(probabilities.affine, nib.load(tmp_path / "vol.nii.gz").affine)
    values = np.asarray(probabilities.dataobj)
    assert values.shape[:3] == data.shape and values.shape[-1] == 3
    np.testing.assert_allclose(values.sum(-1), 1.0, atol=1e-4)  # averaged softmax probabilities


def test_cli_predicts_a_folder_of_volumes_with_a_2p5d_checkpoint(tmp_path: Path) -> None:
    from medseg.cli import main

    ckpt = _slice_checkpoint(tmp_path / "m.pt", [1], k=1)
    (tmp_path / "in").mkdir()
    shapes = {"a": (6, 8, 5), "b": (4, 7, 9)}
    for name, shape in shapes.items():
        data = np.random.default_rng(len(name)).normal(size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(data, ROTATED), tmp_path / "in" / f"{name}.nii.gz")
    assert main(["predict", str(ckpt), str(tmp_path / "in"), str(tmp_path / "out"), "--no-progress"]) == 0
    for name, shape in shapes.items():
        result = nib.load(tmp_path / "out" / f"{name}.nii.gz")
        assert result.shape == shape
        np.testing.assert_array_equal(result.affine, nib.load(tmp_path / "in" / f"{name}.nii.gz").affine)


def test_a_2d_image_is_refused_by_a_2p5d_checkpoint(tmp_path: Path) -> None:
    from PIL import Image

    from medseg.data.geometry import DataError

    ckpt = _slice_checkpoint(tmp_path / "m.pt", [0])
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "flat.png")
    with pytest.raises(DataError, match="2D image, the model is 3D"):
        predict_paths([ckpt], tmp_path / "flat.png", tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------------------------- training


def test_training_on_lesion_volumes_derives_the_channels_and_validates_slicewise(tmp_path: Path) -> None:
    data = write_lesion_dataset(tmp_path / "lesion", n_cases=2, shape=(8, 16, 16), spacing=(3.0, 1.0, 1.0),
                                num_classes=2)
    config = config_from_dict({
        "run_dir": str(tmp_path / "run"),
        "data": {"root": str(data), "slices": 1, "patch_size": [16, 16], "label_mode": "multiclass",
                 "batch_size": 4, "num_workers": 0, "val_fraction": 0.5, "normalization": "zscore"},
        "model": {"name": "unet", "options": {"features": 4, "depth": 2}},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "iterations_per_epoch": 1, "device": "cpu", "seed": 0},
        "augmentation": dict(NO_AUGMENTATION), "inference": {"mirror": False}})
    result = train(config, progress=False)
    assert len(result.history) == 2 and all(np.isfinite(row["val_dice"]) for row in result.history)
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["model"]["in_channels"] == 3 and ckpt["model"]["spatial_dims"] == 2
    assert ckpt["inference"]["slices"] == 1
    assert ckpt["inference"]["slice_axes"] == [0]  # auto: the coarsest spacing (3 mm) is array axis 0
    image = sorted((data / "imagesTr").iterdir())[0]
    written = predict_paths([result.last_checkpoint], image, tmp_path / "pred", progress=False)
    assert nib.load(written[0]).shape == nib.load(image).shape
    np.testing.assert_array_equal(nib.load(written[0]).affine, nib.load(image).affine)


@pytest.mark.slow
@pytest.mark.skipif(not (HIPPOCAMPUS / "imagesTr").is_dir(), reason="shared hippocampus data absent")
def test_hippocampus_preset_trains_and_predicts_a_held_out_volume(tmp_path: Path) -> None:
    ids = ["hippocampus_003", "hippocampus_004", "hippocampus_006"]
    rows = ["image,label"] + [f"{HIPPOCAMPUS}/imagesTr/{i}.nii.gz,{HIPPOCAMPUS}/labelsTr/{i}.nii.gz"
                              for i in ids[:2]]
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    config = load_config(ROOT / "configs" / "unet2p5d-hippocampus.yaml", [
        f"data.root={tmp_path / 'cases.csv'}", "data.layout=list", "data.allow_outside_root=true",
        f"run_dir={tmp_path / 'run'}", "data.num_workers=0", "data.batch_size=4", "data.fold=null",
        "data.val_fraction=0.5",
        "model.options={features: 8, depth: 4, norm: instance, deep_supervision: true}",
        "train.epochs=2", "train.iterations_per_epoch=3", "train.val_every=1", "train.device=cpu",
        "inference.mirror=false"])
    result = train(config, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(np.isfinite(row["val_dice"]) for row in result.history)
    held_out = HIPPOCAMPUS / "imagesTr" / f"{ids[2]}.nii.gz"
    written = predict_paths([result.best_checkpoint], held_out, tmp_path / "pred", progress=False)
    source, predicted = nib.load(held_out), nib.load(written[0])
    assert predicted.shape == source.shape
    np.testing.assert_array_equal(predicted.affine, source.affine)
    assert set(np.unique(np.asarray(predicted.dataobj)).tolist()) <= {0, 1, 2}
