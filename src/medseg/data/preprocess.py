"""Preprocessing of ``[C, *spatial]`` arrays: crop to non-zero, resampling, normalisation, resizing, labels.

Each step is a small pure function on numpy arrays (2D and 3D alike); :class:`Preprocessor` chains them in
nnU-Net's order (Isensee et al., "nnU-Net", Nature Methods 2021; its ``DefaultPreprocessor``): crop to
the non-zero box, normalise intensities, resample to the target spacing, then (our addition for fixed-size
2D models) resize, and map label values last. It records what it did in a :class:`PreprocessedCase`, so
that :meth:`Preprocessor.revert` can put a prediction back on the source grid.

Resampling convention: voxel ``i`` of the output lies at index ``i * new_spacing / old_spacing`` of the
input, so the *centre of the first voxel* keeps its physical position. The origin (ITK: the physical
position of the first voxel's centre) is therefore unchanged and the output spacing is exactly the target.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

import numpy as np
import torch
from scipy import ndimage

from medseg import layers
from medseg.data.geometry import Geometry
from medseg.errors import MedsegError

Box = tuple[tuple[int, int], ...]
"""A bounding box: ``(start, stop)`` per spatial axis, in array order."""

Array = TypeVar("Array", np.ndarray, torch.Tensor)
"""A numpy array or a torch tensor (the steps that map predictions back take either)."""

ANISOTROPY_THRESHOLD = 3.0
"""nnU-Net's ``ANISO_THRESHOLD``: spacing ratio above which the low-resolution axis is resampled apart."""

NORMALIZATION_SCHEMES = ("ct", "zscore", "rgb", "none")
LABEL_INTERPOLATIONS = ("nearest", "linear_argmax")
CT_STATS_KEYS = ("mean", "std", "clip_low", "clip_high")
FOREGROUND_SAMPLES_PER_CASE = 10_000
"""Foreground voxels sampled per case for the CT intensity statistics (nnU-Net's fingerprint)."""


# --------------------------------------------------------------------------- crop to non-zero


def nonzero_box(image: np.ndarray) -> Box:
    """Bounding box of the voxels that are non-zero in any channel (the whole array if none is)."""
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, mask.shape[axis]))
    return tuple(box)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The part of ``array`` (``[C, *spatial]``) inside ``box``."""
    return array[(slice(None), *(slice(start, stop) for start, stop in box))]


def uncrop(array: Array, box: Box, full_shape: Sequence[int], fill: float = 0) -> Array:
    """Put a cropped ``[C, *spatial]`` array (numpy or torch) back into a ``fill``-ed one of spatial
    ``full_shape``."""
    shape = (array.shape[0], *(int(n) for n in full_shape))
    out = torch.full(shape, fill, dtype=array.dtype, device=array.device) if isinstance(array, torch.Tensor) \
        else np.full(shape, fill, dtype=array.dtype)
    out[(slice(None), *(slice(start, stop) for start, stop in box))] = array
    return out


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None, Box]:
    """Crop image and label to the box of voxels non-zero in any image channel (nnU-Net's cropping).

    Returns the cropped image, the cropped label (``None`` if none was given) and the box, which
    :func:`uncrop` takes to put a prediction back.
    """
    box = nonzero_box(image)
    return crop(image, box), None if label is None else crop(label, box), box


# --------------------------------------------------------------------------- geometry bookkeeping


def _itk_vector(per_array_axis: Sequence[float]) -> np.ndarray:
    """Array-order values as an ITK ``(x, y, z)`` vector (array axis ``a`` is ITK axis ``d - 1 - a``)."""
    return np.asarray(per_array_axis, dtype=float)[::-1]


def crop_geometry(geometry: Geometry, box: Box) -> Geometry:
    """The geometry of the cropped array: the origin moves to the box's first voxel."""
    start = np.array([s for s, _ in box], dtype=float)
    d = len(box)
    direction = np.asarray(geometry.direction, dtype=float).reshape(d, d)
    origin = np.asarray(geometry.origin, dtype=float) + direction @ (_itk_vector(start * geometry.spacing))
    affine = geometry.affine
    if affine is not None and affine.shape == (d + 1, d + 1):
        affine = affine.copy()
        affine[:d, d] = affine[:d, :d] @ _itk_vector(start) + affine[:d, d]
    return replace(geometry, origin=tuple(origin.tolist()), affine=affine,
                   shape=tuple(stop - start for start, stop in box))


def _resampled_geometry(geometry: Geometry, spacing: Sequence[float], shape: Sequence[int]) -> Geometry:
    """New spacing and shape; the first voxel (origin) stays; a NIfTI affine's columns are rescaled."""
    d = len(shape)
    affine = geometry.affine
    if affine is not None and affine.shape == (d + 1, d + 1):
        affine = affine.copy()
        affine[:d, :d] = affine[:d, :d] * _itk_vector(np.asarray(spacing) / np.asarray(geometry.spacing))
    return replace(geometry, spacing=tuple(float(s) for s in spacing), affine=affine,
                   shape=tuple(int(s) for s in shape))


# --------------------------------------------------------------------------- resampling


def lowres_axis(spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The axis to resample apart (nnU-Net): 3D, max/min spacing above ``threshold``, one coarsest axis."""
    spacing = np.asarray(spacing, dtype=float)
    if spacing.size < 3 or spacing.max() / spacing.min() <= threshold:
        return None
    coarsest = np.flatnonzero(spacing == spacing.max())
    return int(coarsest[0]) if coarsest.size == 1 else None


def _interpolate(channel: np.ndarray, scales: Sequence[float], shape: Sequence[int], order: int
                 ) -> np.ndarray:
    """Sample ``channel`` at indices ``i * scale`` per axis (spline ``order``, edges extended)."""
    if order == 0:
        for axis, (scale, n) in enumerate(zip(scales, shape, strict=True)):
            index = np.clip(np.rint(np.arange(n) * scale), 0, channel.shape[axis] - 1).astype(np.intp)
            channel = np.take(channel, index, axis=axis)
        return channel
    return ndimage.affine_transform(channel, np.asarray(scales, dtype=float), output_shape=tuple(shape),
                                    order=order, mode="nearest", prefilter=order > 1)


def _resample_channel(channel: np.ndarray, scales: np.ndarray, shape: tuple[int, ...], order: int,
                      separate_axis: int | None) -> np.ndarray:
    if separate_axis is None:
        return _interpolate(channel, scales, shape, order)
    in_plane = [s for a, s in enumerate(scales) if a != separate_axis]
    plane_shape = [n for a, n in enumerate(shape) if a != separate_axis]
    slices = [_interpolate(s, in_plane, plane_shape, order) for s in np.moveaxis(channel, separate_axis, 0)]
    stacked = np.moveaxis(np.stack(slices), 0, separate_axis)
    along = np.ones(len(shape))
    along[separate_axis] = scales[separate_axis]
    return _interpolate(stacked, along, shape, 0)


def resample(array: np.ndarray, geometry: Geometry, target_spacing: Sequence[float], order: int = 1, *,
             shape: Sequence[int] | None = None, anisotropy_threshold: float = ANISOTROPY_THRESHOLD
             ) -> tuple[np.ndarray, Geometry]:
    """Resample ``[C, *spatial]`` to ``target_spacing`` with spline ``order`` (0 nearest, 1 linear, 3 cubic).

    The output shape is ``round(shape * spacing / target_spacing)`` unless ``shape`` is given (used to
    return exactly onto a source grid). Strongly anisotropic 3D data (max/min spacing above
    ``anisotropy_threshold``, judged on the source spacing, else on the target) is resampled in-plane with
    ``order`` and along its low-resolution axis with nearest neighbour, as nnU-Net does.
    Returns the array (same dtype) and the new geometry (see the module docstring for the origin).
    """
    spacing = np.asarray(geometry.spacing, dtype=float)
    target = np.asarray(target_spacing, dtype=float)
    if target.shape != spacing.shape or np.any(target <= 0):
        raise MedsegError(f"target spacing {tuple(target_spacing)} does not fit spacing {tuple(spacing)}")
    if shape is None:
        shape = np.maximum(np.rint(np.asarray(array.shape[1:]) * spacing / target), 1).astype(int)
    shape = tuple(int(s) for s in shape)
    scales = target / spacing
    axis = lowres_axis(spacing, anisotropy_threshold)
    if axis is None:
        axis = lowres_axis(target, anisotropy_threshold)
    if np.allclose(scales, 1) and shape == array.shape[1:]:
        out = array.copy()
    else:
        out = np.stack([_resample_channel(c, scales, shape, order, axis) for c in array])
    return out, _resampled_geometry(geometry, target, shape)


def resample_label(label: np.ndarray, geometry: Geometry, target_spacing: Sequence[float], *,
                   mode: str = "nearest", shape: Sequence[int] | None = None,
                   anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> tuple[np.ndarray, Geometry]:
    """Resample a label map: ``nearest``, or nnU-Net's ``linear_argmax`` (each value's one-hot mask
    interpolated linearly, then the most likely value per voxel; smoother borders, no new values)."""
    if mode == "nearest":
        return resample(label, geometry, target_spacing, 0, shape=shape,
                        anisotropy_threshold=anisotropy_threshold)
    if mode != "linear_argmax":
        raise MedsegError(f"label interpolation {mode!r}: expected one of {LABEL_INTERPOLATIONS}")
    channels = []
    for channel in label:
        values = np.unique(channel)
        onehot = np.stack([channel == v for v in values]).astype(np.float32)
        probs, new_geometry = resample(onehot, geometry, target_spacing, 1, shape=shape,
                                       anisotropy_threshold=anisotropy_threshold)
        channels.append(values[np.argmax(probs, axis=0)].astype(label.dtype))
    return np.stack(channels), new_geometry


# --------------------------------------------------------------------------- normalisation


def _per_channel(value: Any, channels: int, key: str) -> np.ndarray:
    """A scalar or per-channel statistic as a ``[C, 1, ...]``-broadcastable array."""
    values = np.atleast_1d(np.asarray(value, dtype=np.float32))
    if values.size not in (1, channels):
        raise MedsegError(f"normalisation statistic {key!r}: {values.size} values for {channels} channels")
    return np.broadcast_to(values, (channels,)).astype(np.float32)


def _stat(stats: Mapping[str, Any], key: str, scheme: str) -> Any:
    if key not in stats:
        raise MedsegError(f"normalisation {scheme!r} needs the statistic {key!r} (have {sorted(stats)})")
    return stats[key]


def _shift_and_scale(image: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(image - shift) / scale`` per channel, in place on a float32 ``image``."""
    view = (-1,) + (1,) * (image.ndim - 1)
    image -= shift.reshape(view)
    image /= scale.reshape(view)
    return image


def normalize_ct(image: np.ndarray, mean: Any, std: Any, clip_low: Any, clip_high: Any) -> np.ndarray:
    """nnU-Net's CT scheme: clip to the foreground's 0.5/99.5 percentiles, then z-score with the data set's
    foreground mean and std (all from :func:`compute_ct_stats`; scalars or one value per channel)."""
    c = image.shape[0]
    view = (-1,) + (1,) * (image.ndim - 1)
    out = image.astype(np.float32)
    np.clip(out, _per_channel(clip_low, c, "clip_low").reshape(view),
            _per_channel(clip_high, c, "clip_high").reshape(view), out=out)
    return _shift_and_scale(out, _per_channel(mean, c, "mean"), np.maximum(_per_channel(std, c, "std"), 1e-8))


def normalize_zscore(image: np.ndarray, nonzero_only: bool = False) -> np.ndarray:
    """Per-image, per-channel z-score. With ``nonzero_only`` the statistics come from the voxels non-zero
    in any channel and the others stay 0 (nnU-Net's ``use_mask_for_norm`` for cropped MRI)."""
    out = image.astype(np.float32)
    mask = np.any(image != 0, axis=0) if nonzero_only else None
    for channel in out:
        values = channel if mask is None else channel[mask]
        if values.size:
            channel -= values.mean(dtype=np.float64)
            channel /= max(float(values.std(dtype=np.float64)), 1e-8)
        if mask is not None:
            channel[~mask] = 0
    return out


def normalize_rgb(image: np.ndarray, max_value: float | None = None, mean: Any = None, std: Any = None
                  ) -> np.ndarray:
    """Scale to ``[0, 1]`` by ``max_value`` (default: the integer dtype's maximum, else 255), then optionally
    subtract ``mean`` and divide by ``std`` (scalars or per channel, e.g. ImageNet's)."""
    if max_value is None:
        max_value = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 255.0
    c = image.shape[0]
    out = image.astype(np.float32)
    out *= np.float32(1.0 / max_value)
    if mean is None and std is None:
        return out
    shift = np.zeros(c, np.float32) if mean is None else _per_channel(mean, c, "mean")
    scale = np.ones(c, np.float32) if std is None else _per_channel(std, c, "std")
    return _shift_and_scale(out, shift, scale)


def normalize(image: np.ndarray, scheme: str, stats: Mapping[str, Any] | None = None) -> np.ndarray:
    """Normalise ``[C, *spatial]`` intensities with a named scheme; float32 out.

    Schemes and their ``stats`` keys: ``ct`` (``mean``, ``std``, ``clip_low``, ``clip_high``: required),
    ``zscore`` (``nonzero_only``: optional), ``rgb`` (``max_value``, ``mean``, ``std``: optional), ``none``.
    """
    stats = dict(stats or {})
    if scheme == "ct":
        return normalize_ct(image, **{key: _stat(stats, key, scheme) for key in CT_STATS_KEYS})
    if scheme == "zscore":
        return normalize_zscore(image, bool(stats.get("nonzero_only", False)))
    if scheme == "rgb":
        return normalize_rgb(image, stats.get("max_value"), stats.get("mean"), stats.get("std"))
    if scheme == "none":
        return image.astype(np.float32)
    raise MedsegError(f"normalisation scheme {scheme!r}: expected one of {', '.join(NORMALIZATION_SCHEMES)}")


def compute_ct_stats(pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                     samples_per_case: int = FOREGROUND_SAMPLES_PER_CASE, seed: int = 0
                     ) -> dict[str, list[float]]:
    """The data set's foreground intensity statistics for :func:`normalize_ct` (nnU-Net's fingerprint).

    Up to ``samples_per_case`` foreground voxels (label > 0) are drawn per ``(image, label)`` pair; the pooled
    sample gives per channel the mean, std and the 0.5 / 99.5 percentiles (``clip_low`` / ``clip_high``).
    """
    rng = np.random.default_rng(seed)
    pooled: list[np.ndarray] = []
    for image, label in pairs:
        foreground = np.any(np.asarray(label) > 0, axis=0)
        voxels = image[:, foreground]
        if voxels.shape[1] > samples_per_case:
            voxels = voxels[:, rng.choice(voxels.shape[1], samples_per_case, replace=False)]
        pooled.append(voxels.astype(np.float64))
    values = np.concatenate(pooled, axis=1) if pooled else np.empty((0, 0))
    if values.size == 0:
        raise MedsegError("ct normalisation: no foreground voxels to compute the intensity statistics from")
    return {"mean": values.mean(axis=1).tolist(), "std": values.std(axis=1).tolist(),
            "clip_low": np.percentile(values, 0.5, axis=1).tolist(),
            "clip_high": np.percentile(values, 99.5, axis=1).tolist()}


# --------------------------------------------------------------------------- resize (fixed-size 2D models)


def resize(array: Array, shape: Sequence[int], is_label: bool = False) -> Array:
    """Resize ``[C, *spatial]`` (numpy or torch) to spatial ``shape`` with :func:`medseg.layers.resize_to`
    (images: (bi/tri)linear, antialiased when shrinking a 2D image) or :func:`medseg.layers.resize_labels`
    (labels: ``nearest-exact``, no new values). The dtype is kept for labels, float32 else; the result is
    of the input's kind (a tensor stays on its device)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != array.ndim - 1:
        raise MedsegError(f"resize to {shape}: the array has {array.ndim - 1} spatial axes")
    is_tensor = isinstance(array, torch.Tensor)
    if shape == tuple(array.shape[1:]):
        if is_label:
            return array.clone() if is_tensor else array.copy()
        return array.float() if is_tensor else array.astype(np.float32)
    tensor = array.float().contiguous() if is_tensor else torch.from_numpy(np.ascontiguousarray(array,
                                                                                             dtype=np.float32))
    if is_label:
        out = layers.resize_labels(tensor[None], list(shape))[0]
        return out.to(array.dtype) if is_tensor else out.numpy().astype(array.dtype)
    out = layers.resize_to(tensor[None], list(shape), antialias=True)[0]
    return out if is_tensor else out.numpy()


# --------------------------------------------------------------------------- labels


def compact_label_dtype(values: Iterable[int]) -> np.dtype:
    """The smallest of uint8 / int16 / int32 that holds all label ``values``."""
    values = list(values) or [0]
    low, high = min(values), max(values)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise MedsegError(f"label values from {low} to {high} do not fit in int32")


def _as_label_value(value: Any, where: str) -> int:
    try:
        number = int(value)
        if isinstance(value, bool) or number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise MedsegError(f"label mapping {where}: expected an integer label value, got {value!r}") from None
    return number


def parse_label_mapping(mapping: Mapping[Any, Any]) -> tuple[str, dict[Any, Any]]:
    """Validate a config's label mapping: ``("values", {old: new})`` or ``("regions", {name: [values]})``.

    Regions (all values lists) build a multilabel array, e.g. BraTS ``{"WT": [1, 2, 4], "TC": [1, 4],
    "ET": [4]}``; otherwise every key and value must be an integer label. Errors name the key.
    """
    if not isinstance(mapping, Mapping) or not mapping:
        raise MedsegError(f"label mapping: expected a non-empty mapping, got {mapping!r}")
    if any(isinstance(v, (list, tuple)) for v in mapping.values()):
        regions = {}
        for name, values in mapping.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise MedsegError(f"label mapping {name!r}: expected a non-empty list of label values for a "
                                  f"region, got {values!r}")
            regions[str(name)] = [_as_label_value(v, repr(name)) for v in values]
        return "regions", regions
    return "values", {_as_label_value(k, repr(k)): _as_label_value(v, repr(k)) for k, v in mapping.items()}


def map_labels(label: np.ndarray, mapping: Mapping[Any, Any]) -> np.ndarray:
    """Apply a label mapping to ``[1, *spatial]``: old -> new values (others unchanged; a compact integer
    dtype), or regions -> a uint8 multilabel array ``[R, *spatial]`` in the mapping's order."""
    kind, parsed = parse_label_mapping(mapping)
    if kind == "regions":
        return np.concatenate([np.isin(label, values) for values in parsed.values()]).astype(np.uint8)
    present = np.unique(label)
    kept = [int(v) for v in present if int(v) not in parsed]
    out = label.astype(compact_label_dtype([*kept, *parsed.values()]))
    for old, new in parsed.items():
        out[label == old] = new
    return out


# --------------------------------------------------------------------------- the chain


@dataclass
class PreprocessedCase:
    """A preprocessed case and what is needed to map a prediction back to the source grid.

    Attributes:
        image: ``[C, *spatial]`` float32 after all steps.
        label: ``[1 or R, *spatial]`` integer label after all steps, or ``None``.
        geometry: the geometry of the preprocessed arrays.
        original_geometry: the source geometry (as read).
        original_shape: the source spatial shape.
        crop_box: the non-zero box in source indices (the whole image when not cropping).
        resampled_shape: the spatial shape after resampling, before resizing.
    """

    image: np.ndarray
    label: np.ndarray | None
    geometry: Geometry
    original_geometry: Geometry
    original_shape: tuple[int, ...]
    crop_box: Box
    resampled_shape: tuple[int, ...]

    @property
    def cropped_shape(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.crop_box)


def _optional_tuple(value: Any, cast: type) -> tuple | None:
    return None if value is None else tuple(cast(v) for v in value)


@dataclass
class Preprocessor:
    """The preprocessing of one configuration, as plain data (``to_dict`` / ``from_dict`` for checkpoints).

    Attributes:
        normalization: ``ct``, ``zscore``, ``rgb`` or ``none`` (see :func:`normalize`).
        norm_stats: the scheme's statistics / options (see :func:`normalize`).
        target_spacing: resample to this spacing (array order), or ``None`` to keep the source grid.
        crop_nonzero: crop to the box of non-zero voxels first (nnU-Net).
        resize_shape: resize to this spatial shape last (fixed-size 2D models), or ``None``.
        label_mapping: a mapping for :func:`map_labels` (values or regions), or ``None``.
        binarize: after the mapping, every nonzero label value becomes 1 (instance label maps -> one
            foreground class, e.g. for a semantic model followed by a watershed).
        image_order: spline order for images (1 linear, 3 cubic as nnU-Net).
        label_interpolation: ``nearest`` or ``linear_argmax`` (see :func:`resample_label`).
        anisotropy_threshold: spacing ratio that triggers separate low-resolution-axis resampling.
        coarse_channels: the last this many image channels are a coarse segmentation (a cascade's stage-1
            one-hot map, :mod:`medseg.engine.cascade`): not normalised, resampled linearly, not part of
            the non-zero box.
    """

    normalization: str = "zscore"
    norm_stats: dict[str, Any] = field(default_factory=dict)
    target_spacing: tuple[float, ...] | None = None
    crop_nonzero: bool = False
    resize_shape: tuple[int, ...] | None = None
    label_mapping: dict[Any, Any] | None = None
    binarize: bool = False
    image_order: int = 3
    label_interpolation: str = "nearest"
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD
    coarse_channels: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.coarse_channels, int) or self.coarse_channels < 0:
            raise MedsegError(f"preprocessing.coarse_channels {self.coarse_channels!r}: expected an integer "
                              ">= 0")
        if self.normalization not in NORMALIZATION_SCHEMES:
            raise MedsegError(f"preprocessing.normalization {self.normalization!r}: expected one of "
                              f"{', '.join(NORMALIZATION_SCHEMES)}")
        if self.normalization == "ct":
            for key in CT_STATS_KEYS:
                _stat(self.norm_stats, key, "ct")
        if self.label_interpolation not in LABEL_INTERPOLATIONS:
            raise MedsegError(f"preprocessing.label_interpolation {self.label_interpolation!r}: expected one "
                              f"of {', '.join(LABEL_INTERPOLATIONS)}")
        if self.image_order not in range(6):
            raise MedsegError(f"preprocessing.image_order {self.image_order!r}: expected a spline order 0-5")
        self.norm_stats = dict(self.norm_stats)
        self.target_spacing = _optional_tuple(self.target_spacing, float)
        self.resize_shape = _optional_tuple(self.resize_shape, int)
        if self.target_spacing is not None and min(self.target_spacing) <= 0:
            raise MedsegError(f"preprocessing.target_spacing {self.target_spacing}: must be positive")
        if self.resize_shape is not None and min(self.resize_shape) <= 0:
            raise MedsegError(f"preprocessing.resize_shape {self.resize_shape}: must be positive")
        if self.label_mapping is not None:
            self.label_mapping = parse_label_mapping(self.label_mapping)[1]

    def __call__(self, image: np.ndarray, label: np.ndarray | None, geometry: Geometry) -> PreprocessedCase:
        """Crop, normalise, resample, resize and map labels of one case."""
        original_shape = tuple(image.shape[1:])
        box: Box = tuple((0, n) for n in original_shape)
        coarse = None
        if self.coarse_channels:
            if image.shape[0] <= self.coarse_channels:
                raise MedsegError(f"preprocessing: {image.shape[0]} channels, expected the image channels "
                                  f"and {self.coarse_channels} coarse-segmentation channels")
            image, coarse = image[:-self.coarse_channels], image[-self.coarse_channels:]
        if self.crop_nonzero:
            image, label, box = crop_to_nonzero(image, label)
            coarse = None if coarse is None else crop(coarse, box)
        cropped = crop_geometry(geometry.with_shape(original_shape), box)
        image = normalize(image, self.normalization, self.norm_stats)
        new_geometry = cropped
        if self.target_spacing is not None:
            image, new_geometry = resample(image, cropped, self.target_spacing, self.image_order,
                                           anisotropy_threshold=self.anisotropy_threshold)
            if coarse is not None:
                coarse, _ = resample(coarse.astype(np.float32), cropped, self.target_spacing, 1,
                                     anisotropy_threshold=self.anisotropy_threshold)
            if label is not None:
                label, _ = resample_label(label, cropped, self.target_spacing, mode=self.label_interpolation,
                                          anisotropy_threshold=self.anisotropy_threshold)
        if coarse is not None:
            image = np.concatenate([image, coarse.astype(np.float32)])
        resampled_shape = tuple(image.shape[1:])
        if self.resize_shape is not None:
            image = resize(image, self.resize_shape)
            label = None if label is None else resize(label, self.resize_shape, is_label=True)
            # the spacing of the resized grid; its origin (first voxel centre) moves by half a voxel change
            factors = np.asarray(resampled_shape) / np.asarray(self.resize_shape)
            new_geometry = _resampled_geometry(new_geometry, np.asarray(new_geometry.spacing) * factors,
                                               self.resize_shape)
        if label is not None and self.label_mapping is not None:
            label = map_labels(label, self.label_mapping)
        if label is not None and self.binarize:
            label = (label != 0).astype(np.uint8)
        return PreprocessedCase(image=image.astype(np.float32, copy=False), label=label,
                                geometry=new_geometry, original_geometry=geometry,
                                original_shape=original_shape, crop_box=box, resampled_shape=resampled_shape)

    def revert(self, array: Array, case: PreprocessedCase, order: int = 1, fill: float = 0) -> Array:
        """Map a ``[K, *spatial]`` prediction (numpy or torch) on the preprocessed grid back to the source
        grid; a tensor stays a tensor (only the spline resampling to the source spacing goes through
        scipy, hence numpy).

        ``order`` 0 for label maps (nearest), 1 for probabilities or logits. Voxels outside the crop box get
        ``fill`` (for probabilities the caller fills the background channel with 1).
        """
        if self.resize_shape is not None:
            array = resize(array, case.resampled_shape, is_label=order == 0)
        if self.target_spacing is not None:
            cropped = crop_geometry(case.original_geometry.with_shape(case.original_shape), case.crop_box)
            at_target = replace(cropped, spacing=self.target_spacing, shape=case.resampled_shape)
            tensor = isinstance(array, torch.Tensor)
            source = array.cpu().numpy() if tensor else array
            resampled, _ = resample(source, at_target, cropped.spacing, order, shape=case.cropped_shape,
                                    anisotropy_threshold=self.anisotropy_threshold)
            array = torch.from_numpy(resampled).to(array.device) if tensor else resampled
        if case.cropped_shape != case.original_shape:
            array = uncrop(array, case.crop_box, case.original_shape, fill)
        return array

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON / YAML data (lists, not tuples)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("binarize", "coarse_channels"):  # left out when off: earlier caches' fingerprints stay
            if not data[key]:
                del data[key]
        for key in ("target_spacing", "resize_shape"):
            data[key] = None if data[key] is None else list(data[key])
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        """The inverse of :meth:`to_dict`; unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise MedsegError(f"preprocessing.{key}: unknown key (expected {', '.join(sorted(known))})")
        return cls(**dict(data))

    def fingerprint(self) -> str:
        """A short hash of :meth:`to_dict`, to tell whether cached outputs came from this configuration."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
