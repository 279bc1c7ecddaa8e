"""``medseg check``: a clean data set passes with its summary; broken sets report every problem at once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.cli import main
from medseg.data.check import check_dataset, process_pool
from medseg.data.geometry import DataError
from medseg.data.io import inspect_image, read_image, read_mask, write_image

AFFINE = np.diag([1.0, 1.0, 2.5, 1.0])  # spacing 1 x 1 x 2.5 mm along (i, j, k) = array axes (x, y, z)


def write_png(path: Path, array: np.ndarray, dpi: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"dpi": (dpi, dpi)} if dpi else {}))
    return path


def write_nifti(path: Path, array_zyx: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Write an array given in (z, y, x) order (``[C, z, y, x]`` for several channels) as NIfTI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.transpose(array_zyx, (3, 2, 1, 0)) if array_zyx.ndim == 4 else array_zyx.T  # (x, y, z[, C])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def disk_mask(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def rgb(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["check", *args, "--no-progress"])
    return code, capsys.readouterr().out.strip().splitlines()


def problem_lines(lines: list[str], root: Path) -> list[str]:
    return [line for line in lines if line.startswith(str(root))]


# ----------------------------------------------------------------------------------------------------
# Clean data sets
# ----------------------------------------------------------------------------------------------------

def test_clean_2d_paired_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shapes = [(12, 16), (10, 20), (8, 14)]
    masks = [disk_mask(s, (s[0] // 2, s[1] // 2), r) for s, r in zip(shapes, (3, 2, 0), strict=True)]
    masks[2][:] = 0  # a case without foreground is valid
    for i, (shape, mask) in enumerate(zip(shapes, masks, strict=True)):
        write_png(tmp_path / "images" / f"c{i}.png", rgb(shape, i), dpi=96)  # a photo's DPI is no anatomy
        write_png(tmp_path / "masks" / f"c{i}_mask.png", mask * 255)  # 0/255 is read as 0/1
    code, lines = run_check(capsys, str(tmp_path), "--num-classes", "1")
    assert code == 0
    assert check_dataset(tmp_path, num_classes=1, progress=True).ok
    assert "0/3 [" in capsys.readouterr().err  # the progress bar over the 3 cases goes to stderr
    assert problem_lines(lines, tmp_path) == []
    assert "cases: 3" in lines and lines[-1] == "no problems found"
    assert "channels: 3 (3 cases)" in lines
    assert "size (y, x): min 8 x 14, median 10 x 16, max 12 x 20" in lines
    foreground = sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)
    assert f"  0: {1 - foreground:.4%} of voxels, in 3 cases" in lines
    assert f"  1: {foreground:.4%} of voxels, in 2 cases" in lines


def test_clean_3d_decathlon_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    rng = np.random.default_rng(0)
    labels = []
    for i, shape in enumerate([(6, 8, 10), (4, 9, 7)]):
        label = rng.integers(0, 2, size=shape).astype(np.uint8)  # class 2 is declared but absent
        labels.append(label)
        write_nifti(tmp_path / "imagesTr" / f"hip_{i}.nii.gz", rng.normal(size=shape).astype(np.float32))
        write_nifti(tmp_path / "labelsTr" / f"hip_{i}.nii.gz", label)
    report = check_dataset(tmp_path, progress=False)
    assert report.ok and report.num_cases == 2 and report.layout == "decathlon"
    summary = report.summary_lines()
    assert "size (z, y, x): min 4 x 8 x 7, median 5 x 8.5 x 8.5, max 6 x 9 x 10" in summary
    assert "spacing (z, y, x): min 2.5 x 1 x 1, median 2.5 x 1 x 1, max 2.5 x 1 x 1" in summary
    assert "channels: 1 (2 cases); dataset.json: MRI" in summary
    ones = sum(int(label.sum()) for label in labels) / sum(label.size for label in labels)
    assert f"  1 Anterior: {ones:.4%} of voxels, in 2 cases" in summary
    assert "  2 Posterior: 0.0000% of voxels, in 0 cases" in summary
    code, lines = run_check(capsys, str(tmp_path))
    assert code == 0 and lines[-1] == "no problems found" and "cases: 2" in lines


# ----------------------------------------------------------------------------------------------------
# Broken data sets: every problem in one run, one line each, exit code 2
# ----------------------------------------------------------------------------------------------------

def assert_reported(lines: list[str], expected: dict[Path, str]) -> None:
    """Each expected path has exactly one problem line containing its phrase, and there is no other."""
    reported = [line for line in lines if ": " in line and Path(line.split(": ", 1)[0]).is_absolute()]
    for path, phrase in expected.items():
        mine = [line for line in reported if line.startswith(f"{path}: ")]
        assert len(mine) == 1 and phrase in mine[0], (path, phrase, mine)
    assert len(reported) == len(expected), reported
    assert lines[-1] == f"{len(expected)} problems found"


def write_broken_3d_set(root: Path) -> np.ndarray:
    """A Decathlon set with one case per problem (see the test below); returns the label of the good ones."""
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    shape = (4, 6, 5)
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[1:3, 2:4, 1:4] = 1
    images, labels = root / "imagesTr", root / "labelsTr"
    for case in ("ok", "truncated", "no_label", "size", "geometry", "label7", "nan", "channels", "fraction"):
        write_nifti(images / f"{case}.nii.gz", image)
        write_nifti(labels / f"{case}.nii.gz", label)
    truncate(images / "truncated.nii.gz")
    (labels / "no_label.nii.gz").unlink()
    write_nifti(labels / "orphan.nii.gz", label)
    write_nifti(labels / "size.nii.gz", label[:, :5])
    shifted = AFFINE.copy()
    shifted[:3, 3] = (4.0, 0.0, 0.0)
    write_nifti(labels / "geometry.nii.gz", label, shifted)
    write_nifti(labels / "label7.nii.gz", np.where(label == 1, 7, 0).astype(np.uint8))
    write_nifti(images / "nan.nii.gz", np.where(label == 1, np.nan, image).astype(np.float32))
    write_nifti(images / "channels.nii.gz", np.stack([image, image]))
    write_nifti(labels / "fraction.nii.gz", label * np.float32(0.5))
    return label


def test_broken_3d_decathlon_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    label = write_broken_3d_set(tmp_path)
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    code, lines = run_check(capsys, str(tmp_path), "--num-classes", "3")
    assert code == 2
    assert_reported(lines, {
        images / "truncated.nii.gz": "cannot read",
        images / "no_label.nii.gz": "image without a label",
        labels / "orphan.nii.gz": "label without an image",
        labels / "size.nii.gz": "size (4, 5, 5) differs from the image's (4, 6, 5)",
        labels / "geometry.nii.gz": "geometry differs from the image's",
        labels / "label7.nii.gz": "label values {7} outside the declared classes {0, 1, 2}",
        images / "nan.nii.gz": f"{int(label.sum())} NaN voxels",
        images / "channels.nii.gz": "2 channels, but dataset.json declares 1 (MRI)",
        labels / "fraction.nii.gz": "non-integer",
    })
    assert "cases: 8" in lines  # no_label has no label, so it is not a training case
    report = check_dataset(tmp_path, num_classes=3, progress=False)
    assert sorted(path.name for path, _ in report.problems) == sorted(
        line.split(": ", 1)[0].rsplit("/", 1)[1] for line in lines[:len(report.problems)])
    geometry_line = next(line for line in lines if line.startswith(str(labels / "geometry.nii.gz")))
    assert "origin" in geometry_line and "spacing" not in geometry_line


def write_broken_2d_set(root: Path) -> None:
    """A paired PNG set with a truncated image, an orphan on each side, a size mismatch, a label 7 and
    a grey image among colour ones."""
    images, masks = root / "images", root / "masks"
    mask = disk_mask((10, 12), (5, 6), 3)
    for i in range(4):
        write_png(images / f"good{i}.png", rgb((10, 12), i))
        write_png(masks / f"good{i}.png", mask * 255)
    write_png(images / "truncated.png", rgb((10, 12), 9))
    truncate(images / "truncated.png")
    write_png(masks / "truncated.png", mask * 255)
    write_png(images / "alone.png", rgb((10, 12), 5))
    write_png(masks / "ghost_mask.png", mask)
    write_png(images / "size.png", rgb((10, 12), 6))
    write_png(masks / "size.png", mask[:, :11] * 255)
    write_png(images / "label7.png", rgb((10, 12), 7))
    write_png(masks / "label7.png", mask * 7)
    write_png(images / "grey.png", rgb((10, 12), 8)[..., 0])
    write_png(masks / "grey.png", mask * 255)


def test_broken_2d_paired_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_broken_2d_set(tmp_path)
    images, masks = tmp_path / "images", tmp_path / "masks"
    code, lines = run_check(capsys, str(tmp_path), "--num-classes", "3")
    assert code == 2
    assert_reported(lines, {
        images / "truncated.png": "cannot read",
        images / "alone.png": "image without a mask",
        masks / "ghost_mask.png": "mask without an image",
        masks / "size.png": "size (10, 11) differs from the image's (10, 12)",
        masks / "label7.png": "label values {7} outside the declared classes {0, 1, 2}",
        images / "grey.png": "1 channels, but 6 of 7 cases have 3 channels",
    })


def test_empty_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_check(capsys, str(tmp_path))
    assert code == 2 and lines[0] == f"{tmp_path}: empty folder" and "cases: 0" in lines
    assert lines[-1] == "1 problem found"
    write_png(tmp_path / "images" / "a.png", rgb((4, 4), 0))
    (tmp_path / "masks").mkdir()
    code, lines = run_check(capsys, str(tmp_path))
    assert code == 2 and lines[0].startswith(f"{tmp_path / 'masks'}: empty folder")


def test_missing_path_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nothing"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    expected = f"medseg: error: {tmp_path / 'nothing'}: no such file or folder"
    assert captured.err.strip().splitlines() == [expected]


# ----------------------------------------------------------------------------------------------------
# Speed work must not change the report: workers, image inspection, label counting, JPEG masks
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("write_set", [write_broken_2d_set, write_broken_3d_set])
def test_workers_do_not_change_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          write_set: Callable[[Path], object]) -> None:
    write_set(tmp_path)
    serial = check_dataset(tmp_path, num_classes=3, progress=False, workers=0)
    assert len(serial.problems) >= 6 and len(serial.stats) >= 7
    for workers in (1, 2, 3):
        pooled = check_dataset(tmp_path, num_classes=3, progress=False, workers=workers)
        assert pooled.problems == serial.problems  # the same problems in the same order
        assert pooled.stats == serial.stats
        assert pooled.lines() == serial.lines()
    outputs = [run_check(capsys, str(tmp_path), "--num-classes", "3", "--workers", w) for w in ("0", "2")]
    assert outputs[0] == outputs[1] and outputs[0][0] == 2


def test_process_pool_is_used_only_for_workers_and_several_cases() -> None:
    with process_pool(2, 5) as pool:
        assert isinstance(pool, ProcessPoolExecutor)
        assert pool.submit(os.getpid).result() != os.getpid()  # the cases are read in other processes
    for workers, cases in ((0, 5), (2, 1)):
        with process_pool(workers, cases) as pool:
            assert pool is None


def test_negative_workers_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check", ".", "--workers", "-1"])
    assert exit_info.value.code == 2 and "non-negative integer" in capsys.readouterr().err


def pillow_files(root: Path) -> list[Path]:
    """One file per Pillow mode and channel rule that :func:`inspect_image` handles."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(6, 7), dtype=np.uint8)
    colour = rgb((6, 7), 1)
    opaque, transparent = np.full((6, 7), 255, np.uint8), grey
    images: dict[str, Image.Image] = {
        "l.png": Image.fromarray(grey), "rgb.png": Image.fromarray(colour),
        "rgba_opaque.png": Image.fromarray(np.dstack([colour, opaque])),
        "rgba.png": Image.fromarray(np.dstack([colour, transparent])),
        "la_opaque.png": Image.fromarray(np.dstack([grey, opaque]), mode="LA"),
        "la.png": Image.fromarray(np.dstack([grey, transparent]), mode="LA"),
        "palette.png": Image.fromarray(colour).quantize(8),
        "palette_grey.png": Image.fromarray(grey).convert("P"),
        "bilevel.png": Image.fromarray(grey > 127),
        "i16.png": Image.fromarray(grey.astype(np.uint16) * 250),
        "i32.tif": Image.fromarray(grey.astype(np.int32) - 100),
        "float_nan.tif": Image.fromarray(np.where(grey > 200, np.nan, grey).astype(np.float32)),
        "l.jpg": Image.fromarray(grey), "rgb.jpg": Image.fromarray(colour),
        "cmyk.jpg": Image.fromarray(colour).convert("CMYK"),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(root / name)
    write_image(root / "rgb16.png", rng.integers(0, 65536, size=(3, 6, 7)).astype(np.uint16))
    return sorted(root.iterdir())


def test_inspect_image_agrees_with_read_image(tmp_path: Path) -> None:
    files = pillow_files(tmp_path / "pillow")
    volume = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    volume[0, 1, :2] = [np.nan, np.inf]
    files.append(write_nifti(tmp_path / "volume.nii.gz", volume))
    channels = set()
    for path in files:
        info, (array, geometry) = inspect_image(path), read_image(path)
        assert (info.channels, info.shape) == (array.shape[0], array.shape[1:]), path
        assert (info.nan, info.inf) == (int(np.isnan(array).sum()), int(np.isinf(array).sum())), path
        assert info.geometry.matches(geometry) and info.geometry.meta == geometry.meta, path
        channels.add(info.channels)
    assert channels == {1, 2, 3, 4}  # every channel rule was exercised
    assert inspect_image(tmp_path / "pillow" / "float_nan.tif").nan > 0


def test_inspect_finds_truncated_jpegs_as_read_image_does(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb((64, 80), 0)).save(path, quality=95)  # noise: most bytes are entropy-coded data
    assert inspect_image(path).shape == (64, 80)  # the header's size, not the 1/8-scale decode's
    data = path.read_bytes()
    for share in (0.5, 0.9):
        path.write_bytes(data[: int(len(data) * share)])
        with pytest.raises(DataError) as inspected:
            inspect_image(path)
        with pytest.raises(DataError) as read:
            read_image(path)
        assert "truncated" in str(inspected.value) and str(inspected.value) == str(read.value)


def test_label_counts_match_unique(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = {"binary": (rng.random((3, 4, 5)) < 0.3).astype(np.uint8),
              "negative": rng.integers(-2, 3, size=(3, 4, 5)).astype(np.int16),
              "many": rng.integers(0, 300, size=(3, 4, 5)).astype(np.uint16),
              "wide": rng.choice(np.array([-5, 0, 70000], np.int32), size=(3, 4, 5))}
    for name, label in labels.items():
        write_nifti(tmp_path / "imagesTr" / f"{name}.nii.gz", label.astype(np.float32))
        write_nifti(tmp_path / "labelsTr" / f"{name}.nii.gz", label)
    report = check_dataset(tmp_path, progress=False, workers=0)
    assert report.ok and len(report.stats) == len(labels)
    for stats in report.stats:
        values, counts = np.unique(labels[stats.case_id], return_counts=True)
        assert stats.label_counts == dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_jpeg_mask_binarised_at_the_channel_mean(tmp_path: Path) -> None:
    mask = disk_mask((128, 128), (64, 64), 40) * 255
    colour = np.dstack([mask, np.roll(mask, 1, axis=1), mask])  # left and right edges: grey 85 and 170
    path = tmp_path / "mask.jpg"
    Image.fromarray(colour.astype(np.uint8)).save(path, quality=95)
    decoded = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
    labels, _ = read_mask(path)
    expected = (decoded.mean(axis=2) > 127).astype(np.uint8)
    assert labels.dtype == np.uint8 and np.array_equal(labels[0], expected)
    assert 0 < expected.sum() < expected.size
