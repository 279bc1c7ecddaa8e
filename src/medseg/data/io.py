"""Read and write images of any supported format, chosen by file extension.

``read_image`` returns ``(array [C, *spatial], Geometry)`` (conventions in :mod:`medseg.data.geometry`);
``read_mask`` returns a single-channel integer label map (0/255 masks as 0/1, JPEG masks binarised);
``write_image`` / ``write_mask`` write atomically: a reader never sees a half-written file and a failed
write leaves neither the target nor a temporary file. Every bad input raises a one-line
:class:`DataError` that starts with the path.

Extensions are matched case-insensitively and ``.nii.gz`` counts as one extension. A folder is read as a
DICOM series. More format families can be added with :func:`register_format`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medseg.data.formats import DicomSeriesFormat, ImageFormat, ItkFormat, NiftiFormat, PillowFormat
from medseg.data.formats.base import ImageInfo, as_labels
from medseg.data.geometry import DataError, Geometry
from medseg.fileio import atomic_path

CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net's per-modality file suffix, e.g. case_0000.nii.gz

_FORMATS: dict[str, ImageFormat] = {}
_FOLDER_FORMAT: ImageFormat = DicomSeriesFormat()


def register_format(image_format: ImageFormat) -> None:
    """Make ``image_format`` the reader/writer of each of its extensions."""
    for extension in image_format.extensions:
        _FORMATS[extension.lower()] = image_format


for _family in (PillowFormat(), NiftiFormat(), ItkFormat(), _FOLDER_FORMAT):
    register_format(_family)


def image_extensions() -> tuple[str, ...]:
    """All supported image extensions (lower case, with the dot), sorted."""
    return tuple(sorted(_FORMATS))


def image_extension(name: str | Path) -> str | None:
    """The supported image extension that ``name`` ends with (longest match, any case), or ``None``."""
    lower = Path(name).name.lower()
    matches = [extension for extension in _FORMATS if lower.endswith(extension)]
    return max(matches, key=len) if matches else None


def strip_extension(name: str | Path) -> str:
    """``name`` without its image extension (``case.nii.gz`` -> ``case``); other names are unchanged."""
    text = str(name)
    extension = image_extension(text)
    return text[: -len(extension)] if extension else text


def case_id(path: str | Path, strip_channel: bool = False) -> str:
    """The case id of an image file or DICOM folder: its name without the image extension and, when
    ``strip_channel``, without a trailing nnU-Net channel suffix (``_0000``)."""
    identifier = strip_extension(Path(path).name)
    return CHANNEL_SUFFIX.sub("", identifier) if strip_channel else identifier


def lossless_mask_path(path: str | Path) -> Path:
    """Where to write a mask for ``path``: the same path, or a ``.png`` for a lossy (JPEG) one."""
    path = Path(path)
    extension = image_extension(path)
    if extension and extension in _FORMATS[extension].lossy_extensions:
        return path.with_name(strip_extension(path.name) + ".png")
    return path


def has_non_finite(array: np.ndarray) -> bool:
    """Whether ``array`` holds NaN or Inf values (not an error when reading; ``medseg check`` reports it)."""
    array = np.asarray(array)
    return bool(np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all())


def format_for(path: str | Path) -> ImageFormat:
    """The format family that reads and writes ``path`` (a folder is a DICOM series)."""
    path = Path(path)
    if path.is_dir():
        return _FOLDER_FORMAT
    extension = image_extension(path)
    if extension is None:
        found = f"unknown image extension '{path.suffix}'" if path.suffix else "no image extension"
        raise DataError(path, f"{found}; supported: {', '.join(image_extensions())}")
    return _FORMATS[extension]


def _readable_format(path: Path) -> ImageFormat:
    if not path.exists():
        raise DataError(path, "no such file or folder")
    image_format = format_for(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    return image_format


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read an image as ``(array [C, *spatial], Geometry)`` with the file's dtype."""
    path = Path(path)
    return _readable_format(path).read(path)


def inspect_image(path: str | Path) -> ImageInfo:
    """Read an image completely, as :func:`read_image` does, but return only its channel count, spatial
    shape, geometry and NaN/Inf counts (``medseg check``: no pixel array where the format needs none)."""
    path = Path(path)
    return _readable_format(path).inspect(path)


def read_mask(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a mask or label image as ``(labels [1, *spatial] integer, Geometry)``.

    Equal colour channels are merged, float labels must be whole numbers, a 2D mask of exactly {0, 255}
    becomes {0, 1}, a JPEG mask must be near-binary and is binarised at > 127, palette PNGs keep their
    indices and 16-bit label PNGs keep their values.
    """
    path = Path(path)
    return _readable_format(path).read_mask(path)


def _checked_array(path: Path, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim not in (3, 4) or array.size == 0:
        raise DataError(path, f"expected a non-empty array [C, *spatial] with 2 or 3 spatial axes; got shape "
                              f"{array.shape}")
    return array


def _checked_geometry(path: Path, array: np.ndarray, geometry: Geometry | None) -> Geometry:
    spatial = array.shape[1:]
    if geometry is None:
        return Geometry.identity(spatial)
    d = geometry.spatial_dims
    if d != len(spatial) or (geometry.shape and tuple(geometry.shape) != spatial):
        raise DataError(path, f"array of spatial shape {spatial} does not match its geometry (shape "
                              f"{tuple(geometry.shape)}, {d} spatial axes)")
    if len(geometry.origin) != d or len(geometry.direction) != d * d:
        raise DataError(path, f"geometry of {d} spatial axes has {len(geometry.origin)} origin and "
                              f"{len(geometry.direction)} direction values")
    return geometry


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """Yield ``path``'s name inside a private folder beside it, then move what was written into place.

    Writers choose the format (and MetaImage/NRRD name their data files) by file name, so the file is
    written under its final name in a staging folder; each written file then reaches its target through
    :func:`medseg.fileio.atomic_path` (companion data files first, the named file last). The staging
    folder is removed whatever happens.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staged = staging / path.name
        yield staged
        if not staged.is_file():
            raise DataError(path, "the writer produced no file")
        for written in sorted(staging.iterdir(), key=lambda file: file == staged):
            with atomic_path(path.parent / written.name) as tmp:
                os.replace(written, tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry | None = None) -> None:
    """Write ``array [C, *spatial]`` atomically in the format of ``path``'s extension.

    With the source ``geometry`` the file gets its spacing, origin and direction (and, for NIfTI, the
    exact affine and qform/sform codes); without one, unit spacing and identity direction. Integer
    arrays keep integer dtypes (64-bit narrowed), floats are written as float32.
    """
    path = Path(path)
    image_format = format_for(path)
    array = _checked_array(path, array)
    geometry = _checked_geometry(path, array, geometry)
    try:
        with _staged(path) as staged:
            image_format.write(staged, array, geometry)
    except DataError as error:
        raise DataError(path, error.problem) from error  # name the target, not the staging file


def write_mask(path: str | Path, mask: np.ndarray, geometry: Geometry | None = None) -> None:
    """Write a label map ``[1, *spatial]`` with an integer dtype; lossy formats (JPEG) are refused."""
    path = Path(path)
    if lossless_mask_path(path) != path:
        raise DataError(path, "JPEG is lossy and would change mask values; write masks as PNG")
    mask = _checked_array(path, mask)
    if mask.shape[0] != 1:
        raise DataError(path, f"a mask has one channel; got {mask.shape[0]}")
    write_image(path, as_labels(path, mask), geometry)
