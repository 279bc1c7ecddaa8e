"""A corpus of broken inputs, built in the test: each gives one DataError line that starts with the path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from helpers import truncated
from medseg.data.geometry import DataError
from medseg.data.io import read_image, read_mask

NOISE = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)


def truncated_png(folder: Path) -> Path:
    Image.fromarray(NOISE).save(folder / "cut.png")
    return truncated(folder / "cut.png")


def truncated_jpeg(folder: Path) -> Path:
    Image.fromarray(NOISE).save(folder / "cut.jpg")
    return truncated(folder / "cut.jpg")


def truncated_nifti(folder: Path, name: str = "cut.nii.gz") -> Path:
    nib.save(nib.Nifti1Image(NOISE.astype(np.float32), np.eye(4)), folder / name)
    return truncated(folder / name)


def truncated_mha(folder: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(NOISE.astype(np.int16)), str(folder / "cut.mha"))
    return truncated(folder / "cut.mha")


def mhd_without_data(folder: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(NOISE.astype(np.int16)), str(folder / "header.mhd"))
    (folder / "header.raw").unlink()
    return folder / "header.mhd"


def text_file(name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / name).write_text("this is not an image\n")
        return folder / name
    return build


def zero_bytes(folder: Path) -> Path:
    (folder / "empty.png").touch()
    return folder / "empty.png"


def empty_folder(folder: Path) -> Path:
    (folder / "no_series").mkdir()
    return folder / "no_series"


CORPUS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing file": (lambda folder: folder / "missing.nii.gz", "no such file"),
    "zero-byte file": (zero_bytes, "empty file"),
    "text renamed .png": (text_file("text.png"), "cannot read image"),
    "text renamed .nii.gz": (text_file("text.nii.gz"), "cannot read NIfTI"),
    "text renamed .dcm": (text_file("text.dcm"), "DICOM"),
    "unknown extension": (text_file("table.xyz"), "unknown image extension '.xyz'; supported: .bmp, .dcm"),
    "no extension": (text_file("README"), "no image extension"),
    "truncated PNG": (truncated_png, "cannot read image"),
    "truncated JPEG": (truncated_jpeg, "cannot read image"),
    "truncated .nii.gz": (truncated_nifti, "cannot read NIfTI"),
    "truncated .nii": (lambda folder: truncated_nifti(folder, "cut.nii"), "cannot read NIfTI"),
    "truncated MHA": (truncated_mha, "cannot read MHA"),
    "MHD without its data file": (mhd_without_data, "cannot read MHA"),
    "folder without DICOM": (empty_folder, "no DICOM series"),
}


@pytest.mark.parametrize("reader", [read_image, read_mask])
@pytest.mark.parametrize("case", list(CORPUS))
def test_broken_input_gives_one_line_naming_the_path(tmp_path: Path, case: str, reader: Callable) -> None:
    build, problem = CORPUS[case]
    path = build(tmp_path)
    with pytest.raises(DataError) as error:
        reader(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message and len(message) < len(str(path)) + 320
    assert error.value.path == path
