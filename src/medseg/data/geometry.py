"""Image geometry and the data layer's error type.

Conventions (the whole package follows them):

- Arrays are ``[C, *spatial]``. The spatial axes are in *array order*: ``(rows, cols)`` = ``(y, x)`` in 2D
  and ``(z, y, x)`` in 3D, which is the order of ``SimpleITK.GetArrayFromImage`` (a NIfTI volume read
  with nibabel as ``(i, j, k)`` is transposed to ``(k, j, i)``).
- ``Geometry.spacing`` is given in the same array order, so ``spacing[a]`` is the physical size of a step
  along array axis ``a`` (what metrics and resampling need).
- ``origin`` and ``direction`` are in ITK's physical convention: ``(x, y, z)`` LPS coordinates and the
  row-major ``d x d`` direction-cosine matrix whose *columns* are the image's ``(i, j, k)`` axes, exactly
  as SimpleITK reports them.
- ``affine`` is the NIfTI voxel-to-RAS 4x4 matrix of a NIfTI source, kept so that writing a prediction
  reproduces it bit for bit (with the header's qform/sform codes in ``meta``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegError


class DataError(MedsegError):
    """A problem with a data file or folder; the message starts with the path."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where an array's voxels lie in physical space, and where the array came from.

    Attributes:
        spacing: physical voxel size per spatial array axis (array order, see the module docstring).
        origin: physical position of the first voxel, ITK ``(x, y, z)`` order.
        direction: row-major direction-cosine matrix (``d * d`` values), ITK convention.
        affine: NIfTI voxel-to-world 4x4 matrix (NIfTI sources only), else ``None``.
        source_format: the reader's format name (``png``, ``nifti``, ``mha``, ``nrrd``, ``dicom``, ...).
        shape: the spatial shape of the array as read (array order).
        meta: format details needed to write the file back (e.g. NIfTI qform/sform codes, PNG bit depth).
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    affine: np.ndarray | None = None
    source_format: str = "unknown"
    shape: tuple[int, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        return len(self.spacing)

    @classmethod
    def identity(cls, shape: tuple[int, ...], source_format: str = "unknown") -> Geometry:
        """Unit spacing, zero origin, identity direction for an array of spatial ``shape``."""
        d = len(shape)
        return cls(spacing=(1.0,) * d, origin=(0.0,) * d, direction=tuple(np.eye(d).ravel().tolist()),
                   source_format=source_format, shape=tuple(int(s) for s in shape))

    def matches(self, other: Geometry, rtol: float = 1e-5, atol: float = 1e-4) -> bool:
        """Whether two geometries describe the same grid (shape, spacing, origin, direction)."""
        return (tuple(self.shape) == tuple(other.shape)
                and np.allclose(self.spacing, other.spacing, rtol=rtol, atol=atol)
                and np.allclose(self.origin, other.origin, rtol=rtol, atol=atol)
                and np.allclose(self.direction, other.direction, rtol=rtol, atol=atol))

    def with_shape(self, shape: tuple[int, ...]) -> Geometry:
        """The same geometry for an array of another spatial shape (e.g. after cropping metadata)."""
        return replace(self, shape=tuple(int(s) for s in shape))
