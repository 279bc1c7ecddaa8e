"""One way to read a case: its channel files stacked into one image ``[C, *spatial]`` and its label.

:func:`read_case` is what training (the preprocessed cache), ``medseg predict`` and ``medseg evaluate`` (the
images under the overlays) read cases with; every bad input is a one-line :class:`DataError` naming the
file. ``medseg check`` only inspects images (no pixel arrays), and reports instead of raising, but applies
the same checks through :func:`channel_problem` and :func:`label_problem`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from medseg.data.geometry import DataError, Geometry
from medseg.data.io import has_non_finite, read_image, read_mask
from medseg.errors import MedsegError

Reader = Callable[[Path], tuple[np.ndarray, Geometry]]
"""``path -> (array [C, *spatial], Geometry)``, like :func:`~medseg.data.io.read_image`."""


class CaseLike(Protocol):
    """What reading needs of a case (``medseg.data.datasets.Case``)."""

    case_id: str
    images: Sequence[Path]
    label: Path | None


def numbers_text(values: Iterable[float]) -> str:
    """``(2, 1.5)``: numbers of a shape, spacing or origin as they appear in messages."""
    return "(" + ", ".join(f"{v:g}" for v in np.asarray(list(values), float).ravel()) + ")"


def geometry_difference(reference: Geometry, other: Geometry) -> str:
    """Which of shape, spacing, origin and direction differ: ``spacing (2, 1) vs (1, 1)`` (other first)."""
    parts = []
    for name in ("shape", "spacing", "origin", "direction"):
        mine, theirs = np.asarray(getattr(other, name), float), np.asarray(getattr(reference, name), float)
        if mine.shape != theirs.shape or not np.allclose(mine, theirs, rtol=1e-5, atol=1e-4):
            parts.append(f"{name} {numbers_text(mine)} vs {numbers_text(theirs)}")
    return ", ".join(parts) or "geometry differs"


def channel_problem(first: Path, first_geometry: Geometry, path: Path, geometry: Geometry) -> str | None:
    """Why the channel file ``path`` cannot be stacked onto the case's first channel file, or ``None``
    (the geometries carry the spatial shapes)."""
    if geometry.matches(first_geometry):
        return None
    return f"channel file does not match {Path(first).name}: {geometry_difference(first_geometry, geometry)}"


def label_problem(image: Path, image_geometry: Geometry, label_geometry: Geometry) -> str | None:
    """Why a label of ``label_geometry`` does not fit its image (size first, then the grid), or ``None``."""
    if tuple(label_geometry.shape) != tuple(image_geometry.shape):
        return (f"size {numbers_text(label_geometry.shape)} differs from the image's "
                f"{numbers_text(image_geometry.shape)} ({image})")
    if not label_geometry.matches(image_geometry):
        difference = geometry_difference(image_geometry, label_geometry)
        return f"geometry differs from the image's ({image}): {difference}"
    return None


def read_case(case: CaseLike, reader: Reader | None = None, mask_reader: Reader | None = None, *,
              with_label: bool = True) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """A case's ``(image [C, *spatial], label [1, *spatial] or None, geometry of the first channel)``.

    The channel files are read with ``reader`` (default :func:`~medseg.data.io.read_image`) and stacked;
    each must have the first one's shape and geometry and no NaN/Inf voxel. The label (when the case has
    one and ``with_label``) is read with ``mask_reader`` (default :func:`~medseg.data.io.read_mask`, or
    ``reader`` when only that is given) and must have one channel, the image's size and geometry and
    whole-number values (returned as int64 when read as floats). Errors are one-line :class:`DataError`\\ s
    naming the file.
    """
    if not case.images:
        raise MedsegError(f"case {case.case_id!r}: no image files")
    read = reader or read_image
    arrays: list[np.ndarray] = []
    first: tuple[Path, Geometry] | None = None
    for path in map(Path, case.images):
        array, geometry = read(path)
        geometry = geometry.with_shape(tuple(array.shape[1:]))
        if first is None:
            first = path, geometry
        else:
            problem = channel_problem(*first, path, geometry)
            if problem:
                raise DataError(path, problem)
        if has_non_finite(array):
            raise DataError(path, "contains NaN or Inf voxels")
        arrays.append(array)
    assert first is not None
    image_path, geometry = first
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    if case.label is None or not with_label:
        return image, None, geometry
    label_path = Path(case.label)
    label, label_geometry = (mask_reader or (read_mask if reader is None else reader))(label_path)
    if label.shape[0] != 1:
        raise DataError(label_path, f"label has {label.shape[0]} channels, expected 1")
    problem = label_problem(image_path, geometry, label_geometry.with_shape(tuple(label.shape[1:])))
    if problem:
        raise DataError(label_path, problem)
    if not np.issubdtype(label.dtype, np.integer):
        if not np.isfinite(label).all() or np.any(label != np.round(label)):
            raise DataError(label_path, "label has non-integer values")
        label = label.astype(np.int64)
    return image, label, geometry
