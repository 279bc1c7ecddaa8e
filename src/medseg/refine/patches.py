"""Boundary patches of a coarse mask and the reassembly of refined patches (BPR, Tang et al. 2021, Sec. 3.1
and 3.3; the official ``tools/split_patches.py`` and ``tools/merge_patches.py`` of tinyalpha/BPR).

- Boundary (:func:`boundary_score`): the binary mask correlated with an all-ones 3x3 (3x3x3) kernel with
  zero padding gives ``s``; the score is ``min(|s - 9|, |s|) / 4.5`` (``27`` and ``13.5`` in 3D), non-zero
  exactly on the pixels with both foreground and background in their neighbourhood.
- Patches (:func:`boundary_patches`): every boundary pixel proposes a square (cubic) box of the patch size
  centred on it (start ``centre - size // 2``); greedy NMS by IoU with the boundary scores as scores (as
  the official code: 0.25 to build training data, 0.55 at inference), then boxes crossing the border are
  shifted inside (duplicates made by the shift are dropped). An image smaller than the patch along an axis
  gets patches of the image's extent there.
- Reassembly (:func:`refine_mask`): the refined foreground probabilities of overlapping patches are
  averaged; pixels covered by any patch become ``mean > 0.5``, the others keep the coarse mask.
- Label maps (:func:`refine_label_map`, semantic classes or instances): each label is refined in turn as a
  binary mask within its own patches. Conflicts are resolved without overlaps: a pixel goes to the label
  whose probability there is highest among those above 0.5 (a label's probability is its mean refined
  probability where its patches cover the pixel and its coarse indicator, 0 or 1, elsewhere); ties go to
  the pixel's coarse label, else to the lowest label; no label above 0.5 gives background (0). When the
  refiner returns the coarse patches, the result is the coarse map.

Patches are described by their ``starts`` ``[N, d]`` (array order, integer voxel indices) and one
``shape``; the refiner sees only those and the mask patches, so any model (or a test stub) can serve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from medseg.errors import MedsegError
from medseg.ops.boxes import nms

TRAINING_IOU = 0.25
"""NMS IoU threshold of the official training-data extraction (``split_patches.py --iou-thresh``)."""
INFERENCE_IOU = 0.55
"""NMS IoU threshold of the paper's inference on Cityscapes (denser patches)."""
DEFAULT_PATCH_SIZE = 64

PatchRefineFn = Callable[[np.ndarray, tuple[int, ...], np.ndarray], np.ndarray]
"""``(starts [N, d], shape, mask_patches [N, *shape] bool) -> foreground probabilities [N, *shape]``."""


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3) or mask.size == 0:
        raise MedsegError(f"BPR needs a non-empty 2D or 3D mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _nonzero_window(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of the mask's non-zero voxels grown by ``margin`` (clipped), or None if empty."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n))
                 for s, n in zip(found[0], mask.shape, strict=True))


def boundary_score(mask: np.ndarray) -> np.ndarray:
    """BPR's float boundary map: ``min(|s - k|, |s|) / (k / 2)`` with ``s`` the 3^d-neighbourhood sum (zero
    padding) and ``k = 3^d``; float32, the mask's shape, zero away from the boundary."""
    mask = _check_mask(mask)
    score = np.zeros(mask.shape, np.float32)
    window = _nonzero_window(mask, 1)
    if window is None:
        return score
    k = 3**mask.ndim
    s = ndimage.correlate(mask[window].astype(np.int16), np.ones((3,) * mask.ndim, np.int16), mode="constant")
    score[window] = np.minimum(np.abs(s - k), np.abs(s)) / np.float32(k / 2)
    return score


def patch_shape(spatial_shape: Sequence[int], patch_size: int | Sequence[int]) -> tuple[int, ...]:
    """The patch extent per axis: ``patch_size`` (one value or one per axis), at most the image's extent."""
    if np.isscalar(patch_size):
        sizes = [int(patch_size)] * len(spatial_shape)
    else:
        sizes = [int(p) for p in patch_size]
    if len(sizes) != len(spatial_shape) or min(sizes) < 1:
        raise MedsegError(f"patch size {patch_size!r} does not fit a {len(spatial_shape)}D image")
    return tuple(min(p, int(n)) for p, n in zip(sizes, spatial_shape, strict=True))


def boundary_patches(mask: np.ndarray, patch_size: int | Sequence[int] = DEFAULT_PATCH_SIZE,
                     iou_threshold: float = INFERENCE_IOU) -> np.ndarray:
    """The starts ``[N, d]`` (int64, array order) of the boundary patches of a binary mask, in NMS order
    (highest boundary score first); every patch lies inside the image (see the module docstring)."""
    mask = _check_mask(mask)
    shape = np.asarray(patch_shape(mask.shape, patch_size))
    score = boundary_score(mask)
    centres = np.argwhere(score > 0)
    if len(centres) == 0:
        return np.zeros((0, mask.ndim), np.int64)
    starts = centres - shape // 2
    corners = np.concatenate([starts[:, ::-1], (starts + shape)[:, ::-1]], axis=1)  # x first, as ops wants
    keep = nms(torch.from_numpy(corners.astype(np.float32)), torch.from_numpy(score[tuple(centres.T)]),
               iou_threshold).numpy()
    starts = np.clip(starts[keep], 0, np.asarray(mask.shape) - shape)
    _, first = np.unique(starts, axis=0, return_index=True)
    return starts[np.sort(first)].astype(np.int64)


def _window(start: np.ndarray, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, shape, strict=True))


def crop_patches(array: np.ndarray, starts: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The patches ``[N, C, *shape]`` of ``array [C, *spatial]`` at ``starts``."""
    out = np.empty((len(starts), array.shape[0], *shape), dtype=array.dtype)
    for i, start in enumerate(starts):
        out[i] = array[(slice(None), *_window(start, shape))]
    return out


def mean_patch_probabilities(probabilities: np.ndarray, starts: np.ndarray, spatial_shape: Sequence[int]
                             ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Average overlapping patch probabilities: ``(window, mean, covered)`` with ``window`` the slices of
    the smallest box holding every patch, ``mean`` the average there (0 where no patch) and ``covered``
    whether any patch covers a voxel."""
    shape = probabilities.shape[1:]
    low = starts.min(axis=0)
    high = (starts + np.asarray(shape)).max(axis=0)
    if np.any(low < 0) or np.any(high > np.asarray(spatial_shape)):
        raise MedsegError(f"patches reach outside the image of shape {tuple(spatial_shape)}")
    total = np.zeros(tuple(high - low), np.float32)
    count = np.zeros(tuple(high - low), np.int32)
    for probability, start in zip(probabilities, starts, strict=True):
        window = _window(start - low, shape)
        total[window] += probability
        count[window] += 1
    covered = count > 0
    total[covered] /= count[covered]
    return _window(low, high - low), total, covered


def _refined_probabilities(mask: np.ndarray, refine_fn: PatchRefineFn, patch_size: int | Sequence[int],
                           iou_threshold: float) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
    """The mean refined probabilities of a binary mask's boundary patches, or None without a boundary."""
    starts = boundary_patches(mask, patch_size, iou_threshold)
    if len(starts) == 0:
        return None
    shape = patch_shape(mask.shape, patch_size)
    probabilities = _run_refiner(refine_fn, starts, shape, crop_patches(mask[None], starts, shape)[:, 0])
    return mean_patch_probabilities(probabilities, starts, mask.shape)


def refine_mask(mask: np.ndarray, refine_fn: PatchRefineFn,
                patch_size: int | Sequence[int] = DEFAULT_PATCH_SIZE,
                iou_threshold: float = INFERENCE_IOU) -> np.ndarray:
    """Refine a binary mask: boundary patches -> ``refine_fn`` -> averaged probabilities > 0.5 where any
    patch covers a voxel, the coarse mask elsewhere. Returns a bool mask of the same shape."""
    mask = _check_mask(mask)
    refined = mask.copy()
    result = _refined_probabilities(mask, refine_fn, patch_size, iou_threshold)
    if result is not None:
        window, mean, covered = result
        refined[window][covered] = mean[covered] > 0.5
    return refined


def _run_refiner(refine_fn: PatchRefineFn, starts: np.ndarray, shape: tuple[int, ...], masks: np.ndarray
                 ) -> np.ndarray:
    probabilities = np.asarray(refine_fn(starts, shape, masks), dtype=np.float32)
    if probabilities.shape != (len(starts), *shape):
        raise MedsegError(f"the refiner returned shape {probabilities.shape} for {len(starts)} patches of "
                          f"{shape}")
    return probabilities


def _write_label(out: np.ndarray, best: np.ndarray, binary: np.ndarray,
                 result: tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None, value: int) -> None:
    """Write one refined label into ``out`` by the conflict rule (``best``: the winning probabilities)."""
    region = _nonzero_window(binary, 0)
    if result is not None:  # the label's bounding box joined with its patches' window
        region = tuple(slice(min(a.start, b.start), max(a.stop, b.stop))
                       for a, b in zip(region, result[0], strict=True))
    probability = binary[region].astype(np.float32)
    if result is not None:
        window, mean, covered = result
        inner = tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(window, region, strict=True))
        probability[inner][covered] = mean[covered]
    best_here, out_here, own = best[region], out[region], binary[region]
    take = (probability > best_here) | ((probability == best_here) & (probability > 0.5) & own)
    out_here[take] = value
    best_here[take] = probability[take]


def refine_label_map(labels: np.ndarray, refine_fn: PatchRefineFn,
                     patch_size: int | Sequence[int] = DEFAULT_PATCH_SIZE,
                     iou_threshold: float = INFERENCE_IOU, patches_per_call: int = 512) -> np.ndarray:
    """Refine every non-zero label of a semantic or instance label map in turn (each as a binary mask in
    its own patches) and write them back without overlaps by the rule of the module docstring.

    The patches of consecutive labels are given to ``refine_fn`` together, about ``patches_per_call`` at
    a time (many small instances make few network batches); labels are still written in ascending order.
    Returns a label map of the input's shape and dtype.
    """
    labels = np.asarray(labels)
    _check_mask(labels)
    shape = patch_shape(labels.shape, patch_size)
    out = np.zeros_like(labels)
    best = np.full(labels.shape, 0.5, np.float32)
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (label, starts, mask patches)

    def flush() -> None:
        with_patches = [p for p in pending if len(p[1])]
        probabilities = _run_refiner(refine_fn, np.concatenate([p[1] for p in with_patches]), shape,
                                     np.concatenate([p[2] for p in with_patches])) if with_patches else None
        offset = 0
        for value, starts, _ in pending:
            result = None
            if len(starts):
                result = mean_patch_probabilities(probabilities[offset:offset + len(starts)], starts,
                                                  labels.shape)
                offset += len(starts)
            _write_label(out, best, labels == value, result, value)
        pending.clear()

    total = 0
    for value in np.unique(labels[labels != 0]).tolist():
        binary = labels == value
        starts = boundary_patches(binary, patch_size, iou_threshold)
        pending.append((value, starts, crop_patches(binary[None], starts, shape)[:, 0]))
        total += len(starts)
        if total >= patches_per_call:
            flush()
            total = 0
    flush()
    return out
