"""2D images through Pillow: PNG, JPEG, BMP, TIFF.

Images: grey -> 1 channel, RGB -> 3, RGBA with a fully opaque alpha -> RGB, real transparency keeps 4
channels, palette images become RGB (RGBA with transparency; one channel when the palette is grey),
16-bit grey keeps ``uint16`` (16-bit RGB(A) PNGs, which Pillow cuts to 8 bits, go through SimpleITK).
Spacing is 1.0 (pixel units): a raster file's DPI is a print setting, often set on a photograph and not
on its mask (Kvasir-SEG), so it would give image and mask different spacings and make distances
inconsistent across cases. The DPI is kept in ``meta["dpi"]`` and written back when present.

Masks (:meth:`PillowFormat.read_mask`): one integer channel; palette masks keep their indices, equal RGB
channels are merged, a mask holding exactly the values {0, 255} becomes {0, 1}, and a JPEG mask (lossy,
so its edges carry compression noise) must be near-binary and is binarised at > 127. Writing a mask to
JPEG is refused by :func:`medseg.data.io.write_mask` for the same reason.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import SimpleITK as sitk
from PIL import Image

from medseg.data.formats.base import ImageFormat, ImageInfo, as_labels, library_errors, single_channel_mask
from medseg.data.formats.itk import from_sitk_image, quiet_itk, to_sitk_image
from medseg.data.geometry import DataError, Geometry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_NOISE_SHARE = 0.02  # a near-binary JPEG mask has at most this share of pixels in 33..222

PILLOW_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF"}
WRITABLE_MODES = {
    "PNG": {"L", "LA", "I;16", "RGB", "RGBA"},
    "JPEG": {"L", "RGB"},
    "BMP": {"L", "RGB", "RGBA"},
    "TIFF": {"L", "LA", "I;16", "I", "F", "RGB", "RGBA"},
}


def _load(path: Path, scaled: bool = False) -> tuple[Image.Image, tuple[int, int]]:
    """Open and decode one 2D image (the whole file is read, so truncation is found here); returns it
    with the file's ``(width, height)``. With ``scaled``, a JPEG whose mode fixes its channels is decoded
    at 1/8 size: every coefficient is still read, only the full-size reconstruction is skipped. An image
    of more than ``Image.MAX_IMAGE_PIXELS`` pixels is refused before decoding (Pillow itself only warns
    up to twice that limit): a decompression bomb, or a header that lies about the size."""
    with library_errors(path, "cannot read image"), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(path)
    with library_errors(path, "cannot read image"), image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise DataError(path, f"multi-frame image ({frames} frames); only 2D images are supported")
        size = image.size
        if scaled and image.format == "JPEG" and image.mode in MODE_CHANNELS:
            image.draft(image.mode, (1, 1))
        image.load()
    return image, size


def _file_dpi(info: dict[str, Any]) -> tuple[float, float] | None:
    """The file's ``(x, y)`` DPI when it has a valid one."""
    try:
        dpi_x, dpi_y = (float(value) for value in info.get("dpi"))
    except (TypeError, ValueError):
        return None
    return (dpi_x, dpi_y) if dpi_x > 0 and dpi_y > 0 else None


def _channels_first(pixels: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` as a writable, native-byte-order ``[C, H, W]`` array."""
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    return np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))


def _drop_opaque_alpha(array: np.ndarray) -> np.ndarray:
    """LA/RGBA whose alpha is fully opaque lose the alpha channel."""
    if array.shape[0] in (2, 4) and array.dtype in (np.uint8, np.uint16):
        if np.all(array[-1] == np.iinfo(array.dtype).max):
            return array[:-1]
    return array


def _is_16_bit_colour_png(path: Path) -> bool:
    """Whether ``path`` is an RGB(A) PNG with 16 bits per sample (Pillow would cut it to 8 bits)."""
    with path.open("rb") as file:
        head = file.read(26)
    return head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _read_16_bit_colour_png(path: Path) -> tuple[np.ndarray, Geometry]:
    """A 16-bit RGB(A) PNG read with SimpleITK, which keeps all 16 bits (after Pillow's size limit)."""
    with path.open("rb") as file:
        width, height = struct.unpack(">II", file.read(24)[16:24])
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise DataError(path, f"cannot read image (Image size ({width * height} pixels) exceeds limit of "
                              f"{limit} pixels, could be decompression bomb DOS attack.)")
    with library_errors(path, "cannot read image"), quiet_itk():
        image = sitk.ReadImage(str(path), imageIO="PNGImageIO")
    array, geometry = from_sitk_image(image, path, "png", {"mode": "RGB;16", "format": "PNG"})
    return _drop_opaque_alpha(array), geometry


def _write_16_bit_colour_png(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    with library_errors(path, "cannot write image"):
        sitk.WriteImage(to_sitk_image(array, geometry), str(path), imageIO="PNGImageIO")


def _image_pixels(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image as ``[C, H, W]`` following the module's channel rules."""
    palette = image.mode in ("P", "PA")
    if palette:
        transparent = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    array = _drop_opaque_alpha(_channels_first(np.asarray(image)))
    if palette and array.shape[0] == 3 and np.all(array[1:] == array[:1]):
        array = array[:1]
    if image.mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)  # 16-bit grey decoded as 32-bit by some Pillow paths
    return array


#: Integer modes whose channel count under :func:`_image_pixels`'s rules follows from the mode alone
#: (no palette, no alpha to test for opacity), so that :meth:`PillowFormat.inspect` needs no pixel array.
MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "I;16L": 1, "I;16B": 1, "I;16N": 1,
                 "RGB": 3, "CMYK": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}


def _binary_jpeg_mask(path: Path, array: np.ndarray) -> np.ndarray:
    """Binarise a near-binary JPEG mask (grey > 127), refusing JPEGs that hold other label values."""
    if array.shape[0] >= 3 and array.dtype == np.uint8:  # 3 x the channel mean, in integers: exact
        k, grey_k = 3, array[0].astype(np.uint16) + array[1] + array[2]
    else:  # k x the grey is the grey itself
        k, grey_k = 1, array[:3].mean(axis=0) if array.shape[0] >= 3 else array[0]
    noisy = np.count_nonzero((grey_k > 32 * k) & (grey_k < 223 * k)) / max(grey_k.size, 1)
    peak = grey_k.max(initial=0)
    if noisy > JPEG_NOISE_SHARE or 0 < peak < 128 * k:
        raise DataError(path, "JPEG mask is not a near-binary 0/255 mask; store label masks losslessly (PNG)")
    return (grey_k > 127 * k).astype(np.uint8)[None]


def _zero_255_to_binary(array: np.ndarray) -> np.ndarray:
    """A mask whose values are exactly {0, 255} (or {255}) becomes {0, 1}; other masks are unchanged."""
    if array.size == 0 or int(array.max()) != 255 or int(array.min()) < 0:
        return array
    counts = np.bincount(array.ravel().astype(np.intp, copy=False), minlength=256)
    if np.count_nonzero(counts[1:255]) == 0:
        return (array == 255).astype(np.uint8)
    return array


def _pixels_for_pillow(path: Path, array: np.ndarray, tiff: bool) -> np.ndarray:
    """``[C, H, W]`` as the ``(H, W[, C])`` array Pillow stores: uint8/uint16 kept, others narrowed."""
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        if not (tiff and array.shape[0] == 1):
            raise DataError(path, "this format stores integer pixels; got non-integer floats "
                                  "(scale or threshold the array first, or write TIFF/NIfTI)")
        array = array.astype(np.float32)
    elif array.dtype not in (np.uint8, np.uint16):
        array = _narrowed_integers(path, array, tiff)
    return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)


def _narrowed_integers(path: Path, array: np.ndarray, tiff: bool) -> np.ndarray:
    """Integer values as uint8, else uint16 (one channel), else int32 (one-channel TIFF)."""
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if 0 <= low and high <= 255:
        return array.astype(np.uint8)
    if array.shape[0] == 1 and 0 <= low and high <= 65535:
        return array.astype(np.uint16)
    if tiff and array.shape[0] == 1 and np.iinfo(np.int32).min <= low and high <= np.iinfo(np.int32).max:
        return array.astype(np.int32)
    raise DataError(path, f"values {low}..{high} do not fit the format's integer pixels")


class PillowFormat(ImageFormat):
    """PNG, JPEG, BMP and TIFF 2D images (Pillow)."""

    name: ClassVar[str] = "2D image"
    extensions: ClassVar[tuple[str, ...]] = tuple(PILLOW_FORMATS)
    lossy_extensions: ClassVar[tuple[str, ...]] = (".jpg", ".jpeg")

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        if _is_16_bit_colour_png(path):
            return _read_16_bit_colour_png(path)
        image, _ = _load(path)
        return _image_pixels(image), self._geometry(path, image)

    def inspect(self, path: Path) -> ImageInfo:
        """Decode the whole file (truncation is found; a JPEG at 1/8 scale, see :func:`_load`) but build
        a pixel array only where the channel count or NaN values depend on the pixels (palette, alpha,
        float modes)."""
        if _is_16_bit_colour_png(path):
            return super().inspect(path)
        image, size = _load(path, scaled=True)
        geometry = self._geometry(path, image, size)
        channels = MODE_CHANNELS.get(image.mode)
        if channels is None:
            return ImageInfo.of(_image_pixels(image), geometry)
        return ImageInfo(channels, (size[1], size[0]), geometry)

    def read_mask(self, path: Path) -> tuple[np.ndarray, Geometry]:
        if _is_16_bit_colour_png(path):
            return super().read_mask(path)
        image, _ = _load(path)
        geometry = self._geometry(path, image)
        if image.mode == "P":
            return _channels_first(np.asarray(image)), geometry  # palette indices are the labels
        array = _image_pixels(image)
        if path.name.lower().endswith(self.lossy_extensions):
            return _binary_jpeg_mask(path, array), geometry
        return _zero_255_to_binary(as_labels(path, single_channel_mask(path, array))), geometry

    def write(self, path: Path, array: np.ndarray, geometry: Geometry) -> None:
        pil_format = PILLOW_FORMATS[path.suffix.lower()]
        if array.ndim != 3:
            raise DataError(path, f"{pil_format} stores 2D images; got {array.ndim - 1} spatial axes")
        pixels = _pixels_for_pillow(path, array, tiff=pil_format == "TIFF")
        if pil_format == "PNG" and pixels.dtype == np.uint16 and pixels.ndim == 3:
            return _write_16_bit_colour_png(path, array, geometry)
        with library_errors(path, "cannot convert the array to an image"):
            image = Image.fromarray(pixels)
        if image.mode not in WRITABLE_MODES[pil_format]:
            raise DataError(path, f"{pil_format} cannot store {array.shape[0]}-channel {pixels.dtype} "
                                  f"images (Pillow mode {image.mode})")
        options: dict[str, Any] = {"quality": 95} if pil_format == "JPEG" else {}
        dpi = geometry.meta.get("dpi")
        if dpi is not None:
            options["dpi"] = tuple(dpi)
        with library_errors(path, "cannot write image"):
            image.save(path, format=pil_format, **options)

    @staticmethod
    def _geometry(path: Path, image: Image.Image, size: tuple[int, int] | None = None) -> Geometry:
        """Unit spacing, the mode, format and DPI; the shape of ``size`` (the file's ``(width, height)``)
        or of ``image``."""
        width, height = size or image.size
        meta: dict[str, Any] = {"mode": image.mode, "format": image.format}
        dpi = _file_dpi(image.info)
        if dpi is not None:
            meta["dpi"] = dpi
        return Geometry(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0),
                        source_format=PILLOW_FORMATS[path.suffix.lower()].lower(),
                        shape=(height, width), meta=meta)
