"""``medseg export``: TorchScript / ONNX round trips against PyTorch, predict with the exported file,
refusals and atomic output (tiny random U-Nets)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_checkpoint
from medseg.cli import main
from medseg.data.io import read_mask
from medseg.data.preprocess import Preprocessor
from medseg.data.synthetic import write_lesion_dataset, write_polyp_dataset
from medseg.engine import export as export_module
from medseg.engine.checkpoint import build_model_from_checkpoint, make_checkpoint, save_checkpoint
from medseg.engine.export import ExportError, export_checkpoint, is_exported, load_exported
from medseg.engine.predict import predict_paths
from medseg.models.registry import create_model, model_info


def _max_diff(checkpoint: Path, exported: Path, shape: tuple[int, ...], seed: int) -> float:
    """Max abs difference of the export to the checkpoint's network on a random input of ``shape``."""
    model = build_model_from_checkpoint(checkpoint)
    runner = load_exported(exported)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((runner(x) - model(x)).abs().max())


@pytest.mark.parametrize(("name", "dims", "sizes"), [
    ("unet", 2, [(1, 1, 24, 32), (3, 1, 40, 16)]),
    ("unet3d", 3, [(1, 1, 8, 12, 16), (2, 1, 16, 8, 8)]),
])
def test_torchscript_export_matches_pytorch_at_two_sizes(tmp_path: Path, name: str, dims: int,
                                                         sizes: list[tuple[int, ...]]) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt", name=name, dims=dims, num_classes=3, mode="multiclass")
    result = export_checkpoint(ckpt, "torchscript")
    assert result.path == tmp_path / "m.torchscript.pt" and is_exported(result.path)
    assert not is_exported(ckpt)  # a checkpoint is a zip archive too, without the metadata
    assert result.dynamic_spatial and result.dynamic_batch and result.max_abs_diff <= 1e-4
    for seed, shape in enumerate(sizes):
        assert _max_diff(ckpt, result.path, shape, seed) <= 1e-4
    with zipfile.ZipFile(result.path) as archive:
        name_json = next(n for n in archive.namelist() if n.endswith("/extra/medseg.json"))
        metadata = json.loads(archive.read(name_json))
    assert metadata["model"]["spatial_dims"] == dims and metadata["model"]["num_classes"] == 3
    assert metadata["label_mode"] == "multiclass" and metadata["normalization"] == "zscore"
    assert metadata["input_multiple"] == 4 and metadata["dynamic_spatial"] is True


def test_onnx_export_runs_in_onnxruntime_like_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    ckpt = tiny_checkpoint(tmp_path / "m.pt", num_classes=2, mode="multiclass",
                           inference={"mirror": False, "patch_size": [32, 32]})
    result = export_checkpoint(ckpt, "onnx", tmp_path / "model.onnx", opset=17)
    assert result.path == tmp_path / "model.onnx" and result.dynamic_spatial
    assert result.checked_shapes[0] == (1, 1, 32, 32) and result.max_abs_diff <= 1e-4
    for seed, shape in enumerate([(1, 1, 32, 32), (2, 1, 20, 44)]):
        assert _max_diff(ckpt, result.path, shape, seed) <= 1e-4
    assert load_exported(result.path).metadata["patch_size"] == [32, 32]


def _formats() -> list[str]:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return ["torchscript"]
    return ["torchscript", "onnx"]


@pytest.mark.parametrize("fmt", _formats())
def test_predict_with_the_export_writes_the_labels_of_the_checkpoint(tmp_path: Path, fmt: str) -> None:
    data = write_polyp_dataset(tmp_path / "polyps", n_cases=2, size=(40, 52), seed=1)
    ckpt = tiny_checkpoint(tmp_path / "m.pt", in_channels=3, num_classes=3, mode="multiclass",
                           preprocessing=Preprocessor(normalization="rgb").to_dict(),
                           inference={"mirror": True, "patch_size": [32, 32], "step": 0.5})
    exported = export_checkpoint(ckpt, fmt).path
    from_checkpoint = predict_paths([ckpt], data / "images", tmp_path / "a", progress=False)
    from_export = predict_paths([exported], data / "images", tmp_path / "b", progress=False)
    names = ["case_000.png", "case_001.png"]
    assert [p.name for p in from_checkpoint] == [p.name for p in from_export] == names
    for a, b in zip(from_checkpoint, from_export, strict=True):
        np.testing.assert_array_equal(read_mask(a)[0], read_mask(b)[0])
    assert (tmp_path / "b" / "overlays" / "case_000.png").is_file()


def test_cli_predict_3d_sliding_window_with_torchscript_export(tmp_path: Path) -> None:
    data = write_lesion_dataset(tmp_path / "lesions", n_cases=1, shape=(12, 20, 18), num_classes=3, seed=2)
    ckpt = tiny_checkpoint(tmp_path / "m.pt", dims=3, num_classes=3, mode="multiclass",
                           inference={"mirror": True, "patch_size": [8, 12, 12]})
    assert main(["export", str(ckpt), "--torchscript", "--out", str(tmp_path / "m3.pt")]) == 0
    images = data / "imagesTr"
    assert main(["predict", str(ckpt), str(images), str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["predict", str(tmp_path / "m3.pt"), str(images), str(tmp_path / "b"), "--no-progress"]) == 0
    a, b = read_mask(tmp_path / "a" / "case_000.nii.gz"), read_mask(tmp_path / "b" / "case_000.nii.gz")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1].affine, b[1].affine)


@pytest.mark.slow
def test_fixed_size_model_is_exported_at_the_patch_size_and_predicts_in_windows(tmp_path: Path) -> None:
    """UNETR's position embeddings fix the input size: the export records it and predict still matches."""
    options = dict(model_info("unetr")["small_options"])
    torch.manual_seed(0)
    model = create_model("unetr", in_channels=1, num_classes=2, spatial_dims=2, **options)
    ckpt = save_checkpoint(tmp_path / "unetr.pt", make_checkpoint(
        model, name="unetr", in_channels=1, num_classes=2, spatial_dims=2, options=options,
        label_mode="multiclass", preprocessing=Preprocessor().to_dict(),
        inference={"mirror": False, "patch_size": [32, 32]}))
    result = export_checkpoint(ckpt, "torchscript")
    assert not result.dynamic_spatial and result.export_size == (32, 32) and result.max_abs_diff <= 1e-4
    with pytest.raises(ExportError, match="fixed size"):
        load_exported(result.path)(torch.zeros(1, 1, 48, 48))
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 38), dtype=np.uint8)).save(image)
    a = predict_paths([ckpt], image, tmp_path / "a", progress=False)[0]
    b = predict_paths([result.path], image, tmp_path / "b", progress=False)[0]
    np.testing.assert_array_equal(read_mask(a)[0], read_mask(b)[0])


def test_model_that_cannot_export_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    options = dict(model_info("mask_rcnn")["small_options"])
    model = create_model("mask_rcnn", in_channels=3, num_classes=2, spatial_dims=2, **options)
    ckpt = save_checkpoint(tmp_path / "det.pt", make_checkpoint(
        model, name="mask_rcnn", in_channels=3, num_classes=2, spatial_dims=2, options=options,
        label_mode="instance"))
    assert main(["export", str(ckpt), "--onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mask_rcnn" in err and "cannot be exported" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.pt"]


def test_failed_check_leaves_no_file_and_keeps_the_previous_export(tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "m.torchscript.pt"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(export_module, "_difference", lambda *args: (0.5, 2.0))  # does not match
    assert main(["export", str(ckpt), "--torchscript"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match PyTorch" in err and "max abs diff 5.00e-01" in err
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.torchscript.pt"]  # no temporaries
    monkeypatch.undo()
    assert main(["export", str(ckpt), "--torchscript", "--out", str(tmp_path / "new" / "m.pt")]) == 0
    assert is_exported(tmp_path / "new" / "m.pt")


def test_bad_arguments_are_one_line_errors(tmp_path: Path, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    assert main(["export", str(ckpt), "--torchscript", "--opset", "17"]) == 2
    assert "--opset applies to ONNX" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--torchscript", "--out", str(ckpt)]) == 2
    assert "is the checkpoint itself" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.pt"), "--torchscript"]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # neither --onnx nor --torchscript: argparse's usage error
        main(["export", str(ckpt)])
    capsys.readouterr()
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    assert main(["predict", str(tmp_path / "broken.onnx"), str(ckpt), str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_2p5d_checkpoint_exports_and_predicts_volumes_slice_by_slice(tmp_path: Path) -> None:
    """The 2.5D facts (``inference.slices``, ``slice_axes``) travel in the metadata: same labels."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt", in_channels=3, num_classes=3, mode="multiclass",
                           inference={"mirror": False, "slices": 1, "slice_axes": [0, 1, 2]})
    exported = export_checkpoint(ckpt, "torchscript").path
    volume = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(3).normal(size=(9, 12, 10)).astype(np.float32), np.eye(4)),
             volume)
    a = predict_paths([ckpt], volume, tmp_path / "a", progress=False)[0]
    b = predict_paths([exported], volume, tmp_path / "b", progress=False)[0]
    labels = read_mask(b)[0]
    assert labels.shape[0] == 1 and sorted(labels.shape[1:]) == [9, 10, 12]
    np.testing.assert_array_equal(read_mask(a)[0], labels)


def test_a_cascade_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    ckpt_path = tiny_checkpoint(tmp_path / "stage2.pt", name="unet", dims=2, num_classes=1, mode="binary")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    ckpt["cascade"] = {"stage1": dict(ckpt), "source": "runs/stage1/best.pt"}
    save_checkpoint(ckpt_path, ckpt)
    with pytest.raises(ExportError, match="cascade's stage 2") as info:
        export_checkpoint(ckpt_path, "torchscript")
    assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "stage2.torchscript.pt").exists()
