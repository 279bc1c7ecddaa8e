"""Overlap (region) losses: soft Dice, Jaccard, Tversky, focal Tversky and generalized Dice.

Every loss is computed from three soft counts per sample and class (per class with ``batch=True``):
``I = Σ p·t``, ``P = Σ p`` and ``G = Σ t`` (``Σ p²`` and ``Σ t²`` for a squared denominator), with p the
softmax / sigmoid probabilities and ignored voxels removed. ``smooth_nr`` / ``smooth_dr`` are added to
the numerator / denominator, so empty classes give finite values and gradients: a class absent from the
target and the prediction scores ``smooth_nr / smooth_dr`` (1 with the equal defaults, a loss of 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from medseg.errors import MedsegError
from medseg.losses.base import SegLoss, Targets, activate, check_choice, drop_background, reduce, spatial_sum
from medseg.losses.registry import register_loss


class RegionLoss(SegLoss):
    """Base of the overlap losses: soft counts per sample and class, then :meth:`values`, then the reduction.

    Args:
        mode: label mode (see :mod:`medseg.losses.base`).
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        batch: sum the counts over the batch before the ratio (one value per class) instead of per sample.
        include_background: keep channel 0 in multiclass mode.
        ignore_index: target value that does not count.
        reduction: ``mean``, ``sum`` or ``none`` (``[B, C]``, or ``[C]`` with ``batch``).
    """

    squared = False

    def __init__(self, mode: str = "auto", *, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, include_background: bool = True, ignore_index: int | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(mode, include_background=include_background, ignore_index=ignore_index,
                         reduction=reduction)
        if smooth_nr < 0 or smooth_dr < 0:
            raise MedsegError(f"smooth_nr and smooth_dr must be >= 0, got {smooth_nr} and {smooth_dr}")
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = bool(batch)

    def counts(self, logits: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """``(I, P, G)`` per sample and class (per class with ``batch``)."""
        probs = drop_background(targets.masked(activate(logits, targets.mode)), targets.mode,
                                self.include_background)
        truth = drop_background(targets.onehot, targets.mode, self.include_background)
        power = 2 if self.squared else 1
        return (spatial_sum(probs * truth, self.batch), spatial_sum(probs ** power, self.batch),
                spatial_sum(truth ** power, self.batch))

    def values(self, intersection: Tensor, pred: Tensor, truth: Tensor) -> Tensor:
        """Loss values from the soft counts (subclasses implement it)."""
        raise NotImplementedError

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        return reduce(self.values(*self.counts(logits, targets)), self.reduction)


def soft_dice(intersection: Tensor, pred: Tensor, truth: Tensor, smooth_nr: float,
              smooth_dr: float) -> Tensor:
    """Soft Dice ``(2 I + s_nr) / (P + G + s_dr)`` (Milletari et al. 2016, Eq. 1 with a plain or squared
    denominator)."""
    return (2.0 * intersection + smooth_nr) / (pred + truth + smooth_dr)


class SquarableRegionLoss(RegionLoss):
    """A region loss whose P and G may be ``Σ p²`` and ``Σ t²`` (``squared=True``, V-Net's denominator)."""

    def __init__(self, mode: str = "auto", *, squared: bool = False, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, include_background: bool = True,
                 ignore_index: int | None = None, reduction: str = "mean") -> None:
        super().__init__(mode, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                         include_background=include_background, ignore_index=ignore_index,
                         reduction=reduction)
        self.squared = bool(squared)


@register_loss("dice")
class DiceLoss(SquarableRegionLoss):
    """Soft Dice loss ``1 - (2 I + s_nr) / (P + G + s_dr)`` (V-Net, Milletari et al. 2016).

    ``squared=True`` uses ``Σ p² + Σ t²`` in the denominator (V-Net's form). Equals MONAI's ``DiceLoss``
    with the same ``smooth_nr``, ``smooth_dr``, ``squared_pred``, ``batch`` and ``include_background``.
    """

    def values(self, intersection: Tensor, pred: Tensor, truth: Tensor) -> Tensor:
        return 1.0 - soft_dice(intersection, pred, truth, self.smooth_nr, self.smooth_dr)


@register_loss("jaccard", aliases=("iou",))
class JaccardLoss(SquarableRegionLoss):
    """Soft Jaccard (IoU) loss ``1 - (I + s_nr) / (P + G - I + s_dr)`` (Rahman & Wang 2016).

    MONAI's ``DiceLoss(jaccard=True)`` computes ``(2 I + s_nr) / (2 (P + G - I) + s_dr)``: ours with halved
    smooth terms. ``squared=True`` uses ``Σ p²`` and ``Σ t²`` for P and G.
    """

    def values(self, intersection: Tensor, pred: Tensor, truth: Tensor) -> Tensor:
        return 1.0 - (intersection + self.smooth_nr) / (pred + truth - intersection + self.smooth_dr)


def tversky_index(intersection: Tensor, pred: Tensor, truth: Tensor, alpha: float, beta: float,
                  smooth_nr: float, smooth_dr: float) -> Tensor:
    """Tversky index ``(I + s_nr) / (I + α FP + β FN + s_dr)``, ``FP = P - I = Σ p (1 - t)``,
    ``FN = G - I = Σ (1 - p) t`` (Salehi et al. 2017, Eq. 3)."""
    return (intersection + smooth_nr) / (
        intersection + alpha * (pred - intersection) + beta * (truth - intersection) + smooth_dr)


@register_loss("tversky")
class TverskyLoss(RegionLoss):
    """Tversky loss ``1 - TI`` (Salehi et al. 2017): α weighs false positives, β false negatives.

    α = β = 0.5 is the Dice loss, α = β = 1 the Jaccard loss; the paper's best is α = 0.3, β = 0.7 (the
    defaults). Equals MONAI's ``TverskyLoss`` with the same settings.
    """

    def __init__(self, mode: str = "auto", *, alpha: float = 0.3, beta: float = 0.7, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, include_background: bool = True,
                 ignore_index: int | None = None, reduction: str = "mean") -> None:
        super().__init__(mode, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                         include_background=include_background, ignore_index=ignore_index,
                         reduction=reduction)
        if alpha < 0 or beta < 0:
            raise MedsegError(f"alpha and beta must be >= 0, got {alpha} and {beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def values(self, intersection: Tensor, pred: Tensor, truth: Tensor) -> Tensor:
        return 1.0 - tversky_index(intersection, pred, truth, self.alpha, self.beta, self.smooth_nr,
                                   self.smooth_dr)


@register_loss("focal_tversky")
class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss ``(1 - TI)^(1/γ)`` (Abraham & Khan 2019, Eq. 4; γ in [1, 3], 4/3 in the paper).

    ``γ = 1`` is the Tversky loss. ``1 - TI`` is clamped at 1e-7 so the gradient stays finite at a perfect
    score. The paper's α = 0.7 weighs false negatives: here that is ``beta=0.7`` (the default).
    """

    def __init__(self, mode: str = "auto", *, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4.0 / 3.0,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 include_background: bool = True, ignore_index: int | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(mode, alpha=alpha, beta=beta, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                         include_background=include_background, ignore_index=ignore_index,
                         reduction=reduction)
        if gamma <= 0:
            raise MedsegError(f"gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)

    def values(self, intersection: Tensor, pred: Tensor, truth: Tensor) -> Tensor:
        return super().values(intersection, pred, truth).clamp_min(1e-7) ** (1.0 / self.gamma)


GDL_WEIGHTS = ("square", "simple", "uniform")


def _finite_class_weights(weights: Tensor) -> Tensor:
    """Replace the infinite weights of empty classes by the largest finite weight of the same sample."""
    infinite = torch.isinf(weights)
    finite = torch.where(infinite, torch.zeros_like(weights), weights)
    largest = finite.max(dim=-1, keepdim=True).values
    return torch.where(infinite, largest.expand_as(finite), finite)


@register_loss("generalized_dice", aliases=("gdl",))
class GeneralizedDiceLoss(RegionLoss):
    """Generalized Dice loss (Sudre et al. 2017, Eq. 2): ``1 - 2 Σ_c w_c I_c / Σ_c w_c (P_c + G_c)``.

    ``w_c = 1 / G_c²`` (``square``), ``1 / G_c`` (``simple``) or 1 (``uniform``); a class absent from the
    target (infinite weight) takes the largest finite weight of its sample, as in MONAI's
    ``GeneralizedDiceLoss``, which this equals with the same settings. One value per sample (per batch
    with ``batch=True``).
    """

    def __init__(self, mode: str = "auto", *, weight_type: str = "square", smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, include_background: bool = True,
                 ignore_index: int | None = None, reduction: str = "mean") -> None:
        super().__init__(mode, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                         include_background=include_background, ignore_index=ignore_index,
                         reduction=reduction)
        self.weight_type = check_choice("weight_type", weight_type, GDL_WEIGHTS)

    def class_weights(self, truth: Tensor) -> Tensor:
        """The weights ``w_c`` of the target volumes ``G`` (``[B, C]`` or ``[C]``)."""
        truth = truth.detach()
        if self.weight_type == "uniform":
            return torch.ones_like(truth)
        power = 2 if self.weight_type == "square" else 1
        return _finite_class_weights(1.0 / truth ** power)

    def values(self, intersection: Tensor, pred: Tensor, truth: Tensor) -> Tensor:
        w = self.class_weights(truth)
        numerator = 2.0 * (w * intersection).sum(-1) + self.smooth_nr
        denominator = (w * (pred + truth)).sum(-1) + self.smooth_dr
        return 1.0 - numerator / denominator
