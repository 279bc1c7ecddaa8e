"""NIfTI-1 (``.nii``, ``.nii.gz``) through nibabel, with the affine kept bit for bit.

nibabel's data ``(i, j, k[, c])`` becomes the array ``[c, k, j, i]`` (a 4D file is multi-modal: its last
axis is the channel axis, as in BraTS or the Decathlon). ``Geometry.affine`` is ``img.affine`` (the sform
when its code is > 0, else the qform, as nibabel chooses); spacing, origin and direction are derived from
it in ITK's LPS convention (the first two rows change sign, RAS -> LPS), so the geometry equals what
SimpleITK reports for the same file. The header's transform fields (quaternion, pixdim, srows, codes,
units) travel in ``meta["nifti_header"]`` so that writing with that geometry restores them exactly.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np

from medseg.data.formats.base import ImageFormat, library_errors, storage_dtype
from medseg.data.geometry import DataError, Geometry

logger = logging.getLogger(__name__)

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])  # its own inverse
TRANSFORM_FIELDS = ("pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
                    "srow_x", "srow_y", "srow_z", "qform_code", "sform_code", "xyzt_units")


def itk_frame_from_affine(affine: np.ndarray, spatial_dims: int) -> tuple[tuple[float, ...], ...]:
    """``(spacing, origin, direction)`` of a voxel-to-RAS affine: spacing in array order, ITK LPS frame."""
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    sizes = np.linalg.norm(lps, axis=0)
    if np.any(sizes[:spatial_dims] == 0):
        raise ValueError("the affine has a zero voxel size")
    d = spatial_dims
    direction = (lps / np.where(sizes == 0, 1.0, sizes))[:d, :d]
    origin = (RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, 3])[:d]
    return (tuple(sizes[:d][::-1].tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist()))


def affine_from_itk_frame(geometry: Geometry) -> np.ndarray:
    """The voxel-to-RAS affine of a geometry's spacing, origin and direction (2D embedded in 3D)."""
    d = geometry.spatial_dims
    direction = np.eye(3)
    direction[:d, :d] = np.reshape(geometry.direction, (d, d))
    sizes = np.ones(3)
    sizes[:d] = geometry.spacing[::-1]
    origin = np.zeros(3)
    origin[:d] = geometry.origin
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS @ direction @ np.diag(sizes)
    affine[:3, 3] = RAS_TO_LPS @ origin
    return affine


def _array_order(path: Path, data: np.ndarray) -> np.ndarray:
    """nibabel's ``(i, j[, k[, c]])`` data as ``[C, *spatial]`` in array order."""
    if data.ndim == 5 and data.shape[3] == 1:  # (i, j, k, 1, c): a vector image
        data = data[:, :, :, 0, :]
    if data.ndim in (2, 3):
        return np.ascontiguousarray(data.T[None])
    if data.ndim == 4:
        return np.ascontiguousarray(data.transpose(3, 2, 1, 0))
    raise DataError(path, f"NIfTI data of shape {data.shape} is not 2D, 3D or 3D multi-channel")


def _nifti_order(path: Path, array: np.ndarray) -> np.ndarray:
    """``[C, *spatial]`` as nibabel's ``(i, j[, k[, c]])``."""
    if array.shape[0] == 1:
        return array[0].T
    if array.ndim == 4:
        return array.transpose(3, 2, 1, 0)
    raise DataError(path, f"NIfTI cannot store a {array.ndim - 1}D image with {array.shape[0]} channels "
                          "(only 3D images may have several channels)")


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _header_meta(header: nib.Nifti1Header) -> dict[str, Any]:
    return {
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "data_dtype": str(header.get_data_dtype()),
        "scl_slope": _finite_or_none(header["scl_slope"]),
        "scl_inter": _finite_or_none(header["scl_inter"]),
        "nifti_header": {name: header[name].tolist() for name in TRANSFORM_FIELDS},
    }


def _affine_for(geometry: Geometry) -> tuple[np.ndarray, bool]:
    """The affine to write and whether it is the source's own (consistent with spacing/origin/direction)."""
    built = affine_from_itk_frame(geometry)
    if geometry.affine is None:
        return built, False
    columns = [*range(geometry.spatial_dims), 3]  # a 2D image's third column is not part of its geometry
    if np.allclose(np.asarray(geometry.affine)[:, columns], built[:, columns], rtol=1e-6, atol=1e-5):
        return np.asarray(geometry.affine, dtype=np.float64), True
    logger.debug("geometry affine disagrees with its spacing/origin/direction; writing the latter")
    return built, False


def _header_for(geometry: Geometry, data: np.ndarray) -> nib.Nifti1Header:
    """A header for ``data`` whose best affine is exactly the geometry's affine, with the source's fields
    when known (the shape comes first: without transform codes the affine depends on it)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    affine, own = _affine_for(geometry)
    fields = geometry.meta.get("nifti_header") if own else None
    if fields:
        for name in TRANSFORM_FIELDS:
            header[name] = fields[name]
    else:
        header.set_xyzt_units("mm", "sec")
    if not np.array_equal(header.get_best_affine(), affine):
        header.set_sform(affine, code=max(int(header["sform_code"]), 1))
        header.set_qform(affine, code=max(int(header["qform_code"]), 1))
    return header


class NiftiFormat(ImageFormat):
    """NIfTI-1 images (nibabel), geometry in ITK convention plus the exact affine."""

    name: ClassVar[str] = "NIfTI"
    extensions: ClassVar[tuple[str, ...]] = (".nii", ".nii.gz")

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        with library_errors(path, "cannot read NIfTI file"):
            image = nib.load(path)
            data = np.asanyarray(image.dataobj)
            affine = np.array(image.affine, dtype=np.float64)
            meta = _header_meta(image.header)
        array = _array_order(path, data)
        spatial_dims = array.ndim - 1
        with library_errors(path, "invalid NIfTI affine"):
            spacing, origin, direction = itk_frame_from_affine(affine, spatial_dims)
        return array, Geometry(spacing=spacing, origin=origin, direction=direction, affine=affine,
                               source_format="nifti", shape=array.shape[1:], meta=meta)

    def write(self, path: Path, array: np.ndarray, geometry: Geometry) -> None:
        dtype = storage_dtype(array)
        data = _nifti_order(path, array).astype(dtype, copy=False)
        header = _header_for(geometry, data)
        with library_errors(path, "cannot write NIfTI file"):
            nib.save(nib.Nifti1Image(data, None, header=header, dtype=dtype), path)
