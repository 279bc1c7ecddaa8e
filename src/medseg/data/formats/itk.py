"""MetaImage (``.mha``, ``.mhd``) and NRRD (``.nrrd``, ``.nhdr``) through SimpleITK.

``GetArrayFromImage`` already gives array order; spacing is reversed into array order, origin and
direction are kept as SimpleITK reports them. Vector pixels become channels, and a 4D scalar image is
read as channels of a 3D image (its last ITK axis is the channel axis, as in a 4D NIfTI).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk

from medseg.data.formats.base import ImageFormat, library_errors, storage_dtype
from medseg.data.geometry import DataError, Geometry

IMAGE_IOS = {".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO"}
logger = logging.getLogger(__name__)

SOURCE_FORMATS = {".mha": "mha", ".mhd": "mha", ".nrrd": "nrrd", ".nhdr": "nrrd"}


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Keep ITK off the console inside the block: its warnings are switched off and what its C++ code
    prints straight to stderr (MetaIO does) goes to the debug log; bad files become DataErrors instead."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)
            captured.seek(0)
            text = captured.read().decode(errors="replace").strip()
            if text:
                logger.debug("ITK printed: %s", text)


def from_sitk_image(image: sitk.Image, path: Path, source_format: str,
                    meta: dict[str, Any] | None = None) -> tuple[np.ndarray, Geometry]:
    """A SimpleITK image as ``(array [C, *spatial], Geometry)``."""
    array = sitk.GetArrayFromImage(image)
    dims = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    elif dims != 4:
        array = array[None]
    spatial = array.ndim - 1
    if spatial not in (2, 3):
        raise DataError(path, f"a {dims}D image with {image.GetNumberOfComponentsPerPixel()} components "
                              "per pixel is not supported (2D or 3D, with channels)")
    direction = np.reshape(image.GetDirection(), (dims, dims))[:spatial, :spatial]
    geometry = Geometry(spacing=tuple(reversed(image.GetSpacing()[:spatial])),
                        origin=tuple(image.GetOrigin()[:spatial]),
                        direction=tuple(direction.ravel().tolist()),
                        source_format=source_format, shape=array.shape[1:],
                        meta={"pixel_type": image.GetPixelIDTypeAsString(), **(meta or {})})
    return np.ascontiguousarray(array), geometry


def to_sitk_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """``[C, *spatial]`` and its geometry as a SimpleITK image (several channels as vector pixels)."""
    array = array.astype(storage_dtype(array), copy=False)
    pixels = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    image = sitk.GetImageFromArray(np.ascontiguousarray(pixels), isVector=array.shape[0] > 1)
    image.SetSpacing([float(s) for s in reversed(geometry.spacing)])
    image.SetOrigin([float(o) for o in geometry.origin])
    image.SetDirection([float(v) for v in geometry.direction])
    return image


class ItkFormat(ImageFormat):
    """MetaImage and NRRD files (SimpleITK), 2D or 3D, scalar or vector pixels."""

    name: ClassVar[str] = "ITK image"
    extensions: ClassVar[tuple[str, ...]] = tuple(IMAGE_IOS)

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        suffix = path.suffix.lower()
        with library_errors(path, f"cannot read {SOURCE_FORMATS[suffix].upper()} file"), quiet_itk():
            image = sitk.ReadImage(str(path), imageIO=IMAGE_IOS[suffix])
        return from_sitk_image(image, path, SOURCE_FORMATS[suffix])

    def write(self, path: Path, array: np.ndarray, geometry: Geometry) -> None:
        suffix = path.suffix.lower()
        lower_case = path.with_suffix(suffix)  # MetaImage turns an upper-case .MHA into .mhd + .zraw
        with library_errors(path, f"cannot write {SOURCE_FORMATS[suffix].upper()} file"):
            writer = sitk.ImageFileWriter()
            writer.SetFileName(str(lower_case))
            writer.SetImageIO(IMAGE_IOS[suffix])
            writer.SetUseCompression(True)
            writer.Execute(to_sitk_image(array, geometry))
            lower_case.replace(path)
