"""Postprocessing of predicted label maps (numpy/scipy, 2D and 3D): keep the largest connected
component, remove small components (by voxel count or physical volume), fill holes.

Each operation exists for one binary mask and per class of a label map:

- ``binary``: a ``[*spatial]`` 0/1 map, class 1 (a one-channel ``[1, *spatial]`` map is ``multilabel``);
- ``multiclass``: an integer ``[*spatial]`` map, classes ``1..K-1`` (0 is the background). Voxels
  removed from a class become background (nnU-Net's ``remove_all_but_largest_component``); a filled
  hole takes the class only where it was background, so a structure inside another (a tumour in an
  organ) is kept;
- ``multilabel``: a ``[K, *spatial]`` stack of 0/1 channels, each processed on its own.

Connectivity follows ``scipy.ndimage.generate_binary_structure``: 1 = face neighbours (4 in 2D, 6 in
3D), up to ``ndim`` = all neighbours (8 in 2D, 26 in 3D). Every mask is cropped to the bounding box
of its foreground before labelling, which changes no result (components and holes lie inside it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.engine.watershed import WatershedOptions, watershed_instances
from medseg.errors import MedsegError, check_choice

LABEL_MODES = ("binary", "multiclass", "multilabel")

MaskOperation = Callable[[np.ndarray], np.ndarray]


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if not 1 <= connectivity <= ndim:
        raise MedsegError(f"connectivity must be in [1, {ndim}] for {ndim}D masks, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The slices of the smallest box holding every foreground voxel (None for an empty mask)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _on_bounding_box(mask: np.ndarray, operation: MaskOperation) -> np.ndarray:
    """``operation`` applied to the foreground's bounding box of the bool ``mask`` (a new bool array)."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    box = _bounding_box(mask)
    if box is not None:
        out[box] = operation(mask[box])
    return out


def _component_sizes(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """The component label map of ``mask`` and the voxel count of each label (index 0: background)."""
    labels, _ = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    return labels, np.bincount(labels.ravel())


def keep_largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """The largest connected component of a binary mask (the first in scan order among equals)."""
    def largest(crop: np.ndarray) -> np.ndarray:
        labels, sizes = _component_sizes(crop, connectivity)
        return labels == int(np.argmax(sizes[1:])) + 1

    return _on_bounding_box(mask, largest)


def remove_small_components(mask: np.ndarray, min_voxels: int = 0, *, min_volume: float = 0.0,
                            spacing: Sequence[float] | None = None, connectivity: int = 1) -> np.ndarray:
    """A binary mask without the components smaller than ``min_voxels`` voxels or, with ``spacing`` (one
    voxel extent per axis, e.g. mm), smaller than ``min_volume`` (e.g. mm³)."""
    threshold = float(min_voxels)
    if min_volume > 0:
        if spacing is None or len(spacing) != np.ndim(mask):
            raise MedsegError(f"min_volume needs the spacing of each of the {np.ndim(mask)} axes, "
                              f"got {spacing}")
        threshold = max(threshold, min_volume / math.prod(float(s) for s in spacing))

    def large(crop: np.ndarray) -> np.ndarray:
        labels, sizes = _component_sizes(crop, connectivity)
        keep = sizes >= threshold
        keep[0] = False
        return keep[labels]

    return _on_bounding_box(mask, large)


def fill_holes(mask: np.ndarray, axis: int | None = None) -> np.ndarray:
    """A binary mask with its holes filled (background regions not connected to the border by face
    neighbours); with ``axis``, slice by slice in the planes perpendicular to that axis."""
    if axis is None:
        return _on_bounding_box(mask, ndimage.binary_fill_holes)
    if not 0 <= axis < np.ndim(mask):
        raise MedsegError(f"fill-holes axis must be in [0, {np.ndim(mask)}), got {axis}")

    def slice_wise(crop: np.ndarray) -> np.ndarray:
        moved = np.moveaxis(crop, axis, 0)
        return np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in moved]), 0, axis)

    return _on_bounding_box(mask, slice_wise)


# ----------------------------------------------------------------------------------------------------
# Per class of a label map
# ----------------------------------------------------------------------------------------------------

def _classes(labels: np.ndarray, mode: str, classes: Sequence[int] | None) -> list[int]:
    if classes is not None:
        return [int(c) for c in classes]
    if mode == "multilabel":
        return list(range(labels.shape[0]))
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise MedsegError(f"{mode} label maps must hold integers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise MedsegError("label maps must not hold negative labels")
    return list(range(1, int(labels.max()) + 1)) if labels.size else []


def apply_per_class(labels: np.ndarray, mode: str, operation: MaskOperation,
                    classes: Sequence[int] | None = None) -> np.ndarray:
    """A copy of ``labels`` with ``operation`` (bool mask -> bool mask) applied to each class mask.

    ``classes``: label values (binary/multiclass) or channel indices (multilabel); default: every
    foreground class. Multiclass: voxels leaving a class become 0, voxels joining it take it only where
    they were 0.
    """
    check_choice("label mode", mode, LABEL_MODES)
    out = np.array(labels, copy=True)
    if mode == "multilabel":
        if out.ndim < 2:
            raise MedsegError(f"multilabel maps must be [K, *spatial], got shape {out.shape}")
        for channel in _classes(out, mode, classes):
            out[channel] = operation(out[channel] != 0).astype(out.dtype)
        return out
    for value in _classes(out, mode, classes):
        mask = out == value
        if not mask.any():
            continue
        new = operation(mask)
        out[mask & ~new] = 0
        out[new & ~mask & (out == 0)] = value
    return out


@dataclass(frozen=True)
class PostprocessOptions:
    """What :func:`postprocess` does, in this order: remove small components, keep the largest component,
    fill holes, and last, with ``instances="watershed"``, split a binary foreground into an instance label
    map (:func:`medseg.engine.watershed.watershed_instances` with ``watershed_min_distance``,
    ``watershed_threshold`` and ``watershed_min_size``). ``largest_component`` / ``fill_holes``: False,
    True (every class) or a tuple of classes (label values; channel indices in multilabel mode).
    ``fill_holes_axis``: None for holes in nD, an axis for slice-wise 2D filling. ``min_component_voxels``
    / ``min_component_volume`` (physical, needs the spacing): 0 disables."""

    largest_component: bool | tuple[int, ...] = False
    fill_holes: bool | tuple[int, ...] = False
    fill_holes_axis: int | None = None
    min_component_voxels: int = 0
    min_component_volume: float = 0.0
    connectivity: int = 1
    instances: str | None = None
    watershed_min_distance: int = 3
    watershed_threshold: float = 1.0
    watershed_min_size: int = 0

    def __post_init__(self) -> None:
        if self.min_component_voxels < 0 or self.min_component_volume < 0:
            raise MedsegError("min_component_voxels and min_component_volume must be >= 0")
        if self.instances not in (None, "watershed"):
            raise MedsegError(f"postprocess instances {self.instances!r}: expected watershed or none")
        if self.instances is not None:
            self.watershed()  # checks the watershed options

    def watershed(self) -> WatershedOptions:
        """The options of the instance split (``instances="watershed"``)."""
        return WatershedOptions(self.watershed_min_distance, self.watershed_threshold,
                                self.watershed_min_size)
        if self.connectivity < 1:
            raise MedsegError(f"connectivity must be >= 1, got {self.connectivity}")


def _selected(choice: bool | tuple[int, ...]) -> tuple[bool, tuple[int, ...] | None]:
    """(enabled, classes) of an option that is a bool or a tuple of classes."""
    if isinstance(choice, bool):
        return choice, None
    return bool(choice), tuple(choice)


def postprocess(labels: np.ndarray, mode: str, options: PostprocessOptions | None = None,
                spacing: Sequence[float] | None = None) -> np.ndarray:
    """Postprocess a label map of ``mode`` (see the module docstring) as ``options`` say; returns a new
    array of the same shape and dtype (``labels`` itself is not modified), except with
    ``options.instances``: then an instance label map (uint16) of a binary ``[*spatial]`` map."""
    options = options or PostprocessOptions()
    check_choice("label mode", mode, LABEL_MODES)
    out = np.array(labels, copy=True)
    connectivity = options.connectivity
    if options.min_component_voxels or options.min_component_volume:
        def small(mask: np.ndarray) -> np.ndarray:
            return remove_small_components(mask, options.min_component_voxels,
                                           min_volume=options.min_component_volume, spacing=spacing,
                                           connectivity=connectivity)

        out = apply_per_class(out, mode, small)
    enabled, classes = _selected(options.largest_component)
    if enabled:
        out = apply_per_class(out, mode, lambda m: keep_largest_component(m, connectivity), classes)
    enabled, classes = _selected(options.fill_holes)
    if enabled:
        out = apply_per_class(out, mode, lambda m: fill_holes(m, options.fill_holes_axis), classes)
    if options.instances == "watershed":
        if mode != "binary" and not (mode == "multilabel" and out.shape[0] == 1):
            raise MedsegError(f"postprocess instances: watershed splits a binary foreground; the model is "
                              f"{mode} (train a binary model, e.g. with data.binarize_labels)")
        return watershed_instances(out if mode == "binary" else out[0], options.watershed())
    return out
