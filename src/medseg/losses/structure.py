"""Structure loss of PraNet / MSNet / M2SNet / U-Net v2: boundary-weighted BCE plus weighted IoU.

``w = 1 + λ·|avgpool_k(m) - m|`` (k = 31, stride 1, padding 15, zero padding counted, λ = 5) is large
near the object's edges; ``wBCE = Σ w·bce / Σ w`` and ``wIoU = 1 - (Σ p·m·w + 1) / (Σ (p + m)·w -
Σ p·m·w + 1)`` per sample and channel, the loss their sum averaged over the batch (specs/m2snet.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from medseg.errors import MedsegError
from medseg.losses.base import (
    SegLoss,
    Targets,
    activate,
    drop_background,
    log_probabilities,
    reduce,
    spatial_sum,
)
from medseg.losses.pixel import binary_terms
from medseg.losses.registry import register_loss


def box_mean(x: Tensor, kernel: Sequence[int]) -> Tensor:
    """Mean over a ``kernel`` box at stride 1 with zero padding counted (``avg_pool`` with
    ``padding=k//2, count_include_pad=True``), one axis at a time: O(Σ k) per voxel instead of O(Π k)."""
    spatial_dims = x.dim() - 2
    pool = F.avg_pool2d if spatial_dims == 2 else F.avg_pool3d
    for axis, k in enumerate(kernel):
        if k == 1:
            continue
        pad = [0] * (2 * spatial_dims)
        pad[2 * (spatial_dims - 1 - axis)] = pad[2 * (spatial_dims - 1 - axis) + 1] = k // 2
        window = [1] * spatial_dims
        window[axis] = k
        x = pool(F.pad(x, pad), window, stride=1)
    return x


def edge_weights(mask: Tensor, kernel_size: int | Sequence[int] = 31, edge_weight: float = 5.0) -> Tensor:
    """``1 + edge_weight · |avgpool(mask) - mask|`` with an odd ``kernel_size`` (per axis or one for all)."""
    spatial_dims = mask.dim() - 2
    if isinstance(kernel_size, int):
        kernel_size = [kernel_size] * spatial_dims
    kernel = [int(k) for k in kernel_size]
    if len(kernel) != spatial_dims or any(k < 1 or k % 2 == 0 for k in kernel):
        raise MedsegError(f"kernel_size must be odd, one value or {spatial_dims}, got {kernel_size}")
    return 1.0 + edge_weight * (box_mean(mask, kernel) - mask).abs()


@register_loss("structure")
class StructureLoss(SegLoss):
    """Weighted BCE + weighted IoU with edge weights (PraNet, Fan et al. 2020; M2SNet, Zhao et al. 2023).

    Per channel in binary / multilabel mode; one-vs-rest on the softmax probabilities in multiclass mode
    (channel 0 dropped with ``include_background=False``). In 3D the pool is cubic (``kernel_size`` per axis
    to change it).

    Args:
        kernel_size: the average pool's kernel (odd), 31 as in the papers.
        edge_weight: λ in ``1 + λ·|avgpool(m) - m|``.
    """

    def __init__(self, mode: str = "auto", *, kernel_size: int | Sequence[int] = 31, edge_weight: float = 5.0,
                 include_background: bool = True, ignore_index: int | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(mode, include_background=include_background, ignore_index=ignore_index,
                         reduction=reduction)
        self.kernel_size = kernel_size
        self.edge_weight = float(edge_weight)

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        mask = targets.onehot
        weights = targets.masked(edge_weights(mask, self.kernel_size, self.edge_weight))
        log_p, log_q = log_probabilities(logits, targets.mode)
        wbce = spatial_sum(weights * binary_terms(log_p, log_q, mask)) / spatial_sum(weights).clamp_min(1e-12)
        probs = activate(logits, targets.mode)
        inter = spatial_sum(probs * mask * weights)
        union = spatial_sum((probs + mask) * weights)
        wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
        return reduce(drop_background(wbce + wiou, targets.mode, self.include_background), self.reduction)
