"""2.5D and tri-planar input: 2D models on 3D volumes, slice by slice.

A 2D model sees the ``2k + 1`` neighbouring slices of a volume ``[C, *spatial]`` as ``C * (2k + 1)``
channels (channel-major: the slices of channel 0 first) and predicts the centre slice; beyond the first and
last slice the edge slice is repeated (replicate padding). Prediction rebuilds the volume slice by slice
and tri-planar prediction averages the probabilities of the rebuilds along the three axes
(:mod:`medseg.engine.slice_inference`), as in the tri-planar networks of Prasoon et al. (MICCAI 2013), here
with one shared 2D network trained on slices of all three orientations. Training draws random slices,
a share of them through a foreground voxel (:class:`SliceSampler`, nnU-Net's oversampling on slices).

Axes are in medseg's array order ``(z, y, x)`` (:mod:`medseg.data.geometry`): ``axial`` slices are cut
across array axis 0 (the file's last voxel axis ``k``), ``coronal`` across axis 1 (``j``), ``sagittal``
across axis 2 (``i``). ``auto`` cuts across the axis of the coarsest spacing (in-plane resolution is then
the finest), the axial axis when spacings tie. numpy and torch only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

from medseg.data.sampling import Locations, PatchSampler, copy_patch
from medseg.errors import MedsegError

SliceAxis = Literal["auto", "axial", "coronal", "sagittal", "triplanar"]
AXIS_NAMES = {"axial": 0, "coronal": 1, "sagittal": 2}
"""Array axis cut across by each plane (array order ``(z, y, x)``)."""
TRIPLANAR = (0, 1, 2)
SPACING_TIE = 1e-3
"""Relative difference under which two spacings count as equal for ``auto``."""

Array = TypeVar("Array", np.ndarray, Tensor)


def resolve_slice_axes(setting: str, spacing: Sequence[float] | None = None) -> tuple[int, ...]:
    """The array axes to cut across for ``data.slice_axis`` ``setting`` (one, or three for ``triplanar``);
    ``auto`` takes the axis of the coarsest ``spacing`` (array order), axis 0 (axial) without spacing or
    when it is among the coarsest."""
    if setting == "triplanar":
        return TRIPLANAR
    if setting in AXIS_NAMES:
        return (AXIS_NAMES[setting],)
    if setting != "auto":
        raise MedsegError(f"slice axis {setting!r}: expected auto, axial, coronal, sagittal or triplanar")
    if spacing is None:
        return (0,)
    values = np.asarray(spacing, float)
    if values.shape != (3,):
        raise MedsegError(f"slice axis auto: expected a 3D spacing, got {tuple(values.tolist())}")
    coarsest = np.flatnonzero(values >= values.max() * (1 - SPACING_TIE))
    return (int(coarsest[0]),)


def window_indices(indices: Sequence[int] | np.ndarray, k: int, extent: int) -> np.ndarray:
    """``[n, 2k + 1]`` slice indices ``i - k .. i + k`` around each centre ``i``, clipped to
    ``0 .. extent - 1`` (replicate padding)."""
    centres = np.asarray(indices, dtype=np.int64).reshape(-1, 1)
    if k < 0:
        raise MedsegError(f"slices: k must be >= 0, got {k}")
    if centres.size and (centres.min() < 0 or centres.max() >= extent):
        raise MedsegError(f"slice index out of range 0..{extent - 1}: {centres.ravel().tolist()}")
    return np.clip(centres + np.arange(-k, k + 1), 0, extent - 1)


def slice_windows(volume: Array, axis: int, k: int, indices: Sequence[int] | np.ndarray) -> Array:
    """The inputs of a 2D model for the centre slices ``indices`` of ``volume`` ``[C, *spatial]`` (3D) cut
    across array ``axis``: ``[n, C * (2k + 1), *plane]``, channel-major (``c * (2k + 1) + j`` is slice
    ``i - k + j`` of channel ``c``), edge slices repeated. numpy in, numpy out; torch in, torch out."""
    if volume.ndim != 4:
        raise MedsegError(f"2.5D slicing needs a volume [C, D, H, W], got shape {tuple(volume.shape)}")
    if axis not in TRIPLANAR:
        raise MedsegError(f"slice axis must be 0, 1 or 2, got {axis}")
    windows = window_indices(indices, k, volume.shape[axis + 1])
    n, width = windows.shape
    channels = volume.shape[0]
    if isinstance(volume, Tensor):
        taken = volume.index_select(axis + 1, torch.from_numpy(windows.ravel()).to(volume.device))
        taken = taken.movedim(axis + 1, 1)
    else:
        taken = np.moveaxis(np.take(volume, windows.ravel(), axis=axis + 1), axis + 1, 1)
    plane = tuple(taken.shape[2:])
    stacked = taken.reshape(channels, n, width, *plane)
    stacked = stacked.transpose(0, 1) if isinstance(stacked, Tensor) else stacked.swapaxes(0, 1)
    return stacked.reshape(n, channels * width, *plane)


def slice_window(volume: Array, axis: int, index: int, k: int) -> Array:
    """The ``[C * (2k + 1), *plane]`` input of the centre slice ``index`` (see :func:`slice_windows`)."""
    return slice_windows(volume, axis, k, [index])[0]


def take_slice(array: Array, axis: int, index: int) -> Array:
    """Slice ``index`` across spatial ``axis`` of ``[C, *spatial]``: ``[C, *plane]``."""
    return array[(slice(None),) * (axis + 1) + (int(index),)]


# ----------------------------------------------------------------------------------------------------
# Training: random slices, a share through foreground
# ----------------------------------------------------------------------------------------------------

class SliceSampler:
    """Training batches of 2D patches of slice windows from volumes ``[C, *spatial]``.

    Per sample an axis (uniformly among ``axes``) and a centre slice: through a random stored foreground
    voxel for the foreground share of the batch (:meth:`PatchSampler.foreground_flags`, nnU-Net's rule;
    so slices with more foreground are drawn more often), else uniform. The 2D patch of ``patch_size``
    is then placed as :class:`PatchSampler` places patches (around the foreground voxel, or uniformly),
    padded where the slice is smaller. Same ``sample_batch`` contract as :class:`PatchSampler`:
    ``(images [n, C * (2k + 1), *patch] float32, labels [n, L, *patch])``.
    """

    def __init__(self, patch_size: Sequence[int], k: int, axes: Sequence[int] = (0,),
                 foreground_fraction: float = 0.33, seed: int | None = None, *, image_pad_value: float = 0.0,
                 label_pad_value: int = 0) -> None:
        if len(tuple(patch_size)) != 2:
            raise MedsegError(f"2.5D patch size {tuple(patch_size)}: expected 2 values (a 2D patch)")
        if k < 0:
            raise MedsegError(f"slices: k must be >= 0, got {k}")
        if not axes or any(a not in TRIPLANAR for a in axes):
            raise MedsegError(f"slice axes must be among 0, 1, 2, got {tuple(axes)}")
        self.patches = PatchSampler(patch_size, foreground_fraction, seed, image_pad_value=image_pad_value,
                                    label_pad_value=label_pad_value)
        self.k, self.axes = int(k), tuple(int(a) for a in axes)

    @property
    def rng(self) -> np.random.Generator:
        return self.patches.rng

    def sample_into(self, image: np.ndarray, label: np.ndarray, locations: Locations | None,
                    foreground: bool, rng: np.random.Generator, image_out: np.ndarray,
                    label_out: np.ndarray) -> tuple[int, int]:
        """Write one sample into the padding-filled outputs; returns its ``(axis, centre slice)``."""
        if image.ndim != 4:
            raise MedsegError(f"2.5D sampling needs volumes [C, D, H, W], got shape {tuple(image.shape)}")
        axis = self.axes[int(rng.integers(len(self.axes)))]
        centre = self.patches.foreground_center(locations, rng) if foreground else None
        index = int(centre[axis]) if centre is not None else int(rng.integers(image.shape[axis + 1]))
        window = slice_window(image, axis, index, self.k)
        in_plane = None if centre is None else np.delete(centre, axis)
        start = self.patches.patch_start(window.shape[1:], rng, in_plane)
        copy_patch(window, start, image_out)
        copy_patch(take_slice(label, axis, index), start, label_out)
        return axis, index

    def sample_batch(self, cases: Sequence[tuple[np.ndarray, np.ndarray, Locations | None]],
                     rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One sample per ``(image, label, locations)``, the foreground share last in the batch."""
        rng = rng or self.rng
        n, channels = len(cases), cases[0][0].shape[0]
        patches = self.patches
        images = np.full((n, channels * (2 * self.k + 1), *patches.patch_size), patches.image_pad_value,
                         dtype=np.float32)
        dtype = np.result_type(*(label.dtype for _, label, _ in cases),
                               np.min_scalar_type(patches.label_pad_value))
        labels = np.full((n, cases[0][1].shape[0], *patches.patch_size), patches.label_pad_value, dtype=dtype)
        flags = self.patches.foreground_flags(n, rng)
        for i, ((image, label, locations), foreground) in enumerate(zip(cases, flags, strict=True)):
            self.sample_into(image, label, locations, bool(foreground), rng, images[i], labels[i])
        return images, labels
