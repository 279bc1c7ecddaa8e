"""The interface every image format family implements, and the helpers the families share.

A format family reads a file into ``(array [C, *spatial], Geometry)`` and writes such an array back
(see :mod:`medseg.data.geometry` for the conventions). Library exceptions are turned into one-line
:class:`DataError` messages that start with the path.
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from medseg.data.geometry import DataError, Geometry

ITK_ERROR = re.compile(r"^.*?ERROR: \w+\(0x[0-9a-fA-F]+\): ")  # "ITK ERROR: MetaImageIO(0x55c4...): "


def one_line(exc: BaseException) -> str:
    """An exception as one short line (ITK's messages carry a source location and a multi-line reason)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    itk_errors = [line for line in lines if ITK_ERROR.match(line)]
    text = ITK_ERROR.sub("", itk_errors[0]) if itk_errors else " ".join(lines)
    text = text or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def library_errors(path: str | Path, action: str) -> Iterator[None]:
    """Turn any exception a library raises inside the block into one line:
    ``DataError(path, "{action} ({ExceptionType}: {message})")``."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # the libraries raise OSError, ValueError, RuntimeError, zlib.error, ...
        raise DataError(path, f"{action} ({type(exc).__name__}: {one_line(exc)})") from exc


def label_dtype(array: np.ndarray) -> np.dtype:
    """The smallest integer dtype that holds the label values of ``array`` (uint8, uint16, int16, int32)."""
    if array.size == 0:
        return np.dtype(np.uint8)
    low, high = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def as_labels(path: str | Path, array: np.ndarray) -> np.ndarray:
    """``array`` as integer labels: integers and bools keep their values, floats must hold whole numbers."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.all(np.isfinite(array)):
        raise DataError(path, "label image contains NaN or Inf values")
    if not np.array_equal(array, np.round(array)):
        raise DataError(path, "label image contains non-integer values")
    return array.astype(label_dtype(array))


def storage_dtype(array: np.ndarray) -> np.dtype:
    """The dtype an array is written with: labels as integers (int64 narrowed), floats as float32."""
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return np.dtype(np.float32)
    if array.dtype.itemsize == 8 and np.issubdtype(array.dtype, np.integer):
        return label_dtype(array)
    return array.dtype


def single_channel_mask(path: str | Path, array: np.ndarray) -> np.ndarray:
    """Merge a colour mask whose channels are all equal into one channel; refuse real colour masks."""
    if array.shape[0] == 1:
        return array
    if array.shape[0] in (3, 4) and np.all(array[1:3] == array[:1]):
        return array[:1]
    raise DataError(path, f"a mask must have one channel (or equal RGB channels); got {array.shape[0]} "
                          "channels that differ")


@dataclass(frozen=True)
class ImageInfo:
    """What ``medseg check`` needs of an image file: channels, spatial shape, geometry, NaN/Inf counts."""

    channels: int
    shape: tuple[int, ...]
    geometry: Geometry
    nan: int = 0
    inf: int = 0

    @classmethod
    def of(cls, array: np.ndarray, geometry: Geometry) -> ImageInfo:
        """The info of an image read as ``array [C, *spatial]`` (NaN/Inf counted only for float dtypes)."""
        nan = inf = 0
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        return cls(int(array.shape[0]), tuple(int(s) for s in array.shape[1:]), geometry, nan, inf)


class ImageFormat(ABC):
    """One format family: the extensions it owns and how it reads and writes them.

    Subclasses set ``name`` (used in messages), ``extensions`` (lower case, with the dot) and
    ``lossy_extensions``; ``read`` and ``write`` do the work (a read-only family keeps the refusing
    ``write``). ``write`` receives the final file name inside a
    private staging folder (the caller moves the result into place atomically) and an array/geometry pair
    already checked for matching shapes.
    """

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]
    lossy_extensions: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        """Read ``path`` as ``(array [C, *spatial], Geometry)``."""

    def inspect(self, path: Path) -> ImageInfo:
        """Read ``path`` completely (so that damage is found) and describe it; a family whose file tells
        channels and shape without converting the decoded pixels overrides this."""
        return ImageInfo.of(*self.read(path))

    def read_mask(self, path: Path) -> tuple[np.ndarray, Geometry]:
        """Read ``path`` as a single-channel integer label map ``[1, *spatial]``."""
        array, geometry = self.read(path)
        return as_labels(path, single_channel_mask(path, array)), geometry

    def write(self, path: Path, array: np.ndarray, geometry: Geometry) -> None:
        """Write ``array`` with ``geometry`` to ``path``."""
        raise DataError(path, f"writing {self.name} files is not supported")
