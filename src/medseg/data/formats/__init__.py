"""Image format families, one class each; :mod:`medseg.data.io` picks one by file extension."""

from __future__ import annotations

from medseg.data.formats.base import ImageFormat
from medseg.data.formats.dicom import DicomSeriesFormat
from medseg.data.formats.itk import ItkFormat
from medseg.data.formats.nifti import NiftiFormat
from medseg.data.formats.pillow import PillowFormat

__all__ = ["DicomSeriesFormat", "ImageFormat", "ItkFormat", "NiftiFormat", "PillowFormat"]
