"""Instance targets from label maps and back.

An instance label map holds 0 for the background and one positive id per object (the DSB 2018 and
MoNuSeg convention). Detectors such as Mask R-CNN take per-object binary masks, boxes and class labels;
:func:`instance_targets_from_label_map` builds them and :func:`label_map_from_masks` paints predicted
masks back into a label map. 2D and 3D; boxes are ``(x1, y1, x2, y2)`` (3D: ``(x1, y1, z1, x2, y2, z2)``)
with ``x`` the last axis and the upper corner one past the last pixel (a one-pixel object at column 3
spans ``x1 = 3, x2 = 4``), as :mod:`medseg.ops.boxes` expects.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from medseg.errors import MedsegError

ArrayLike = np.ndarray | Tensor


def _as_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def instance_targets_from_label_map(label_map: ArrayLike, class_map: ArrayLike | None = None,
                                    min_pixels: int = 1) -> dict[str, Tensor]:
    """Per-object ``masks`` ``[N, *spatial]`` (uint8), ``boxes`` ``[N, 2d]`` (float32) and ``labels``
    ``[N]`` (int64) from an instance label map, objects in increasing id order.

    Args:
        label_map: ``[*spatial]`` integers, 0 background, one id per object (ids need not be contiguous).
        class_map: optional semantic map of the same shape; an object's label is the most frequent
            nonzero class under it (1 when none). Without it every object has label 1.
        min_pixels: objects of fewer pixels are left out (e.g. slivers that a patch crop left of an
            object; an object cut away entirely by a crop is absent from the map anyway).
    """
    ids_map = _as_numpy(label_map)
    if ids_map.ndim not in (2, 3):
        raise MedsegError(f"instance label map must be 2D or 3D, got shape {ids_map.shape}")
    if not np.issubdtype(ids_map.dtype, np.integer):
        if not np.all(np.mod(ids_map, 1) == 0):
            raise MedsegError("instance label map must hold integer ids")
        ids_map = ids_map.astype(np.int64)
    if (ids_map < 0).any():
        raise MedsegError("instance label map has negative ids")
    classes = None
    if class_map is not None:
        classes = _as_numpy(class_map).astype(np.int64)
        if classes.shape != ids_map.shape:
            raise MedsegError(f"class map shape {classes.shape} differs from the label map's {ids_map.shape}")
    d = ids_map.ndim
    ids, counts = np.unique(ids_map, return_counts=True)
    ids = ids[(ids > 0) & (counts >= max(int(min_pixels), 1))]
    masks = np.zeros((len(ids), *ids_map.shape), dtype=np.uint8)
    boxes = np.zeros((len(ids), 2 * d), dtype=np.float32)
    labels = np.ones(len(ids), dtype=np.int64)
    for i, obj in enumerate(ids):
        mask = ids_map == obj
        masks[i] = mask
        coords = np.nonzero(mask)  # per array axis; box columns are x (last axis) first
        for c in range(d):
            axis = coords[d - 1 - c]
            boxes[i, c] = axis.min()
            boxes[i, d + c] = axis.max() + 1
        if classes is not None:
            under = classes[mask]
            under = under[under > 0]
            if under.size:
                labels[i] = np.bincount(under).argmax()
    return {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(masks)}


def instance_targets_from_batch(labels: Tensor, min_pixels: int = 1) -> list[dict[str, Tensor]]:
    """Mask R-CNN targets of a batch of instance label maps ``[B, 1, *spatial]`` (or ``[B, *spatial]``):
    per image :func:`instance_targets_from_label_map` (objects below ``min_pixels`` dropped), on the
    batch's device."""
    if labels.dim() >= 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    maps = labels.detach().cpu().numpy()
    return [{key: value.to(labels.device) for key, value in
             instance_targets_from_label_map(m, min_pixels=min_pixels).items()} for m in maps]


def label_map_from_masks(masks: ArrayLike, scores: ArrayLike | None = None,
                         threshold: float = 0.5) -> np.ndarray:
    """An instance label map (int32, ids ``1..N`` in the order of ``masks``) from masks ``[N, *spatial]``.

    Masks may be boolean or probabilities (``> threshold`` is foreground). Where masks overlap, the
    pixel goes to the mask of highest score (``scores`` ``[N]``; without them, the earlier mask).
    """
    m = _as_numpy(masks)
    if m.ndim not in (3, 4):
        raise MedsegError(f"masks must be [N, H, W] or [N, D, H, W], got shape {m.shape}")
    fg = m > threshold if m.dtype != np.bool_ else m
    n = fg.shape[0]
    order = np.arange(n)
    if scores is not None:
        s = _as_numpy(scores).astype(np.float64).reshape(-1)
        if s.shape[0] != n:
            raise MedsegError(f"{n} masks but {s.shape[0]} scores")
        order = np.argsort(-s, kind="stable")
    out = np.zeros(fg.shape[1:], dtype=np.int32)
    for index in order[::-1]:  # paint the best last
        out[fg[index]] = index + 1
    return out
