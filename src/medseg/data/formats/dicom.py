"""DICOM series (read only) through SimpleITK's GDCM series reader.

A folder path reads the folder's one series; a ``.dcm`` file path reads the series that file belongs to
(the other files of its folder with the same Series Instance UID). Slices are ordered by their position
along the slice normal (GDCM's sorter), so the z spacing comes from ImagePositionPatient, not from file
names. Several series in one folder without a choice is an error that lists their UIDs.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import SimpleITK as sitk

from medseg.data.formats.base import ImageFormat, library_errors
from medseg.data.formats.itk import from_sitk_image, quiet_itk
from medseg.data.geometry import DataError, Geometry

SERIES_UID_TAG = "0020|000e"


def _clean_uid(uid: str) -> str:
    return uid.strip().strip("\x00").strip()


def series_uid_of(path: Path) -> str | None:
    """The Series Instance UID in one DICOM file's header, or ``None`` when it has none."""
    with library_errors(path, "cannot read DICOM file"), quiet_itk():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("GDCMImageIO")
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey(SERIES_UID_TAG):
            return None
        return _clean_uid(reader.GetMetaData(SERIES_UID_TAG))


def read_dicom_series(folder: Path, series_uid: str | None = None,
                      shown_path: Path | None = None) -> tuple[np.ndarray, Geometry]:
    """Read one series of ``folder`` (the only one, or ``series_uid``); errors name ``shown_path``."""
    shown = shown_path or folder
    with library_errors(shown, "cannot list DICOM series"), quiet_itk():
        uids = [_clean_uid(uid) for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))]
    if not uids:
        raise DataError(shown, "no DICOM series found in the folder")
    if series_uid is None and len(uids) > 1:
        raise DataError(shown, f"{len(uids)} DICOM series in one folder ({', '.join(uids)}); choose one by "
                               "reading one of its .dcm files")
    series_uid = series_uid or uids[0]
    if series_uid not in uids:
        raise DataError(shown, f"no DICOM series {series_uid} in the folder (found {', '.join(uids)})")
    with library_errors(shown, "cannot read DICOM series"), quiet_itk():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
    return from_sitk_image(image, shown, "dicom", {"series_uid": series_uid, "slices": len(files)})


class DicomSeriesFormat(ImageFormat):
    """A folder of DICOM slices, or a ``.dcm`` file whose folder is read as its series (read only)."""

    name: ClassVar[str] = "DICOM"
    extensions: ClassVar[tuple[str, ...]] = (".dcm",)

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        if path.is_dir():
            return read_dicom_series(path)
        return read_dicom_series(path.parent, series_uid_of(path), shown_path=path)
