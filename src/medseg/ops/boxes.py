"""Box utilities of two-stage detectors: areas, IoU, NMS, box coding, clipping and mask pasting.

Boxes are ``[N, 2d]`` tensors of corners ``(x1, y1, x2, y2)`` in 2D and ``(x1, y1, z1, x2, y2, z2)`` in
3D, with ``x`` the last (width) axis of the image, in continuous pixel coordinates (a box covering pixel
columns 0..9 is ``x1 = 0, x2 = 10``). The numbers follow torchvision's ``ops/boxes.py`` and
``models/detection/_utils.py`` (Mask R-CNN, He et al. 2017), so that its weight files behave the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medseg.errors import MedsegError

_NMS_BLOCK = 512
BBOX_CLAMP = math.log(1000.0 / 16)
"""Largest log-size delta applied in :meth:`BoxCoder.decode` (torchvision's ``bbox_xform_clip``)."""


def _ndim(boxes: Tensor) -> int:
    if boxes.dim() != 2 or boxes.shape[1] not in (4, 6):
        raise MedsegError(f"boxes must be [N, 4] or [N, 6] corners, got shape {tuple(boxes.shape)}")
    return boxes.shape[1] // 2


def box_area(boxes: Tensor) -> Tensor:
    """Area (volume in 3D) of each box, ``[N]``."""
    d = _ndim(boxes)
    return (boxes[:, d:] - boxes[:, :d]).prod(dim=1)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union ``[N, M]`` (2D or 3D boxes)."""
    d = _ndim(boxes1)
    if _ndim(boxes2) != d:
        raise MedsegError("box_iou: both box sets need the same dimensionality")
    low = torch.max(boxes1[:, None, :d], boxes2[None, :, :d])
    high = torch.min(boxes1[:, None, d:], boxes2[None, :, d:])
    inter = (high - low).clamp(min=0).prod(dim=2)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter / union


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, by decreasing score.

    The highest-scoring remaining box is kept and every box overlapping it with IoU > ``iou_threshold``
    is dropped, until none remain. Equal scores are visited in index order (a stable sort), so the
    result is deterministic. IoUs are computed in blocks of rows (memory linear in N).
    """
    _ndim(boxes)
    if boxes.shape[0] != scores.shape[0]:
        raise MedsegError(f"nms: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    sorted_boxes = boxes.detach()[order].to("cpu", torch.float32).numpy()
    d = sorted_boxes.shape[1] // 2
    low, high = sorted_boxes[:, :d], sorted_boxes[:, d:]
    areas = (high - low).prod(axis=1)
    n = len(sorted_boxes)
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for block in range(0, n, _NMS_BLOCK):
        # IoU of the block's still-unsuppressed rows against all later boxes at once
        rows = block + np.flatnonzero(~suppressed[block:block + _NMS_BLOCK])
        inter = np.ones((len(rows), n - block), dtype=np.float32)
        for c in range(d):
            inter *= (np.minimum(high[rows, None, c], high[None, block:, c]) -
                      np.maximum(low[rows, None, c], low[None, block:, c])).clip(min=0)
        over = inter / (areas[rows, None] + areas[None, block:] - inter) > iou_threshold
        for r, i in enumerate(rows.tolist()):
            if not suppressed[i]:
                keep.append(i)
                suppressed[block:] |= over[r]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS done independently per group (class or level) in one pass: each group's boxes are shifted
    by ``group * (max coordinate + 1)`` so boxes of different groups never overlap (torchvision's
    coordinate-offset trick). Returns kept indices by decreasing score. Above 1000 boxes the groups
    are run one by one instead (the same result, less work), as torchvision does on the CPU."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if boxes.shape[0] > 1000:
        kept = [idx[nms(boxes[idx], scores[idx], iou_threshold)]
                for idx in (torch.where(groups == g)[0] for g in torch.unique(groups))]
        keep = torch.cat(kept)
        return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    offsets = groups.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def clip_boxes_to_image(boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Clamp boxes into an image of spatial ``size`` (``(H, W)`` or ``(D, H, W)``)."""
    d = _ndim(boxes)
    extents = list(size)[::-1]  # x is the last axis
    if len(extents) != d:
        raise MedsegError(f"clip_boxes_to_image: {d}D boxes but image size {list(size)}")
    columns = [boxes[:, i].clamp(0, extents[i % d]) for i in range(2 * d)]
    return torch.stack(columns, dim=1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose every side is at least ``min_size``."""
    d = _ndim(boxes)
    sides = boxes[:, d:] - boxes[:, :d]
    return torch.where((sides >= min_size).all(dim=1))[0]


class BoxCoder:
    """Encodes boxes as deltas ``(dx, dy, dw, dh)`` relative to reference boxes and decodes them.

    ``dx = wx * (gx - px) / pw``, ``dw = ww * log(gw / pw)`` with centres ``x1 + w / 2`` (Girshick et
    al. 2014, App. C); decoding clamps ``dw, dh`` at ``log(1000 / 16)``. The RPN uses weights
    ``(1, 1, 1, 1)``, the box head ``(10, 10, 5, 5)``. 2D boxes.
    """

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0), clamp: float = BBOX_CLAMP) -> None:
        if len(weights) != 4:
            raise MedsegError(f"BoxCoder needs 4 weights (wx, wy, ww, wh), got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = clamp

    def encode(self, targets: Tensor, references: Tensor) -> Tensor:
        """Deltas ``[N, 4]`` that move ``references`` onto ``targets`` (both ``[N, 4]``)."""
        wx, wy, ww, wh = self.weights
        pw = references[:, 2] - references[:, 0]
        ph = references[:, 3] - references[:, 1]
        px = references[:, 0] + 0.5 * pw
        py = references[:, 1] + 0.5 * ph
        gw = targets[:, 2] - targets[:, 0]
        gh = targets[:, 3] - targets[:, 1]
        gx = targets[:, 0] + 0.5 * gw
        gy = targets[:, 1] + 0.5 * gh
        return torch.stack([wx * (gx - px) / pw, wy * (gy - py) / ph,
                            ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=1)

    def decode(self, deltas: Tensor, references: Tensor) -> Tensor:
        """Boxes from ``deltas`` ``[N, 4k]`` (k boxes per reference, e.g. one per class) and
        ``references`` ``[N, 4]``; returns ``[N, 4k]``."""
        references = references.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = references[:, 2:3] - references[:, 0:1]
        heights = references[:, 3:4] - references[:, 1:2]
        cx = references[:, 0:1] + 0.5 * widths
        cy = references[:, 1:2] + 0.5 * heights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.clamp)
        pcx = dx * widths + cx
        pcy = dy * heights + cy
        pw = torch.exp(dw) * widths
        ph = torch.exp(dh) * heights
        boxes = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=2)
        return boxes.flatten(1)


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)


def paste_masks_in_image(masks: Tensor, boxes: Tensor, size: Sequence[int], padding: int = 1) -> Tensor:
    """Paste fixed-size box masks ``[N, M, M]`` (probabilities) into images of ``size`` ``(H, W)``.

    As torchvision's ``paste_masks_in_image``: each mask is padded by ``padding`` zero pixels and its box
    grown by ``(M + 2 padding) / M`` (so the mask's border fades out instead of being cut), the box is
    rounded down to integer pixels, the mask resized bilinearly to the box's ``w + 1`` by ``h + 1``
    pixels and written into the image where it lies inside. Returns ``[N, H, W]``.
    """
    height, width = int(size[0]), int(size[1])
    out = masks.new_zeros((masks.shape[0], height, width))
    if masks.shape[0] == 0:
        return out
    side = masks.shape[-1]
    scale = (side + 2 * padding) / side
    padded = F.pad(masks, (padding,) * 4)
    int_boxes = _expand_boxes(boxes, scale).to(torch.int64).tolist()
    for i, (x0, y0, x1, y1) in enumerate(int_boxes):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear",
                                align_corners=False)[0, 0]
        ix0, ix1 = max(x0, 0), min(x1 + 1, width)
        iy0, iy1 = max(y0, 0), min(y1 + 1, height)
        if ix1 > ix0 and iy1 > iy0:
            out[i, iy0:iy1, ix0:ix1] = resized[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    return out
