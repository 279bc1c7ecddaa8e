"""PointRend's loss as a wrapper around any loss (Kirillov et al. 2020; detectron2 ``PointRendSemSegHead``).

``L = L_base(coarse logits up-sampled to the target, target) + weight * L_point``, where ``L_point`` is the
cross-entropy (multiclass) or binary cross-entropy (binary, multilabel) of the point logits
``extras["point_logits"] [B, K, N]`` against the target read at ``extras["point_coords"] [B, N, dims]``
by nearest-neighbour sampling (label maps stay labels), averaged over the points. ``ignore_index``
points take no part. A Tensor, or a :class:`SegOutput` without point logits (eval mode), gets the base
loss only. ``build_loss({..., "pointrend": true | {"weight": w}})`` applies it outermost (after deep
supervision), and a run with ``model.pointrend`` does so automatically.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg.blocks.point_sampling import point_sample
from medseg.errors import MedsegError
from medseg.losses.base import MODES, check_choice, resolve_mode
from medseg.outputs import SegOutput

POINT_LOGITS = "point_logits"
POINT_COORDS = "point_coords"


def point_targets(target: Tensor, coords: Tensor) -> Tensor:
    """The target ``[B, *spatial]`` or ``[B, C, *spatial]`` read at ``coords`` (nearest): ``[B, C, N]``
    (``C = 1`` for a label map), in the target's dtype."""
    dims = coords.shape[-1]
    channelled = target if target.dim() == dims + 2 else target.unsqueeze(1)
    sampled = point_sample(channelled.float(), coords.float(), mode="nearest")
    return sampled.round().to(target.dtype) if not target.is_floating_point() else sampled.to(target.dtype)


def point_loss(point_logits: Tensor, coords: Tensor, target: Tensor, mode: str = "auto",
               ignore_index: int | None = None) -> Tensor:
    """CE (multiclass) or BCE (binary, multilabel) of ``point_logits [B, K, N]`` against ``target`` at
    ``coords``; the mean over the points that count (0 when none does)."""
    mode = resolve_mode(mode, point_logits.shape[1])
    logits = point_logits.float()
    labels = point_targets(target, coords)
    if mode == "multiclass":
        if labels.shape[1] == 1:
            classes = labels[:, 0].long()
        else:  # one-hot target
            classes = labels.argmax(dim=1)
        index = -100 if ignore_index is None else int(ignore_index)
        if not (classes != index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, classes, ignore_index=index)
    truth = labels.float()
    if truth.shape[1] != logits.shape[1]:
        raise MedsegError(f"point loss: target has {truth.shape[1]} channels for {logits.shape[1]} logit "
                          f"channels ({mode})")
    valid = torch.ones_like(truth) if ignore_index is None else (truth != ignore_index).float()
    values = F.binary_cross_entropy_with_logits(logits, truth * valid, reduction="none") * valid
    return values.sum() / valid.sum().clamp_min(1.0)


class PointRendLoss(nn.Module):
    """``loss`` on the coarse logits plus ``weight`` times the point loss (see the module docstring).

    Args:
        loss: the base loss (any loss of the registry, a compound or a deep-supervision wrapper).
        weight: weight of the point loss (1, as detectron2 sums ``loss_sem_seg`` and ``loss_sem_seg_point``).
        mode: label mode (``auto``: 1 channel binary, else multiclass).
        ignore_index: target value of points that do not count.
    """

    def __init__(self, loss: nn.Module, weight: float = 1.0, mode: str = "auto",
                 ignore_index: int | None = None) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise MedsegError(f"pointrend loss weight must be a number >= 0, got {weight!r}")
        self.loss = loss
        self.weight = float(weight)
        self.mode = check_choice("mode", mode, MODES)
        self.ignore_index = ignore_index

    def forward(self, output: Tensor | SegOutput, target: Tensor, **extras: Any) -> Tensor:
        if not isinstance(output, SegOutput) or POINT_LOGITS not in output.extras:
            return self.loss(output, target, **extras)
        rest = {k: v for k, v in output.extras.items() if k not in (POINT_LOGITS, POINT_COORDS)}
        base = self.loss(SegOutput(output.logits, list(output.aux), rest), target, **extras)
        if not self.weight:
            return base
        points = point_loss(output.extras[POINT_LOGITS], output.extras[POINT_COORDS], target, self.mode,
                            self.ignore_index)
        return base + self.weight * points

    def extra_repr(self) -> str:
        return f"weight={self.weight}, mode={self.mode!r}"
