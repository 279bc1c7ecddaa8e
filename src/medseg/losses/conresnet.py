"""The ConResNet loss (Zhang et al., IEEE TMI 2020, Sec. III-D, Eq. 6).

``L = Dice(seg) + BCE(seg) + BCE_w(res) + λ · (BCE_w(res x2) + BCE_w(res x4))`` with ``λ = 0.5`` (the best
of the paper's ablation over {0, 0.1, 0.5, 1}). ``BCE_w`` is BCE with the positives weighted by
``ln(N / (Σ t + 1))`` per channel (:class:`~medseg.losses.pixel.BalancedBCELoss` with ``beta="log"``). The
residual targets ``|y[s] - y[s-1]|`` (first slice zero) are built here from the segmentation targets along
``slice_axis``, with the same function the model applies to its input.

Modes (see :mod:`medseg.losses.base`):

* ``binary`` / ``multilabel`` (the paper's BraTS WT/TC/ET regions): sigmoid Dice over every channel plus BCE;
  the residual targets are the residuals of each region channel.
* ``multiclass``: softmax Dice (without the background unless ``include_background``) plus cross-entropy;
  the residual targets are the residuals of the one-hot channels, the background channel included. The
  residual heads have one output per class, and the background's residual is the slice-to-slice change of
  the union of all structures: real supervision, and leaving that head channel unsupervised would let its
  logits drift.

Given a plain Tensor (eval-mode output) or a :class:`SegOutput` without residual logits, only the
segmentation part is computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from medseg.blocks.context_residual import check_slice_axis, inter_slice_residual
from medseg.errors import MedsegError
from medseg.losses.base import SegLoss, Targets
from medseg.losses.pixel import BalancedBCELoss, CrossEntropyLoss
from medseg.losses.region import DiceLoss
from medseg.losses.registry import register_loss

RESIDUAL_KEY = "residual_logits"


def residual_targets(targets: Targets, slice_axis: int = 0) -> Targets:
    """Binary inter-slice residual targets of prepared segmentation targets (all channels, multilabel form).

    A residual voxel counts when the voxel and its predecessor along the slice axis both count.
    """
    onehot = inter_slice_residual(targets.onehot, slice_axis)
    valid = None
    if targets.valid is not None:
        valid = targets.valid * (1.0 - inter_slice_residual(targets.valid, slice_axis))
        onehot = onehot * valid
    return Targets("multilabel", onehot, valid, None)


@register_loss("conresnet", aliases=("conresnet_loss",))
class ConResNetLoss(SegLoss):
    """Dice + BCE of the segmentation plus weighted BCE of the context residual maps (ConResNet, Eq. 6).

    Args:
        mode: label mode of the segmentation logits.
        residual_weight: λ, the weight of every residual map after the first (the x2 and x4 maps).
        slice_axis: spatial axis of the slices (must equal the model's).
        smooth_nr, smooth_dr: Dice smoothing (official code: 0 and 1).
        include_background: keep channel 0 in the multiclass Dice (the residual terms use every channel).
        ignore_index: target value whose voxels do not count.
        residual_key: key of the residual logits list in the output's extras.
    """

    def __init__(self, mode: str = "auto", *, residual_weight: float = 0.5, slice_axis: int = 0,
                 smooth_nr: float = 0.0, smooth_dr: float = 1.0, include_background: bool = False,
                 ignore_index: int | None = None, residual_key: str = RESIDUAL_KEY) -> None:
        super().__init__(mode, include_background=include_background, ignore_index=ignore_index)
        if residual_weight < 0:
            raise MedsegError(f"conresnet loss option residual_weight must be >= 0, got {residual_weight}")
        self.residual_weight = float(residual_weight)
        self.slice_axis = slice_axis
        self.residual_key = residual_key
        self.dice = DiceLoss(mode, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                             include_background=include_background, ignore_index=ignore_index)
        self.ce = CrossEntropyLoss(mode, ignore_index=ignore_index)
        self.residual_bce = BalancedBCELoss("multilabel", beta="log")

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        # The official code sums the per-channel BCE; here it is averaged like every library loss.
        loss = self.dice.compute(logits, targets, extras) + self.ce.compute(logits, targets, extras)
        residuals = extras.get(self.residual_key)
        if not residuals:
            return loss
        check_slice_axis(self.slice_axis, logits.dim() - 2)
        res_targets = residual_targets(targets, self.slice_axis)
        for i, res_logits in enumerate(residuals):
            if tuple(res_logits.shape) != tuple(logits.shape):
                raise MedsegError(f"conresnet loss: residual logits {i} have shape "
                                  f"{tuple(res_logits.shape)}, expected the logits' {tuple(logits.shape)}")
            weight = 1.0 if i == 0 else self.residual_weight
            loss = loss + weight * self.residual_bce.compute(res_logits.float(), res_targets, {})
        return loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, residual_weight={self.residual_weight}, slice_axis={self.slice_axis}"
