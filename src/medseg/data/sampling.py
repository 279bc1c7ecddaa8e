"""Random patches with foreground oversampling (nnU-Net: Isensee et al., Nature Methods 2021).

A share of every batch is centred on a foreground voxel of a random class present in the case (from a
stored sample of each class's voxel coordinates, :func:`class_locations`), the rest is drawn uniformly.
Patches reaching past the image are padded; an image smaller than the patch is centred in it (nnU-Net).
Everything is plain numpy slicing into preallocated arrays, so it is cheap on memory-mapped caches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medseg.errors import MedsegError

LOCATIONS_PER_CLASS = 10_000
"""Voxel coordinates kept per class for foreground sampling (nnU-Net's ``num_samples``)."""

Locations = Mapping[int, np.ndarray]
"""Per class: ``[k, D]`` voxel coordinates (spatial array order). Keys are label values for a one-channel
label, channel indices for a multilabel ``[R, *spatial]`` label."""


def class_locations(label: np.ndarray, max_per_class: int = LOCATIONS_PER_CLASS,
                    rng: np.random.Generator | None = None) -> dict[int, np.ndarray]:
    """A random sample of up to ``max_per_class`` voxel coordinates of every foreground class of ``label``.

    One channel: every value > 0 is a class. Several channels (multilabel regions): channel ``r`` is class
    ``r``. Classes without voxels are left out. Coordinates are int32 ``[k, D]`` in array order.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    if label.shape[0] == 1:
        masks = {int(v): label[0] == v for v in np.unique(label) if v > 0}
    else:
        masks = {r: label[r] > 0 for r in range(label.shape[0])}
    locations = {}
    for key, mask in masks.items():
        flat = np.flatnonzero(mask)
        if flat.size == 0:
            continue
        if flat.size > max_per_class:
            flat = np.sort(rng.choice(flat, max_per_class, replace=False))
        locations[key] = np.stack(np.unravel_index(flat, mask.shape), axis=1).astype(np.int32)
    return locations


def copy_patch(array: np.ndarray, start: Sequence[int], out: np.ndarray) -> None:
    """Copy the part of ``array`` (``[C, *spatial]``) in the window ``start : start + out.shape[1:]`` into
    ``out``; the part of the window outside the array is left as it is in ``out`` (the padding)."""
    src, dst = [slice(None)], [slice(None)]
    for begin, size, extent in zip(start, out.shape[1:], array.shape[1:], strict=True):
        low, high = max(begin, 0), min(begin + size, extent)
        if high <= low:
            return
        src.append(slice(low, high))
        dst.append(slice(low - begin, high - begin))
    out[tuple(dst)] = array[tuple(src)]


class PatchSampler:
    """Draws patches of ``patch_size`` from ``[C, *spatial]`` images and labels, 2D or 3D.

    Args:
        patch_size: spatial patch shape (array order).
        foreground_fraction: share of a batch centred on foreground. The last
            ``max(round(n * f), n - round(n * (1 - f)))`` patches of a batch of ``n`` are (nnU-Net's rule,
            for its default 0.33 the last third); when that is 0 (e.g. ``n = 1``) each patch is
            foreground-centred with probability ``f``.
        seed: seed of the sampler's own generator (used when no generator is passed to a call).
        image_pad_value: value of image voxels outside the image.
        label_pad_value: value of label voxels outside the image (0, or an ignore value).
        clamp_to_image: keep foreground-centred patches inside the image where it is larger than the patch
            (nnU-Net; the foreground voxel stays inside the patch). ``False`` centres them exactly.
    """

    def __init__(self, patch_size: Sequence[int], foreground_fraction: float = 0.33, seed: int | None = None,
                 *, image_pad_value: float = 0.0, label_pad_value: int = 0, clamp_to_image: bool = True
                 ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        if not self.patch_size or min(self.patch_size) < 1:
            raise MedsegError(f"patch size {tuple(patch_size)}: expected positive sizes")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise MedsegError(f"foreground fraction {foreground_fraction}: expected a value in [0, 1]")
        self.foreground_fraction = float(foreground_fraction)
        self.image_pad_value = image_pad_value
        self.label_pad_value = label_pad_value
        self.clamp_to_image = clamp_to_image
        self.rng = np.random.default_rng(seed)

    def foreground_flags(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Which of a batch's ``n`` patches are foreground-centred (see the class docstring)."""
        f = self.foreground_fraction
        count = max(round(n * f), n - round(n * (1 - f)))
        if count == 0 and f > 0:
            return (rng or self.rng).random(n) < f
        return np.arange(n) >= n - count

    def _start_range(self, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest patch start per axis: inside the image, or centred where it is smaller."""
        shape, patch = np.asarray(shape), np.asarray(self.patch_size)
        low = np.where(shape >= patch, 0, -((patch - shape) // 2))
        high = np.where(shape >= patch, shape - patch, low)
        return low, high

    def patch_start(self, shape: Sequence[int], rng: np.random.Generator,
                    center: Sequence[int] | None = None) -> np.ndarray:
        """The start index of a patch: uniform, or centred on voxel ``center``."""
        if len(shape) != len(self.patch_size):
            raise MedsegError(f"patch size {self.patch_size} does not fit an image of spatial shape "
                              f"{tuple(shape)}")
        low, high = self._start_range(shape)
        if center is None:
            return rng.integers(low, high + 1)
        start = np.asarray(center) - np.asarray(self.patch_size) // 2
        return np.clip(start, low, high) if self.clamp_to_image else start

    def foreground_center(self, locations: Locations | None, rng: np.random.Generator) -> np.ndarray | None:
        """A random stored voxel of a random class present in the case, or ``None`` if there is none."""
        classes = [key for key, coords in (locations or {}).items() if len(coords)]
        if not classes:
            return None
        coords = locations[classes[rng.integers(len(classes))]]
        return np.asarray(coords[rng.integers(len(coords))])

    def sample_into(self, image: np.ndarray, label: np.ndarray | None, locations: Locations | None,
                    foreground: bool, rng: np.random.Generator, image_out: np.ndarray,
                    label_out: np.ndarray | None) -> np.ndarray:
        """Write one patch into the (padding-filled) outputs; returns its start index."""
        center = self.foreground_center(locations, rng) if foreground else None
        start = self.patch_start(image.shape[1:], rng, center)
        copy_patch(image, start, image_out)
        if label is not None and label_out is not None:
            copy_patch(label, start, label_out)
        return start

    def sample(self, image: np.ndarray, label: np.ndarray | None, locations: Locations | None = None,
               foreground: bool = False, rng: np.random.Generator | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """One patch ``([C, *patch] float32, [L, *patch] or None)``, foreground-centred if asked and possible.

        Without foreground in ``locations`` a foreground patch falls back to a uniform one (as nnU-Net).
        """
        images, labels = self._empty(1, image, [] if label is None else [label])
        self.sample_into(image, label, locations, foreground, rng or self.rng, images[0],
                         None if labels is None else labels[0])
        return images[0], None if labels is None else labels[0]

    def sample_batch(self, cases: Sequence[tuple[np.ndarray, np.ndarray | None, Locations | None]],
                     rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """A batch ``([n, C, *patch] float32, [n, L, *patch])``: one patch per ``(image, label, locations)``,
        the foreground share last in the batch (see :meth:`foreground_flags`)."""
        rng = rng or self.rng
        label_list = [label for _, label, _ in cases if label is not None]
        images, labels = self._empty(len(cases), cases[0][0], label_list)
        flags = self.foreground_flags(len(cases), rng)
        for i, ((image, label, locations), foreground) in enumerate(zip(cases, flags, strict=True)):
            self.sample_into(image, label, locations, bool(foreground), rng, images[i],
                             None if labels is None else labels[i])
        return images, labels

    def _empty(self, n: int, image: np.ndarray, labels: Sequence[np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Padding-filled outputs; the label dtype holds every label's values and the pad value."""
        images = np.full((n, image.shape[0], *self.patch_size), self.image_pad_value, dtype=np.float32)
        if not labels:
            return images, None
        dtype = np.result_type(*(label.dtype for label in labels), np.min_scalar_type(self.label_pad_value))
        return images, np.full((n, labels[0].shape[0], *self.patch_size), self.label_pad_value, dtype=dtype)
