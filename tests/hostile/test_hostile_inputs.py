"""Hostile input through the real ``medseg`` command: every case ends with one error line that names the
file and the problem, exit status 2, no traceback, and nothing left in the output folder.

The corpus is built in the tests (no binary files in the repository). What the readers alone do with
broken files is in ``tests/data/test_io_broken.py``, what ``medseg check`` reports for broken data sets in
``tests/data/test_check.py``; here each input goes through the commands that take it (``check``,
``train``, ``predict``, ``evaluate``).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from PIL import Image

from helpers import tiny_checkpoint, tiny_config, truncated
from medseg.cli import main
from medseg.data.io import read_mask, write_image
from medseg.data.preprocess import Preprocessor
from medseg.engine.checkpoint import load_checkpoint, save_checkpoint

RGB = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
GREY = np.random.default_rng(1).integers(0, 1000, size=(32, 32)).astype(np.int16)


# ----------------------------------------------------------------------------------------------------
# The corpus of bad image files: build(folder, stem) writes one and returns its path
# ----------------------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, bit_depth: int = 8, colour_type: int = 0
             ) -> Callable[[Path, str], Path]:
    """A PNG of a few hundred bytes whose header declares ``width x height`` pixels (its data: 4 rows)."""
    def build(folder: Path, stem: str) -> Path:
        header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
        rows = zlib.compress(b"\0" * (1 + width * bit_depth // 8) * 4)
        path = folder / f"{stem}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows)
                         + _chunk(b"IEND", b""))
        return path
    return build


def cut_raster(extension: str) -> Callable[[Path, str], Path]:
    def build(folder: Path, stem: str) -> Path:
        Image.fromarray(RGB).save(folder / f"{stem}{extension}")
        return truncated(folder / f"{stem}{extension}")
    return build


def cut_nifti(folder: Path, stem: str) -> Path:
    nib.save(nib.Nifti1Image(RGB.astype(np.float32), np.eye(4)), folder / f"{stem}.nii.gz")
    return truncated(folder / f"{stem}.nii.gz")


def cut_nrrd(folder: Path, stem: str) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(GREY), str(folder / f"{stem}.nrrd"))
    return truncated(folder / f"{stem}.nrrd")


BAD_FILES: dict[str, tuple[Callable[[Path, str], Path], str]] = {
    "truncated PNG": (cut_raster(".png"), "cannot read image"),
    "truncated JPEG": (cut_raster(".jpg"), "cannot read image"),
    "truncated .nii.gz": (cut_nifti, "cannot read NIfTI"),
    "truncated NRRD": (cut_nrrd, "cannot read NRRD"),
    # Pillow raises beyond twice MAX_IMAGE_PIXELS and only warns between one and two times it
    "PNG bomb, 4e8 pixels": (png_bomb(20000, 20000), "exceeds limit"),
    "PNG bomb, 1e8 pixels": (png_bomb(10000, 10000), "exceeds limit of 89478485 pixels"),
    "16-bit RGB PNG bomb": (png_bomb(20000, 20000, 16, 2), "exceeds limit of 89478485 pixels"),
}


# ----------------------------------------------------------------------------------------------------
# Running the command and what every case must give
# ----------------------------------------------------------------------------------------------------

def one_error(capsys: pytest.CaptureFixture[str], code: int, *named: object) -> str:
    """The single ``medseg: error:`` line of a run that exited with 2; it contains every ``named`` text."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medseg: error: "), err
    for text in named:
        assert str(text) in lines[0], (text, lines[0])
    return lines[0]


def assert_nothing_written(folder: Path) -> None:
    """``folder`` is absent or empty (no output file, no temporary file)."""
    assert not folder.exists() or sorted(folder.rglob("*")) == [], sorted(folder.rglob("*"))


def assert_no_temporaries(root: Path) -> None:
    assert [p for p in root.rglob(".*") if p.name.endswith(".tmp")] == []


def cli(*args: object) -> int:
    return main([str(a) for a in args])


@pytest.fixture
def rgb_checkpoint(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "model.pt", in_channels=3,
                           preprocessing=Preprocessor(normalization="rgb").to_dict())


def train_config(tmp_path: Path, data: dict | None = None, **sections: object) -> Path:
    """A one-epoch run of helpers.tiny_config (8 synthetic cases in ``tmp_path/data``) as a YAML file."""
    config = tiny_config(tmp_path, epochs=1)
    config["data"].update(data or {})
    config.update(sections)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_train(tmp_path: Path, config: Path, *extra: object) -> int:
    return cli("train", config, "--no-progress", *extra)


def assert_train_left_nothing(tmp_path: Path) -> None:
    assert_nothing_written(tmp_path / "run")
    assert_no_temporaries(tmp_path)


# ----------------------------------------------------------------------------------------------------
# Bad image files through check, train, predict and evaluate
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_check_reports_the_bad_image_once(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    build, problem = BAD_FILES[kind]
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(RGB).save(tmp_path / "images" / "good.png")
    Image.fromarray((RGB[..., 0] > 127).astype(np.uint8)).save(tmp_path / "masks" / "good.png")
    Image.fromarray((RGB[..., 1] > 127).astype(np.uint8)).save(tmp_path / "masks" / "bad.png")
    bad = build(tmp_path / "images", "bad")
    code = cli("check", tmp_path, "--no-progress")
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err and captured.err == ""
    reported = [line for line in captured.out.splitlines() if line.startswith(str(tmp_path))]
    assert len(reported) == 1 and reported[0].startswith(f"{bad}: ") and problem in reported[0], reported
    assert captured.out.strip().endswith("1 problem found")


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_train_refuses_the_bad_image_and_leaves_no_run(tmp_path: Path, kind: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    build, problem = BAD_FILES[kind]
    config = train_config(tmp_path)
    bad = build(tmp_path / "data" / "images", "case_bad")
    Image.fromarray((RGB[..., 0] > 127).astype(np.uint8)).save(tmp_path / "data" / "masks" / "case_bad.png")
    one_error(capsys, run_train(tmp_path, config), bad, problem)
    assert_train_left_nothing(tmp_path)


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_predict_refuses_the_bad_image_and_writes_nothing(tmp_path: Path, kind: str, rgb_checkpoint: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    build, problem = BAD_FILES[kind]
    (tmp_path / "in").mkdir()
    bad = build(tmp_path / "in", "bad")
    code = cli("predict", rgb_checkpoint, tmp_path / "in", tmp_path / "out", "--no-progress")
    one_error(capsys, code, bad, problem)
    assert_nothing_written(tmp_path / "out")
    assert_no_temporaries(tmp_path)


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_evaluate_refuses_the_bad_prediction_and_writes_nothing(tmp_path: Path, kind: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    build, problem = BAD_FILES[kind]
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
    Image.fromarray((RGB[..., 0] > 127).astype(np.uint8)).save(tmp_path / "gt" / "case.png")
    bad = build(tmp_path / "pred", "case")
    code = cli("evaluate", tmp_path / "pred", tmp_path / "gt", "--out", tmp_path / "eval", "--workers", 1,
               "--no-progress")
    one_error(capsys, code, bad.name, problem)
    assert_nothing_written(tmp_path / "eval")
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [bad.name]


def test_a_bomb_is_one_line_through_a_real_process(tmp_path: Path, rgb_checkpoint: Path) -> None:
    """No DecompressionBombWarning (or anything else) printed besides the error, and exit status 2."""
    (tmp_path / "in").mkdir()
    bad = png_bomb(10000, 10000)(tmp_path / "in", "bomb")
    done = subprocess.run([sys.executable, "-m", "medseg.cli", "predict", str(rgb_checkpoint),
                           str(tmp_path / "in"), str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"medseg: error: {bad}: ") and "exceeds limit" in lines[0]
    assert_nothing_written(tmp_path / "out")


# ----------------------------------------------------------------------------------------------------
# Readable files with bad content
# ----------------------------------------------------------------------------------------------------

def nan_image(folder: Path, stem: str, channels: int = 1) -> Path:
    """A 2D float MetaImage whose pixel (3, 4) is NaN and (5, 6) is +Inf."""
    array = np.random.default_rng(2).normal(size=(channels, 32, 32)).astype(np.float32)
    array[:, 3, 4], array[:, 5, 6] = np.nan, np.inf
    write_image(folder / f"{stem}.mha", array)
    return folder / f"{stem}.mha"


def test_predict_refuses_nan_and_inf_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "model.pt")
    (tmp_path / "in").mkdir()
    bad = nan_image(tmp_path / "in", "scan")
    code = cli("predict", checkpoint, tmp_path / "in", tmp_path / "out", "--no-progress")
    one_error(capsys, code, bad, "NaN or Inf")
    assert_nothing_written(tmp_path / "out")


def test_train_refuses_nan_and_inf_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = train_config(tmp_path)
    images = tmp_path / "data" / "images"
    bad = images / "case_003.mha"  # the case's PNG replaced by a float image with NaN and Inf
    nan_image(images, "case_003", channels=3)
    (images / "case_003.png").unlink()
    one_error(capsys, run_train(tmp_path, config), bad, "NaN or Inf")
    assert_train_left_nothing(tmp_path)


def test_train_refuses_labels_outside_the_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = train_config(tmp_path, {"label_mode": "multiclass", "num_classes": 2},
                          loss={"losses": [{"name": "ce"}]})
    mask = tmp_path / "data" / "masks" / "case_002.png"
    labels = read_mask(mask)[0][0]
    labels[:4, :4] = 7
    Image.fromarray(labels.astype(np.uint8)).save(mask)
    one_error(capsys, run_train(tmp_path, config), mask, "7")
    assert_train_left_nothing(tmp_path)


def test_train_refuses_a_mask_of_another_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = train_config(tmp_path)
    mask = tmp_path / "data" / "masks" / "case_005.png"
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(mask)
    one_error(capsys, run_train(tmp_path, config), mask, "differs from the image's")
    assert_train_left_nothing(tmp_path)


def write_3d_set(root: Path, label_spacing: float = 1.0) -> Path:
    """Two NIfTI cases in the Decathlon layout; the second label's z spacing is ``label_spacing``."""
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(2):
        label = np.zeros((16, 16, 16), np.uint8)
        label[4:12, 4:12, 4:12] = 1
        spacing = label_spacing if i == 1 else 1.0
        nib.save(nib.Nifti1Image(rng.normal(size=(16, 16, 16)).astype(np.float32), np.eye(4)),
                 root / "imagesTr" / f"case_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.diag([1.0, 1.0, spacing, 1.0])),
                 root / "labelsTr" / f"case_{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"},
                                                   "labels": {"0": "background", "1": "lesion"}}))
    return root


def test_train_refuses_a_label_on_another_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_3d_set(tmp_path / "vol", label_spacing=2.0)
    config = train_config(tmp_path, {"root": str(data), "batch_size": 1})
    one_error(capsys, run_train(tmp_path, config), data / "labelsTr" / "case_1.nii.gz", "geometry differs")
    assert_train_left_nothing(tmp_path)


def test_evaluate_leaves_out_a_prediction_of_another_size(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
    Image.fromarray((RGB[..., 0] > 127).astype(np.uint8)).save(tmp_path / "gt" / "case.png")
    Image.fromarray((RGB[2:, :, 0] > 127).astype(np.uint8)).save(tmp_path / "pred" / "case.png")
    code = cli("evaluate", tmp_path / "pred", tmp_path / "gt", "--out", tmp_path / "eval", "--workers", 1,
               "--no-progress")
    one_error(capsys, code, "case.png", "size mismatch")
    assert_nothing_written(tmp_path / "eval")


# ----------------------------------------------------------------------------------------------------
# Empty folders
# ----------------------------------------------------------------------------------------------------

def test_empty_folders_are_one_line_errors(tmp_path: Path, rgb_checkpoint: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    config = train_config(tmp_path, {"root": str(empty)})
    one_error(capsys, run_train(tmp_path, config), empty, "empty folder")
    assert_train_left_nothing(tmp_path)
    one_error(capsys, cli("predict", rgb_checkpoint, empty, tmp_path / "out", "--no-progress"), empty,
              "no image file")
    assert_nothing_written(tmp_path / "out")
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "gt" / "case.png")
    code = cli("evaluate", empty, tmp_path / "gt", "--out", tmp_path / "eval", "--no-progress")
    one_error(capsys, code, empty)
    assert_nothing_written(tmp_path / "eval")


# ----------------------------------------------------------------------------------------------------
# Case lists that point outside their folder
# ----------------------------------------------------------------------------------------------------

def write_list(tmp_path: Path, form: str, image: str) -> Path:
    """A CSV or JSON list in ``tmp_path/lists`` of two cases of ``tmp_path/data`` (first image: ``image``)."""
    data = tmp_path / "data"
    tiny_config(tmp_path)  # writes the synthetic cases
    folder = tmp_path / "lists"
    for name in ("images", "masks"):
        (folder / name).symlink_to(data / name)  # the list's own folder, reached through links
    rows = [(image, "masks/case_000.png"), ("images/case_001.png", "masks/case_001.png")]
    if form == "csv":
        path = folder / "cases.csv"
        path.write_text("image,label\n" + "".join(f"{i},{m}\n" for i, m in rows), encoding="utf-8")
    else:
        path = folder / "cases.json"
        path.write_text(json.dumps([{"image": i, "label": m} for i, m in rows]), encoding="utf-8")
    return path


@pytest.fixture(params=["csv", "json"])
def list_form(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("how", ["../", "absolute"])
def test_list_paths_may_not_leave_the_list_folder(tmp_path: Path, list_form: str, how: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lists").mkdir()
    outside = tmp_path / "data" / "images" / "case_000.png"
    listed = "../data/images/case_000.png" if how == "../" else str(outside)
    path = write_list(tmp_path, list_form, listed)
    code = cli("check", path, "--no-progress")
    out = capsys.readouterr().out
    reported = [line for line in out.splitlines() if line.startswith(str(tmp_path))]
    assert code == 2 and len(reported) == 1, out
    assert reported[0].startswith(f"{tmp_path / 'lists' / listed}: outside the list's folder")
    assert "allow_outside_root" in reported[0]
    config = train_config(tmp_path, {"root": str(path)})
    one_error(capsys, run_train(tmp_path, config),
              f"{tmp_path / 'lists' / listed}: outside the list's folder", "data.allow_outside_root: true")
    assert_train_left_nothing(tmp_path)
    # the user may allow it
    assert cli("check", path, "--no-progress", "--allow-outside-root") == 0
    assert capsys.readouterr().out.strip().endswith("no problems found")


# ----------------------------------------------------------------------------------------------------
# Configs and checkpoints that would run code
# ----------------------------------------------------------------------------------------------------

PYTHON_TAG = "train:\n  epochs: !!python/object/apply:os.system ['touch {flag}']\n"


def test_yaml_with_python_tags_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "evil.yaml"
    config.write_text(PYTHON_TAG.format(flag=tmp_path / "ran"), encoding="utf-8")
    one_error(capsys, run_train(tmp_path, config), config, "not valid YAML", "python/object")
    assert not (tmp_path / "ran").exists()
    assert_nothing_written(tmp_path / "runs")


class Payload:
    """Anything a pickle can rebuild; ``weights_only`` loading refuses it."""


def pickled_checkpoint(path: Path, checkpoint: Path) -> Path:
    state = load_checkpoint(checkpoint)
    state["payload"] = Payload()
    torch.save(state, path)
    return path


def truncated_checkpoint(path: Path, checkpoint: Path) -> Path:
    path.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size * 2 // 3])  # cut mid-write
    return path


BAD_CHECKPOINTS = {"pickled object": (pickled_checkpoint, "holds objects other than tensors"),
                   "truncated": (truncated_checkpoint, "cannot be read (truncated")}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_predict_refuses_the_bad_checkpoint(tmp_path: Path, kind: str, rgb_checkpoint: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    build, problem = BAD_CHECKPOINTS[kind]
    bad = build(tmp_path / "bad.pt", rgb_checkpoint)
    (tmp_path / "in").mkdir()
    Image.fromarray(RGB).save(tmp_path / "in" / "a.png")
    code = cli("predict", bad, tmp_path / "in", tmp_path / "out", "--no-progress")
    one_error(capsys, code, bad, problem)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_resume_refuses_the_bad_last_checkpoint(tmp_path: Path, kind: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    build, problem = BAD_CHECKPOINTS[kind]
    config = train_config(tmp_path)
    assert run_train(tmp_path, config) == 0
    capsys.readouterr()
    last = tmp_path / "run" / "last.pt"
    good = save_checkpoint(tmp_path / "good.pt", load_checkpoint(last))
    build(last, good)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    one_error(capsys, run_train(tmp_path, config, "--resume"), last, problem)
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before  # the run is left as it was


def test_a_pickled_checkpoint_is_one_line_through_a_real_process(tmp_path: Path, rgb_checkpoint: Path
                                                                  ) -> None:
    bad = pickled_checkpoint(tmp_path / "bad.pt", rgb_checkpoint)
    Image.fromarray(RGB).save(tmp_path / "a.png")
    done = subprocess.run([sys.executable, "-m", "medseg.cli", "predict", str(bad), str(tmp_path / "a.png"),
                           str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"medseg: error: checkpoint {bad} holds objects"), lines
    assert_nothing_written(tmp_path / "out")
