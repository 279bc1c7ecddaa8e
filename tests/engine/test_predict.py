"""``medseg predict``: file handling, geometry, ensembling, failures (tiny random U-Nets)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_checkpoint as _checkpoint
from medseg.cli import main
from medseg.data.geometry import DataError
from medseg.data.io import read_image, read_mask
from medseg.data.preprocess import Preprocessor
from medseg.engine.inference import logits_to_labels
from medseg.engine.predict import predict_paths
from medseg.models.registry import create_model


def _png(path: Path, size: tuple[int, int], seed: int, rgb: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    shape = (*size, 3) if rgb else size
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def test_png_folder_gives_png_masks_with_same_ids_sizes_and_overlays(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    _png(inputs / "a.png", (20, 28), 0)
    _png(inputs / "b.png", (33, 17), 1)
    (inputs / "notes.txt").write_text("not an image")
    written = predict_paths([ckpt], inputs, tmp_path / "out", progress=False)
    assert sorted(p.name for p in written) == ["a.png", "b.png"]
    for name, size in (("a.png", (20, 28)), ("b.png", (33, 17))):
        mask, geometry = read_mask(tmp_path / "out" / name)
        assert mask.shape == (1, *size) and set(np.unique(mask)) <= {0, 1}
        assert (tmp_path / "out" / "overlays" / name).is_file()
        assert Image.open(tmp_path / "out" / "overlays" / name).size == (size[1], size[0])


def test_prediction_equals_the_model_on_the_preprocessed_image(tmp_path: Path) -> None:
    """An independent forward pass of the same network gives the same labels (size a multiple of 4)."""
    ckpt = _checkpoint(tmp_path / "m.pt", num_classes=3, mode="multiclass")
    image = _png(tmp_path / "x.png", (24, 32), 3)
    predict_paths([ckpt], image, tmp_path / "pred.png", progress=False, overlays=False)
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, spatial_dims=2, features=4, depth=2).eval()
    array = np.asarray(Image.open(image), dtype=np.float32)
    x = torch.from_numpy((array - array.mean()) / array.std())[None, None]
    with torch.no_grad():
        expected = logits_to_labels(model(x)[0], "multiclass").numpy()
    mask, _ = read_mask(tmp_path / "pred.png")
    np.testing.assert_array_equal(mask[0], expected)


def test_nifti_keeps_affine_and_shape_with_sliding_window(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", dims=3, num_classes=2, mode="multiclass",
                       inference={"mirror": True, "patch_size": [8, 8, 8]})
    affine = np.array([[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.0, 0.8, 3.0], [0, 0, 0, 1]])
    data = np.random.default_rng(0).normal(size=(11, 9, 14)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "vol.nii.gz")
    out = tmp_path / "out"
    written = predict_paths([ckpt], tmp_path / "vol.nii.gz", out, save_probabilities=True, progress=False)
    assert written == [out / "vol.nii.gz"]
    result = nib.load(out / "vol.nii.gz")
    np.testing.assert_array_equal(result.affine, nib.load(tmp_path / "vol.nii.gz").affine)
    assert result.shape == data.shape
    probabilities = nib.load(out / "vol_probabilities.nii.gz").get_fdata()
    assert probabilities.shape[:3] == data.shape or probabilities.shape[1:] == data.shape
    assert not (out / "overlays").exists()  # no overlays for 3D


def test_jpeg_source_gives_png_mask(tmp_path: Path) -> None:
    rgb = Preprocessor(normalization="rgb").to_dict()
    ckpt = _checkpoint(tmp_path / "m.pt", in_channels=3, preprocessing=rgb)
    inputs = tmp_path / "in"
    inputs.mkdir()
    _png(inputs / "c1.jpg", (16, 20), 0, rgb=True)
    written = predict_paths([ckpt], inputs, tmp_path / "out", progress=False)
    assert written == [tmp_path / "out" / "c1.png"]
    assert not (tmp_path / "out" / "c1.jpg").exists()
    assert read_mask(written[0])[0].shape == (1, 16, 20)


def test_channel_files_are_grouped_into_one_case(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", in_channels=2, dims=3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("p1", "p2"):
        for channel in range(2):
            data = np.random.default_rng(channel).normal(size=(8, 8, 6)).astype(np.float32)
            nib.save(nib.Nifti1Image(data, np.eye(4)), inputs / f"{case}_{channel:04d}.nii.gz")
    written = predict_paths([ckpt], inputs, tmp_path / "out", progress=False, channels_suffix=True)
    assert sorted(p.name for p in written) == ["p1.nii.gz", "p2.nii.gz"]
    assert read_image(written[0])[0].shape == read_image(inputs / "p1_0000.nii.gz")[0].shape
    # undeclared, outside an nnU-Net folder: each file is a case of one channel
    with pytest.raises(DataError, match="1 channels, the model takes 2 .*--channels-suffix"):
        predict_paths([ckpt], inputs, tmp_path / "plain", progress=False)


def test_channel_files_of_an_nnunet_images_folder_are_grouped_without_being_told(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", in_channels=2, dims=3)
    inputs = tmp_path / "imagesTs"
    inputs.mkdir()
    for channel in range(2):
        data = np.random.default_rng(channel).normal(size=(8, 8, 6)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), inputs / f"p1_{channel:04d}.nii.gz")
    written = predict_paths([ckpt], inputs, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["p1.nii.gz"]


def test_names_ending_in_four_digits_are_cases_of_their_own_outside_nnunet_layouts(tmp_path: Path) -> None:
    """PolypGen's ``10_endocv2021_positive_0000.jpg``: RGB files, each one case (not channel 0 of one)."""
    ckpt = _checkpoint(tmp_path / "m.pt", in_channels=3)
    inputs = tmp_path / "polypgen"
    names = [f"{c}_endocv2021_positive_{i:04d}" for c, i in ((10, 0), (10, 1), (10, 2), (3, 7))]
    for i, name in enumerate(names):
        inputs.mkdir(exist_ok=True)
        _png(inputs / f"{name}.png", (16, 16), i, rgb=True)
    written = predict_paths([ckpt], inputs, tmp_path / "out", progress=False)
    assert sorted(p.name for p in written) == sorted(f"{n}.png" for n in names)


def test_nested_folders_are_searched_and_named_by_their_sub_folders(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    for centre in ("centre A", "centre_b"):
        (tmp_path / "in" / centre).mkdir(parents=True)
        _png(tmp_path / "in" / centre / "x.PNG", (16, 16), 0)
    written = predict_paths([ckpt], tmp_path / "in", tmp_path / "out", progress=False)
    assert sorted(p.name for p in written) == ["centre A__x.png", "centre_b__x.png"]


def test_ensemble_averages_probabilities_and_saves_npz(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a.pt", seed=1)
    b = _checkpoint(tmp_path / "b.pt", seed=2)
    image = _png(tmp_path / "x.png", (16, 16), 5)
    predict_paths([a, b], image, tmp_path / "out", save_probabilities=True, progress=False)
    ensemble = np.load(tmp_path / "out" / "x_probabilities.npz")["probabilities"]
    singles = []
    for ckpt in (a, b):
        predict_paths([ckpt], image, tmp_path / ckpt.stem, save_probabilities=True, progress=False)
        singles.append(np.load(tmp_path / ckpt.stem / "x_probabilities.npz")["probabilities"])
    np.testing.assert_allclose(ensemble, (singles[0] + singles[1]) / 2, atol=1e-6)
    assert not np.allclose(singles[0], singles[1])
    mask = read_mask(tmp_path / "out" / "x.png")[0]
    np.testing.assert_array_equal(mask, (ensemble > 0.5).astype(np.uint8))


def test_ensemble_of_different_label_modes_is_one_line_error(tmp_path: Path, capsys) -> None:
    a = _checkpoint(tmp_path / "a.pt")
    b = _checkpoint(tmp_path / "b.pt", num_classes=2, mode="multiclass")
    image = _png(tmp_path / "x.png", (16, 16), 5)
    assert main(["predict", str(a), str(b), str(image), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.pt" in err


def test_corrupt_second_file_leaves_no_partial_output(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    _png(inputs / "a.png", (16, 16), 0)
    (inputs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    code = main(["predict", str(ckpt), str(inputs), str(out), "--probabilities", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "b.png" in err
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    # the first case complete with the folder's record, none of b
    assert left == [".medseg-predict.json", "a.png", "a_probabilities.npz", "overlays/a.png"]


def test_failure_while_writing_removes_the_case_files(tmp_path: Path, monkeypatch) -> None:
    from medseg.engine import predict as module

    ckpt = _checkpoint(tmp_path / "m.pt")
    image = _png(tmp_path / "x.png", (16, 16), 0)

    def broken(image, labels):
        raise OSError("disk full")

    monkeypatch.setattr(module, "overlay_png", broken)
    with pytest.raises(OSError):
        predict_paths([ckpt], image, tmp_path / "out", save_probabilities=True, progress=False)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_checkpoint_of_another_model_is_one_line_error(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    state = torch.load(ckpt, weights_only=True)
    state["model"]["options"] = {"features": 8, "depth": 2}  # weights of a features=4 network
    torch.save(state, tmp_path / "other.pt")
    image = _png(tmp_path / "x.png", (16, 16), 0)
    assert main(["predict", str(tmp_path / "other.pt"), str(image), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other.pt" in err
    assert not (tmp_path / "out").exists()


def test_cli_missing_input_and_help(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    assert main(["predict", str(ckpt), str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0


def test_cli_postprocessing_largest_component(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    image = _png(tmp_path / "x.png", (32, 32), 7)
    assert main(["predict", str(ckpt), str(image), str(tmp_path / "pp.png"), "--largest-component",
                 "--no-overlays", "--no-progress"]) == 0
    from scipy import ndimage

    mask = read_mask(tmp_path / "pp.png")[0][0]
    assert ndimage.label(mask)[1] <= 1
    assert not (tmp_path / "overlays").exists()


def test_resized_model_predicts_at_the_source_size_from_interpolated_logits(tmp_path: Path) -> None:
    """A fixed-size model (resize 16x16): the mask has the source size and is the threshold of the
    linearly interpolated logits (smoother than nearest-neighbour labels)."""
    from medseg.data.preprocess import resize

    prep = Preprocessor(normalization="zscore", resize_shape=(16, 16))
    ckpt = _checkpoint(tmp_path / "m.pt", preprocessing=prep.to_dict())
    image = _png(tmp_path / "x.png", (48, 40), 2)
    predict_paths([ckpt], image, tmp_path / "p.png", overlays=False, progress=False)
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=1, spatial_dims=2, features=4, depth=2).eval()
    array, geometry = read_image(image)
    prepared = prep(array, None, geometry)
    with torch.no_grad():
        logits = model(torch.from_numpy(prepared.image)[None])[0].numpy()
    expected = resize(logits, (48, 40)) > 0
    mask = read_mask(tmp_path / "p.png")[0]
    assert mask.shape == (1, 48, 40)
    np.testing.assert_array_equal(mask.astype(bool), expected)


def test_output_folder_equal_to_input_folder_is_refused(tmp_path: Path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    _png(tmp_path / "a.png", (16, 16), 0)
    before = (tmp_path / "a.png").read_bytes()
    assert main(["predict", str(ckpt), str(tmp_path), str(tmp_path), "--no-progress"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert (tmp_path / "a.png").read_bytes() == before


def test_the_preprocessor_is_built_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        _png(inputs / f"c{i}.png", (16, 20), i)
    built = []
    original = Preprocessor.from_dict.__func__

    def counting(cls: type, data: dict) -> Preprocessor:
        built.append(data)
        return original(cls, data)

    monkeypatch.setattr(Preprocessor, "from_dict", classmethod(counting))
    assert len(predict_paths([ckpt], inputs, tmp_path / "out", progress=False, overlays=False)) == 3
    assert len(built) == 1


def test_channel_files_on_different_grids_are_refused_as_training_refuses_them(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", in_channels=2, dims=3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    data = np.random.default_rng(0).normal(size=(8, 8, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), inputs / "p1_0000.nii.gz")
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), inputs / "p1_0001.nii.gz")
    with pytest.raises(DataError, match=r"p1_0001.nii.gz: channel file does not match p1_0000.nii.gz: spac"):
        predict_paths([ckpt], inputs, tmp_path / "out", progress=False, channels_suffix=True)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
