"""Readers and writers: round trips per format, geometry conventions, mask rules, DICOM series, real data."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medseg.data.geometry import DataError, Geometry
from medseg.data.io import (
    case_id,
    format_for,
    has_non_finite,
    image_extensions,
    lossless_mask_path,
    read_image,
    read_mask,
    strip_extension,
    write_image,
    write_mask,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """A proper 3D rotation matrix from angles about x, y, z (radians)."""
    (cx, cy, cz), (sx, sy, sz) = (math.cos(a) for a in (ax, ay, az)), (math.sin(a) for a in (ax, ay, az))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_geometry(shape: tuple[int, int, int]) -> Geometry:
    """A 3D ITK-convention geometry with anisotropic spacing, an offset origin and a rotated direction."""
    return Geometry(spacing=(2.5, 0.75, 0.6), origin=(-12.5, 30.25, 7.0),
                    direction=tuple(rotation(0.2, -0.1, 0.4).ravel().tolist()), shape=shape)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 1,
               qform: np.ndarray | None = None) -> nib.Nifti1Image:
    """Write a NIfTI file with nibabel alone (the independent reference)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_sform(affine, code=sform_code)
    header.set_qform(affine if qform is None else qform, code=qform_code)
    nib.save(nib.Nifti1Image(data, None, header=header), path)
    return nib.load(path)


# ----------------------------------------------------------------------------------------------------- 2D


@pytest.mark.parametrize(("name", "array"), [
    ("grey.png", np.arange(48, dtype=np.uint8).reshape(1, 6, 8)),
    ("labels16.png", (np.arange(48, dtype=np.uint16) * 1300).reshape(1, 6, 8)),
    ("rgb.png", np.arange(144, dtype=np.uint8).reshape(3, 6, 8)),
    ("rgba.png", np.arange(4 * 48, dtype=np.uint8).reshape(4, 6, 8)),  # alpha 144..191: transparent
    ("rgb.bmp", np.arange(144, dtype=np.uint8).reshape(3, 6, 8)),
    ("rgb16.png", (np.arange(144, dtype=np.uint16) * 450).reshape(3, 6, 8)),
    ("grey16.tif", (np.arange(48, dtype=np.uint16) * 1000).reshape(1, 6, 8)),
    ("float.tiff", np.linspace(-1.5, 2.5, 48, dtype=np.float32).reshape(1, 6, 8)),
])
def test_2d_round_trip_keeps_values_dtype_and_channels(tmp_path: Path, name: str, array: np.ndarray) -> None:
    write_image(tmp_path / name, array)
    back, geometry = read_image(tmp_path / name)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert geometry.shape == (6, 8) and geometry.spacing == (1.0, 1.0)
    assert geometry.origin == (0.0, 0.0) and geometry.direction == (1.0, 0.0, 0.0, 1.0)


def test_16_bit_rgb_png_keeps_16_bits(tmp_path: Path) -> None:
    pixels = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(pixels, isVector=True), str(tmp_path / "rgb16.png"))
    array, geometry = read_image(tmp_path / "rgb16.png")
    assert array.dtype == np.uint16 and geometry.source_format == "png"
    np.testing.assert_array_equal(array, pixels.transpose(2, 0, 1))


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:32, 0:40]
    array = np.stack([yy * 4, xx * 3, np.full_like(yy, 120)]).astype(np.uint8)
    write_image(tmp_path / "smooth.JPG", array)
    back, geometry = read_image(tmp_path / "smooth.JPG")
    assert back.shape == (3, 32, 40) and geometry.source_format == "jpeg"
    assert np.abs(back.astype(int) - array).mean() < 3


def test_raster_spacing_is_pixels_and_the_dpi_is_kept(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "dpi.png", dpi=(254, 127))
    array, geometry = read_image(tmp_path / "dpi.png")
    assert geometry.spacing == (1.0, 1.0)  # a print setting, not a physical pixel size
    assert geometry.meta["dpi"] == pytest.approx((254, 127), rel=1e-3)
    write_image(tmp_path / "again.png", array, geometry)
    assert read_image(tmp_path / "again.png")[1].meta["dpi"] == pytest.approx((254, 127), rel=1e-3)


def test_rgba_with_opaque_alpha_becomes_rgb_and_transparency_is_kept(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((5, 7, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    array, _ = read_image(tmp_path / "opaque.png")
    np.testing.assert_array_equal(array, rgb.transpose(2, 0, 1))
    opaque[0, 0, 3] = 10
    Image.fromarray(opaque).save(tmp_path / "transparent.png")
    assert read_image(tmp_path / "transparent.png")[0].shape == (4, 5, 7)


def test_palette_images_become_rgb_or_grey_and_palette_masks_keep_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    colour = Image.fromarray(indices, mode="P")
    colour.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    colour.save(tmp_path / "colour.png")
    array, _ = read_image(tmp_path / "colour.png")
    assert array.shape == (3, 2, 3)
    np.testing.assert_array_equal(array[:, 0, 1], [255, 0, 0])
    mask, _ = read_mask(tmp_path / "colour.png")
    np.testing.assert_array_equal(mask[0], indices)
    grey = Image.fromarray(indices, mode="P")
    grey.putpalette([0, 0, 0, 100, 100, 100, 200, 200, 200] + [0] * 759)
    grey.save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png")[0], indices[None] * 100)


def test_mask_of_0_and_255_becomes_0_and_1_but_other_labels_stay(tmp_path: Path) -> None:
    binary = np.zeros((6, 9), np.uint8)
    binary[2:5, 3:7] = 255
    Image.fromarray(binary).save(tmp_path / "mask.png")
    mask, _ = read_mask(tmp_path / "mask.png")
    assert mask.shape == (1, 6, 9) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[0], binary // 255)
    three = binary.copy()
    three[0, 0] = 128
    Image.fromarray(three).save(tmp_path / "three.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "three.png")[0][0], three)


def test_rgb_mask_with_equal_channels_is_one_channel(tmp_path: Path) -> None:
    grey = np.zeros((4, 4), np.uint8)
    grey[1:3, 1:3] = 255
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb_mask.png")
    mask, _ = read_mask(tmp_path / "rgb_mask.png")
    np.testing.assert_array_equal(mask, (grey // 255)[None])
    colours = np.stack([grey, grey // 2, grey], axis=-1)
    Image.fromarray(colours).save(tmp_path / "colour_mask.png")
    with pytest.raises(DataError, match="one channel"):
        read_mask(tmp_path / "colour_mask.png")


def test_16_bit_label_png_keeps_values(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [300, 1000, 65535]], np.uint16)
    Image.fromarray(labels).save(tmp_path / "instances.png")
    mask, _ = read_mask(tmp_path / "instances.png")
    assert mask.dtype == np.uint16
    np.testing.assert_array_equal(mask[0], labels)


def test_jpeg_mask_is_binarised_and_non_binary_jpeg_masks_are_refused(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    disc = ((yy - 30) ** 2 + (xx - 34) ** 2 < 18**2).astype(np.uint8) * 255
    Image.fromarray(np.stack([disc] * 3, axis=-1)).save(tmp_path / "disc.jpg", quality=75)
    mask, _ = read_mask(tmp_path / "disc.jpg")
    assert set(np.unique(mask)) == {0, 1}
    assert np.mean(mask[0] == disc // 255) > 0.99
    Image.fromarray((disc // 255) * 2).save(tmp_path / "small_labels.jpg")
    with pytest.raises(DataError, match="near-binary"):
        read_mask(tmp_path / "small_labels.jpg")


def test_masks_are_not_written_to_jpeg(tmp_path: Path) -> None:
    mask = np.zeros((1, 4, 4), np.uint8)
    with pytest.raises(DataError, match="lossy"):
        write_mask(tmp_path / "mask.jpg", mask)
    assert not list(tmp_path.iterdir())
    assert lossless_mask_path(tmp_path / "case.JPEG") == tmp_path / "case.png"
    assert lossless_mask_path(tmp_path / "case.nii.gz") == tmp_path / "case.nii.gz"


def test_write_mask_stores_float_labels_as_integers(tmp_path: Path) -> None:
    labels = np.array([[[0.0, 1.0], [2.0, 2.0]]])
    write_mask(tmp_path / "labels.png", labels)
    back, _ = read_mask(tmp_path / "labels.png")
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels.astype(np.uint8))
    with pytest.raises(DataError, match="non-integer"):
        write_mask(tmp_path / "bad.png", labels + 0.5)


def test_png_refuses_non_integer_floats_and_3d_arrays(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="integer"):
        write_image(tmp_path / "probabilities.png", np.full((1, 3, 3), 0.25))
    with pytest.raises(DataError, match="2D"):
        write_image(tmp_path / "volume.png", np.zeros((1, 2, 3, 3), np.uint8))
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------------------------- NIfTI


def test_nifti_data_is_transposed_to_array_order(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (i, j, k)
    save_nifti(tmp_path / "order.nii.gz", data, np.diag([0.5, 0.8, 3.0, 1.0]))
    array, geometry = read_image(tmp_path / "order.nii.gz")
    assert array.shape == (1, 4, 3, 2) and array.dtype == np.int16
    assert array[0, 3, 2, 1] == data[1, 2, 3]
    assert geometry.spacing == (3.0, pytest.approx(0.8), 0.5)


def test_4d_nifti_is_channels_first_and_round_trips(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(5, 4, 3, 2)).astype(np.float32)  # two modalities
    save_nifti(tmp_path / "multi.nii.gz", data, np.diag([1.0, 1.0, 2.0, 1.0]))
    array, geometry = read_image(tmp_path / "multi.nii.gz")
    assert array.shape == (2, 3, 4, 5) and geometry.shape == (3, 4, 5)
    np.testing.assert_array_equal(array[1], data[..., 1].T)
    write_image(tmp_path / "again.nii.gz", array, geometry)
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "again.nii.gz").dataobj), data)


OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = rotation(0.3, 0.1, -0.5) @ np.diag([0.7, 0.9, 3.3])
OBLIQUE[:3, 3] = [-90.5, 12.25, 40.0]
SHEARED = OBLIQUE.copy()
SHEARED[0, 1] += 0.2


@pytest.mark.parametrize(("affine", "qform_code", "sform_code", "qform"), [
    (OBLIQUE, 1, 1, None), (OBLIQUE, 1, 0, None), (OBLIQUE, 0, 2, None), (SHEARED, 1, 4, None),
    (np.diag([1.2, 1.0, 2.0, 1.0]), 0, 0, None), (SHEARED, 2, 1, np.diag([-0.7, 0.9, 3.3, 1.0])),
])
def test_nifti_round_trip_reproduces_affine_and_codes(tmp_path: Path, affine: np.ndarray, qform_code: int,
                                                      sform_code: int, qform: np.ndarray | None) -> None:
    data = np.random.default_rng(2).integers(0, 3, size=(6, 5, 4)).astype(np.uint8)
    source = save_nifti(tmp_path / "source.nii.gz", data, affine, qform_code, sform_code, qform)
    array, geometry = read_image(tmp_path / "source.nii.gz")
    np.testing.assert_array_equal(geometry.affine, source.affine)
    assert geometry.meta["qform_code"] == qform_code and geometry.meta["sform_code"] == sform_code
    write_image(tmp_path / "copy.nii", array, geometry)
    copy = nib.load(tmp_path / "copy.nii")
    assert np.array_equal(copy.affine, source.affine)
    assert np.array_equal(copy.header.get_qform(), source.header.get_qform())
    assert np.array_equal(copy.header.get_sform(), source.header.get_sform())
    assert (int(copy.header["qform_code"]), int(copy.header["sform_code"])) == (qform_code, sform_code)
    assert copy.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(copy.dataobj), data)


def test_nifti_geometry_equals_simpleitk_and_mha_copy(tmp_path: Path) -> None:
    data = np.random.default_rng(3).normal(size=(7, 6, 5)).astype(np.float32)
    save_nifti(tmp_path / "oblique.nii.gz", data, OBLIQUE)
    array, geometry = read_image(tmp_path / "oblique.nii.gz")
    reference = sitk.ReadImage(str(tmp_path / "oblique.nii.gz"))
    np.testing.assert_array_equal(array[0], sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(geometry.spacing, reference.GetSpacing()[::-1], rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(geometry.direction, reference.GetDirection(), atol=1e-6)
    write_image(tmp_path / "oblique.mha", array, geometry)
    mha_array, mha_geometry = read_image(tmp_path / "oblique.mha")
    np.testing.assert_array_equal(mha_array, array)
    assert mha_geometry.matches(geometry) and mha_geometry.source_format == "mha"
    write_image(tmp_path / "from_mha.nii.gz", mha_array, mha_geometry)  # affine built from spacing etc.
    np.testing.assert_allclose(nib.load(tmp_path / "from_mha.nii.gz").affine, OBLIQUE, atol=1e-5)


def test_nifti_from_itk_geometry_matches_simpleitk(tmp_path: Path) -> None:
    array = np.arange(60, dtype=np.int16).reshape(1, 3, 4, 5)
    geometry = oblique_geometry((3, 4, 5))
    write_image(tmp_path / "itk.nii.gz", array, geometry)
    reference = sitk.ReadImage(str(tmp_path / "itk.nii.gz"))
    np.testing.assert_allclose(reference.GetSpacing()[::-1], geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(reference.GetOrigin(), geometry.origin, atol=1e-4)
    np.testing.assert_allclose(reference.GetDirection(), geometry.direction, atol=1e-6)
    assert read_image(tmp_path / "itk.nii.gz")[1].matches(geometry)


def test_nifti_labels_are_integers_and_float_predictions_float32(tmp_path: Path) -> None:
    write_image(tmp_path / "labels.nii.gz", np.ones((1, 2, 3, 4), np.int64))
    assert nib.load(tmp_path / "labels.nii.gz").get_data_dtype() == np.uint8
    write_image(tmp_path / "probabilities.nii.gz", np.full((1, 2, 3, 4), 0.3))
    assert nib.load(tmp_path / "probabilities.nii.gz").get_data_dtype() == np.float32


def test_real_nifti_with_changed_affine_round_trips(tmp_path: Path) -> None:
    files = sorted((DATA / "msd-task04-hippocampus" / "labelsTr").glob("*.nii.gz"))
    if not files:
        pytest.skip("real data not available")
    real = nib.load(files[0])
    save_nifti(tmp_path / "changed.nii.gz", np.asanyarray(real.dataobj), OBLIQUE, 1, 1)
    labels, geometry = read_mask(tmp_path / "changed.nii.gz")
    write_mask(tmp_path / "written.nii.gz", labels, geometry)
    written = nib.load(tmp_path / "written.nii.gz")
    assert np.array_equal(written.affine, nib.load(tmp_path / "changed.nii.gz").affine)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(real.dataobj))


# ---------------------------------------------------------------------------------------------------- ITK


@pytest.mark.parametrize("name", ["volume.mha", "volume.mhd", "volume.nrrd", "volume.nhdr", "VOLUME.MHA"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_itk_round_trip_keeps_values_and_geometry(tmp_path: Path, name: str, dtype: type) -> None:
    array = (np.arange(3 * 4 * 5) - 20).astype(dtype).reshape(1, 3, 4, 5)
    geometry = oblique_geometry((3, 4, 5))
    write_image(tmp_path / name, array, geometry)
    back, read_geometry = read_image(tmp_path / name)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, array)
    assert read_geometry.shape == (3, 4, 5)
    exact = name.lower().endswith((".mha", ".mhd"))  # NRRD stores spacing x direction: 1-ulp rounding
    for got, want in [(read_geometry.spacing, geometry.spacing), (read_geometry.origin, geometry.origin),
                      (read_geometry.direction, geometry.direction)]:
        if exact:
            assert got == want
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_itk_reader_matches_a_file_written_by_simpleitk(tmp_path: Path) -> None:
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((0.5, 0.25, 4.0))  # ITK order (x, y, z)
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "direct.nrrd"))
    array, geometry = read_image(tmp_path / "direct.nrrd")
    np.testing.assert_array_equal(array[0], pixels)
    assert geometry.spacing == (4.0, 0.25, 0.5) and geometry.origin == (1.0, 2.0, 3.0)
    assert geometry.source_format == "nrrd"


def test_vector_pixels_become_channels(tmp_path: Path) -> None:
    array = np.arange(3 * 2 * 4 * 5, dtype=np.float32).reshape(3, 2, 4, 5)
    write_image(tmp_path / "vector.mha", array)
    reference = sitk.ReadImage(str(tmp_path / "vector.mha"))
    assert reference.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reference)[..., 2], array[2])
    np.testing.assert_array_equal(read_image(tmp_path / "vector.mha")[0], array)


def test_2d_mha_round_trip(tmp_path: Path) -> None:
    geometry = Geometry(spacing=(0.3, 0.6), origin=(5.0, -1.0), direction=(0.0, 1.0, 1.0, 0.0), shape=(4, 6))
    array = np.arange(24, dtype=np.uint16).reshape(1, 4, 6)
    write_image(tmp_path / "slice.mha", array, geometry)
    back, read_geometry = read_image(tmp_path / "slice.mha")
    np.testing.assert_array_equal(back, array)
    assert (read_geometry.spacing, read_geometry.origin, read_geometry.direction) == (
        geometry.spacing, geometry.origin, geometry.direction)


# -------------------------------------------------------------------------------------------------- DICOM


def write_dicom_series(folder: Path, volume: np.ndarray, spacing: tuple[float, float, float],
                       origin: tuple[float, float, float], series_uid: str, prefix: str = "slice") -> None:
    """Write ``volume (z, y, x)`` as one DICOM file per slice, named in reverse order of position."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    dz, dy, dx = spacing
    for z in range(volume.shape[0]):
        image = sitk.GetImageFromArray(volume[z])
        image.SetSpacing((dx, dy))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{z + 1}", "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": series_uid, "0020|0013": str(z + 1),
            "0020|0032": f"{origin[0]}\\{origin[1]}\\{origin[2] + z * dz}", "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{dy}\\{dx}", "0018|0050": str(dz),
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}_{volume.shape[0] - z:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_is_read_sorted_by_position(tmp_path: Path) -> None:
    volume = (np.arange(4 * 6 * 5).reshape(4, 6, 5) * 7 - 50).astype(np.int16)
    write_dicom_series(tmp_path / "series", volume, (2.5, 0.8, 0.6), (10.0, -20.0, 5.0), "1.2.3.4.100")
    array, geometry = read_image(tmp_path / "series")
    np.testing.assert_array_equal(array[0], volume)
    np.testing.assert_allclose(geometry.spacing, (2.5, 0.8, 0.6), rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, (10.0, -20.0, 5.0))
    assert geometry.source_format == "dicom" and geometry.meta["slices"] == 4
    single, _ = read_image(tmp_path / "series" / "slice_001.dcm")  # one file reads its whole series
    np.testing.assert_array_equal(single, array)


def test_dicom_folder_with_two_series_needs_a_choice(tmp_path: Path) -> None:
    volume = np.zeros((2, 4, 4), np.int16)
    write_dicom_series(tmp_path, volume, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "1.2.3.4.1", prefix="a")
    write_dicom_series(tmp_path, volume + 9, (3.0, 1.0, 1.0), (0.0, 0.0, 0.0), "1.2.3.4.2", prefix="b")
    with pytest.raises(DataError, match=r"2 DICOM series .*1\.2\.3\.4\.1.*1\.2\.3\.4\.2") as error:
        read_image(tmp_path)
    assert str(error.value).startswith(str(tmp_path))
    array, geometry = read_image(tmp_path / "b_001.dcm")
    assert np.all(array == 9) and geometry.meta["series_uid"] == "1.2.3.4.2"
    assert geometry.spacing[0] == pytest.approx(3.0)
    with pytest.raises(DataError, match="not supported"):
        write_image(tmp_path / "out.dcm", array, geometry)


# ---------------------------------------------------------------------------------------------------- API


def test_extensions_names_and_case_ids() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd",
            ".nhdr", ".dcm"} == set(image_extensions())
    assert strip_extension("case_001.NII.GZ") == "case_001"
    assert strip_extension("scan.v2.png") == "scan.v2"
    assert strip_extension("notes.txt") == "notes.txt"
    assert case_id("/data/imagesTr/la_003_0000.nii.gz") == "la_003_0000"
    assert case_id("/data/imagesTr/la_003_0001.nii.gz", strip_channel=True) == "la_003"
    assert case_id("/data/dicom/patient_7") == "patient_7"
    assert type(format_for("A.Nii.Gz")).__name__ == "NiftiFormat"


def test_write_refuses_an_array_that_does_not_match_its_geometry(tmp_path: Path) -> None:
    geometry = Geometry.identity((4, 5, 6))
    for array in (np.zeros((1, 4, 5, 7)), np.zeros((1, 4, 5)), np.zeros((4, 5, 6, 2, 2))):
        with pytest.raises(DataError) as error:
            write_image(tmp_path / "out.nii.gz", array, geometry)
        assert str(error.value).startswith(str(tmp_path / "out.nii.gz"))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["failed.nii.gz", "failed.mhd"])
def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path: Path, name: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / name
    target.write_bytes(b"previous version")

    def half_write(*args: object, **kwargs: object) -> None:
        for file in tmp_path.glob(f".{name}.*/*"):
            file.write_bytes(b"half")
        (next(tmp_path.glob(f".{name}.*")) / name).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", half_write)
    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", half_write)
    with pytest.raises(DataError, match="disk full") as error:
        write_image(target, np.zeros((1, 2, 3, 4), np.float32))
    assert str(error.value).startswith(str(target))
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert target.read_bytes() == b"previous version"


def test_has_non_finite() -> None:
    assert not has_non_finite(np.zeros((1, 2, 2), np.uint8))
    assert not has_non_finite(np.ones((1, 2, 2)))
    assert has_non_finite(np.array([[[0.0, np.nan]]]))
    assert has_non_finite(np.array([[[np.inf]]], np.float32))


def test_nan_voxels_are_read_not_refused(tmp_path: Path) -> None:
    data = np.zeros((2, 2, 2), np.float32)
    data[0, 1, 0] = np.nan
    save_nifti(tmp_path / "nan.nii.gz", data, np.eye(4))
    array, _ = read_image(tmp_path / "nan.nii.gz")
    assert has_non_finite(array) and np.isnan(array[0, 0, 1, 0])


# ---------------------------------------------------------------------------------------------- real data


def first_pair(folder: Path, images: str, masks: str, pattern: str) -> tuple[Path, Path]:
    files = sorted((folder / images).glob(pattern))[:1]
    if not files:
        pytest.skip(f"real data not available under {folder}")
    return files[0], folder / masks / files[0].name


def test_real_kvasir_pair(tmp_path: Path) -> None:
    image_path, mask_path = first_pair(DATA / "kvasir-seg", "images", "masks", "*.jpg")
    image, geometry = read_image(image_path)
    mask, mask_geometry = read_mask(mask_path)
    assert image.shape[0] == 3 and image.dtype == np.uint8
    assert mask.shape == (1, *image.shape[1:]) and set(np.unique(mask)) == {0, 1}
    assert geometry.matches(mask_geometry) and geometry.spacing == (1.0, 1.0)


def test_real_dsb_pair_keeps_16_bit_instances() -> None:
    image_path, mask_path = first_pair(DATA / "dsb2018-nuclei", "images", "masks", "*.png")
    image, _ = read_image(image_path)
    mask, _ = read_mask(mask_path)
    reference = np.asarray(Image.open(mask_path))
    assert image.shape[0] == 3 and image.dtype == np.uint8
    assert mask.shape == (1, *image.shape[1:]) and mask.dtype == np.uint16
    np.testing.assert_array_equal(mask[0], reference)
    assert mask.max() > 1


def test_real_hippocampus_case() -> None:
    image_path, label_path = first_pair(DATA / "msd-task04-hippocampus", "imagesTr", "labelsTr", "*.nii.gz")
    image, geometry = read_image(image_path)
    labels, label_geometry = read_mask(label_path)
    reference = sitk.ReadImage(str(image_path))
    assert image.shape == (1, *sitk.GetArrayFromImage(reference).shape)
    assert labels.shape == image.shape and np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) <= {0, 1, 2} and labels.max() == 2
    assert geometry.matches(label_geometry)
    np.testing.assert_allclose(geometry.spacing, reference.GetSpacing()[::-1], rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(geometry.direction, reference.GetDirection(), atol=1e-6)
    assert case_id(image_path) == image_path.name[: -len(".nii.gz")]
