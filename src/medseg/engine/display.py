"""The one display normaliser: any image ``[C, *spatial]`` as an 8-bit picture, for the overlays that
``medseg predict`` writes and the ones in the evaluation report (numpy only, no plotting library)."""

from __future__ import annotations

import io

import numpy as np
from scipy import ndimage

#: The intensity window of a grey picture, in percentiles of its values.
WINDOW_PERCENTILES = (1.0, 99.0)


def display_image(image: np.ndarray) -> np.ndarray:
    """A displayable uint8 picture of ``image [C, *spatial]``.

    A 2D image of three channels is RGB, returned ``[H, W, 3]``: 8-bit values as they are, others scaled
    (values up to 1 as fractions, up to 255 as they are, larger ones by their maximum). Any other image
    gives ``[*spatial]`` grey of its first channel, windowed to its 1st-99th percentiles (to its range,
    with 0 and 1 included, when those are equal).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3:
        rgb = np.moveaxis(image, 0, -1)
        if rgb.dtype == np.uint8:
            return np.ascontiguousarray(rgb)
        values = rgb.astype(np.float64)
        top = float(values.max(initial=0))
        scale = 255.0 if top <= 1 else 1.0 if top <= 255 else 255.0 / top
        return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    grey = image[0].astype(np.float64)
    low, high = np.percentile(grey, WINDOW_PERCENTILES) if grey.size else (0.0, 1.0)
    if high <= low:
        low, high = float(grey.min(initial=0)), float(grey.max(initial=1))
    scaled = (grey - low) / (high - low) if high > low else np.zeros_like(grey)
    return np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


#: Contour colours of the predicted classes in overlays (RGB), in class order.
OVERLAY_COLOURS = np.array([[255, 220, 0], [0, 200, 255], [255, 64, 64], [64, 255, 64], [255, 0, 255]],
                           dtype=np.uint8)


def overlay_png(image: np.ndarray, labels: np.ndarray) -> bytes:
    """PNG bytes of a 2D image ``[C, H, W]`` with the contour of each predicted class ``[H, W]`` (or
    ``[K, H, W]`` multilabel) drawn in colour."""
    from PIL import Image

    picture = display_image(image)
    if picture.ndim == 2:  # grey: RGB, for coloured contours
        picture = np.repeat(picture[..., None], 3, axis=-1)
    if labels.ndim == 2:
        masks = [labels == c for c in np.unique(labels) if c != 0]
    else:
        masks = [m > 0 for m in labels]
    for i, mask in enumerate(masks):
        contour = mask & ~ndimage.binary_erosion(mask)
        picture[contour] = OVERLAY_COLOURS[i % len(OVERLAY_COLOURS)]
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()
