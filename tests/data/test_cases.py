"""``read_case``: the one reader of a case's channels and label; the checks shared with ``medseg check``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from medseg.data import Case, Geometry, read_case, write_image, write_mask
from medseg.data.cases import channel_problem, geometry_difference, label_problem
from medseg.data.check import check_case
from medseg.data.geometry import DataError
from medseg.errors import MedsegError


def volume(seed: int, shape: tuple[int, ...] = (4, 6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype(np.float32)


def geometry(shape: tuple[int, ...] = (4, 6, 5), spacing: tuple[float, ...] = (2.0, 1.0, 1.0),
             origin: tuple[float, ...] | None = None) -> Geometry:
    base = dataclasses.replace(Geometry.identity(shape), spacing=spacing)
    return base if origin is None else dataclasses.replace(base, origin=origin)


def labels(shape: tuple[int, ...] = (4, 6, 5)) -> np.ndarray:
    out = np.zeros((1, *shape), np.uint8)
    out[0, 1:3, 2:4, 1:4] = 2
    return out


def write_case(root: Path, channels: int = 2, label: bool = True) -> Case:
    images = []
    for c in range(channels):
        images.append(root / f"case_{c:04d}.nii.gz")
        write_image(images[-1], volume(c), geometry())
    if label:
        write_mask(root / "label.nii.gz", labels(), geometry())
    return Case("case", images, root / "label.nii.gz" if label else None)


def test_channels_are_stacked_and_the_label_read(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    image, label, geom = read_case(case)
    assert image.shape == (2, 4, 6, 5)
    np.testing.assert_array_equal(image, np.concatenate([volume(0), volume(1)]))
    np.testing.assert_array_equal(label, labels())
    assert geom.shape == (4, 6, 5) and np.allclose(geom.spacing, (2.0, 1.0, 1.0))
    image_only, no_label, _ = read_case(case, with_label=False)
    assert no_label is None and np.array_equal(image_only, image)


def test_a_channel_on_another_grid_is_refused_naming_the_file(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    write_image(case.images[1], volume(1), geometry(spacing=(3.0, 1.0, 1.0)))
    with pytest.raises(DataError, match=r"case_0001.nii.gz: channel file does not match case_0000.nii.gz: "
                                        r"spacing \(3, 1, 1\) vs \(2, 1, 1\)$"):
        read_case(case)
    write_image(case.images[1], volume(1, (4, 6, 6)), geometry((4, 6, 6)))
    with pytest.raises(DataError, match=r"case_0001.nii.gz: .*shape \(4, 6, 6\) vs \(4, 6, 5\)"):
        read_case(case)


def test_nan_voxels_and_bad_labels_are_refused(tmp_path: Path) -> None:
    case = write_case(tmp_path)
    bad = volume(0)
    bad[0, 0, 0, 0] = np.nan
    write_image(case.images[0], bad, geometry())
    with pytest.raises(DataError, match=r"case_0000.nii.gz: contains NaN or Inf voxels"):
        read_case(case)
    case = write_case(tmp_path)
    write_mask(case.label, labels((4, 6, 4)), geometry((4, 6, 4)))
    size = r"label.nii.gz: size \(4, 6, 4\) differs from the image's \(4, 6, 5\)"
    with pytest.raises(DataError, match=size):
        read_case(case)
    write_mask(case.label, labels(), geometry(origin=(0.0, 0.0, 5.0)))
    with pytest.raises(DataError, match=r"label.nii.gz: geometry differs from the image's .*: origin"):
        read_case(case)
    with pytest.raises(MedsegError, match="no image files"):
        read_case(Case("empty", []))


def test_custom_readers_and_float_labels(tmp_path: Path) -> None:
    arrays = {"a": volume(0), "lbl": labels().astype(np.float32)}

    def reader(path: Path) -> tuple[np.ndarray, Geometry]:
        array = arrays[path.name]
        return array, Geometry.identity(array.shape[1:])

    image, label, _ = read_case(Case("x", [tmp_path / "a"], tmp_path / "lbl"), reader)
    assert image.shape == (1, 4, 6, 5) and label.dtype == np.int64 and np.array_equal(label, labels())
    arrays["lbl"] = arrays["lbl"] * 0.75  # label 2 becomes 1.5
    with pytest.raises(DataError, match="lbl: label has non-integer values"):
        read_case(Case("x", [tmp_path / "a"], tmp_path / "lbl"), reader)


def test_check_reports_what_read_case_raises(tmp_path: Path) -> None:
    """The same problem, the same words: ``medseg check`` (images only inspected) and ``read_case``."""
    case = write_case(tmp_path)
    write_image(case.images[1], volume(1), geometry(spacing=(3.0, 1.0, 1.0)))
    with pytest.raises(DataError) as raised:
        read_case(case)
    _, problems = check_case(case)
    assert [(p.path, p.problem) for p in problems] == [(raised.value.path, raised.value.problem)]
    case = write_case(tmp_path)
    write_mask(case.label, labels(), geometry(spacing=(2.0, 1.0, 1.5)))
    with pytest.raises(DataError) as raised:
        read_case(case)
    _, problems = check_case(case)
    assert [(p.path, p.problem) for p in problems] == [(raised.value.path, raised.value.problem)]


def test_the_shared_checks_name_only_what_differs() -> None:
    first = geometry()
    assert channel_problem(Path("a.nii.gz"), first, Path("b.nii.gz"), geometry()) is None
    assert label_problem(Path("a.nii.gz"), first, geometry()) is None
    moved = geometry(origin=(1.0, 0.0, 0.0))
    assert geometry_difference(first, moved) == "origin (1, 0, 0) vs (0, 0, 0)"
    assert label_problem(Path("a.nii.gz"), first, geometry((4, 6, 4))) == \
        "size (4, 6, 4) differs from the image's (4, 6, 5) (a.nii.gz)"
