"""Voxel-wise losses: cross-entropy, weighted CE, BCE, balanced BCE and focal loss.

All take logits; log-probabilities come from ``log_softmax`` / ``logsigmoid`` (never ``log`` of a
probability), so they stay finite for saturated logits. Means are taken over the valid voxels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medseg.errors import MedsegError
from medseg.losses.base import (
    SegLoss,
    Targets,
    as_class_vector,
    channel_view,
    drop_background,
    log_probabilities,
    masked_mean,
    spatial_sum,
)
from medseg.losses.registry import register_loss

Weights = float | Sequence[float] | None
IGNORED = -100


def binary_terms(log_p: Tensor, log_q: Tensor, target: Tensor, pos: Tensor | float = 1.0,
                 neg: Tensor | float = 1.0) -> Tensor:
    """Element-wise ``-(pos · t · log p + neg · (1 - t) · log(1 - p))`` with ``log_q = log(1 - p)``."""
    return -(pos * target * log_p + neg * (1.0 - target) * log_q)


def _finish(values: Tensor, targets: Targets, reduction: str, normaliser: Tensor | None = None) -> Tensor:
    values = targets.masked(values)
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if normaliser is not None:
        return values.sum() / normaliser.clamp_min(torch.finfo(values.dtype).tiny)
    return masked_mean(values, targets)


@register_loss("ce", aliases=("cross_entropy",))
class CrossEntropyLoss(SegLoss):
    """Cross-entropy on logits, with class weights, ``ignore_index`` and label smoothing.

    Multiclass: ``-Σ_c w_c t'_c log softmax_c`` with ``t' = (1 - ε) t + ε / C``, averaged with the weights
    of the true classes as ``torch.nn.functional.cross_entropy`` does (``Σ_voxels w_y``). Binary and
    multilabel: binary cross-entropy per channel (targets smoothed to ``t (1 - ε) + ε / 2``), channel ``c``
    scaled by ``w_c``, averaged over the valid elements.

    Args:
        mode: label mode (see :mod:`medseg.losses.base`).
        class_weights: one weight per channel (or a scalar), or None.
        label_smoothing: ε in [0, 1).
        ignore_index: target value that does not count.
        reduction: ``mean``, ``sum`` or ``none`` (the voxel map).
    """

    def __init__(self, mode: str = "auto", *, class_weights: Weights = None, label_smoothing: float = 0.0,
                 ignore_index: int | None = None, reduction: str = "mean") -> None:
        super().__init__(mode, ignore_index=ignore_index, reduction=reduction)
        if not 0.0 <= label_smoothing < 1.0:
            raise MedsegError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.class_weights = class_weights
        self.label_smoothing = float(label_smoothing)

    def weights(self, logits: Tensor, targets: Targets) -> tuple[Tensor | None, Tensor | None]:
        """Class weights ``[C]`` (None: uniform) and, for sigmoid modes, negative-class weights ``[C]``."""
        return as_class_vector(self.class_weights, logits, logits.shape[1], "class_weights"), None

    def _label_cross_entropy(self, logits: Tensor, targets: Targets, weights: Tensor | None) -> Tensor:
        """Multiclass with integer labels, by ``torch.nn.functional.cross_entropy`` (fused)."""
        labels = targets.labels
        if targets.valid is not None:
            labels = labels.masked_fill(targets.valid[:, 0] == 0, IGNORED)
        values = F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORED, reduction="none",
                                 label_smoothing=self.label_smoothing).unsqueeze(1)
        if weights is None:
            return _finish(values, targets, self.reduction)
        return _finish(values, targets, self.reduction,
                       normaliser=targets.masked(weights[targets.labels].unsqueeze(1)).sum())

    def _soft_cross_entropy(self, logits: Tensor, targets: Targets, weights: Tensor | None) -> Tensor:
        """Multiclass with one-hot (or soft) targets: ``-Σ_c w_c t'_c log p_c`` over ``Σ w_c t_c``."""
        smoothed = targets.onehot * (1.0 - self.label_smoothing) + self.label_smoothing / logits.shape[1]
        w = 1.0 if weights is None else channel_view(weights, logits.dim())
        values = -(w * smoothed * torch.log_softmax(logits, 1)).sum(1, keepdim=True)
        if weights is None:
            return _finish(values, targets, self.reduction)
        return _finish(values, targets, self.reduction,
                       normaliser=targets.masked((w * targets.onehot).sum(1, keepdim=True)).sum())

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        weights, negative = self.weights(logits, targets)
        if targets.mode == "multiclass":
            if targets.labels is not None:
                return self._label_cross_entropy(logits, targets, weights)
            return self._soft_cross_entropy(logits, targets, weights)
        smoothed = targets.onehot * (1.0 - self.label_smoothing) + self.label_smoothing / 2.0
        pos = 1.0 if weights is None else channel_view(weights, logits.dim())
        neg = pos if negative is None else channel_view(negative, logits.dim())
        log_p, log_q = log_probabilities(logits, targets.mode)
        return _finish(binary_terms(log_p, log_q, smoothed, pos, neg), targets, self.reduction)


@register_loss("wce", aliases=("weighted_ce",))
class WeightedCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy weighted by inverse class frequency (given weights, or computed from the batch).

    With ``class_weights=None`` the weights come from the batch's valid voxels: multiclass
    ``w_c = N / (C · n_c)`` (0 for absent classes); binary / multilabel, per channel, positives weighted
    ``N / (2 · n_pos)`` and negatives ``N / (2 · n_neg)`` (the class-balanced BCE of Xie & Tu 2015, HED).
    With given weights it is :class:`CrossEntropyLoss`.
    """

    def weights(self, logits: Tensor, targets: Targets) -> tuple[Tensor | None, Tensor | None]:
        if self.class_weights is not None:
            return super().weights(logits, targets)
        onehot = targets.onehot.detach()
        valid = torch.ones_like(onehot[:, :1]) if targets.valid is None else targets.valid.expand_as(onehot)
        positives = spatial_sum(onehot, batch=True)
        total = spatial_sum(valid, batch=True)
        if targets.mode == "multiclass":
            total = total[0]
            w = total / (onehot.shape[1] * positives.clamp_min(1.0))
            return torch.where(positives > 0, w, torch.zeros_like(w)), None
        negatives = total - positives
        return total / (2.0 * positives.clamp_min(1.0)), total / (2.0 * negatives.clamp_min(1.0))


class _BinaryTermsLoss(SegLoss):
    """Shared body of BCE-type losses: one-vs-rest binary terms per channel (softmax probabilities in
    multiclass mode), channel 0 dropped when the background is excluded, mean over valid elements."""

    def pos_neg_weights(self, logits: Tensor, targets: Targets) -> tuple[Tensor | float, Tensor | float]:
        return 1.0, 1.0

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        log_p, log_q = log_probabilities(logits, targets.mode)
        pos, neg = self.pos_neg_weights(logits, targets)
        values = binary_terms(log_p, log_q, targets.onehot, pos, neg)
        # only multiclass drops channel 0, and there ``valid`` has one channel that broadcasts
        values = drop_background(values, targets.mode, self.include_background)
        return _finish(values, targets, self.reduction)


@register_loss("bce")
class BCELoss(_BinaryTermsLoss):
    """Binary cross-entropy with logits, per channel: ``-(t log p + (1 - t) log(1 - p))``.

    In multiclass mode the terms are one-vs-rest on the softmax probabilities.
    """


BETA_RULES = ("auto", "log")


@register_loss("balanced_bce", aliases=("bbce",))
class BalancedBCELoss(_BinaryTermsLoss):
    """BCE with the positives weighted by β: ``-(β t log p + (1 - t) log(1 - p))``.

    β > 1 penalises false negatives more (fewer missed foreground voxels), β < 1 false positives.
    ``beta="auto"`` uses ``n_neg / n_pos`` per channel over the batch; ``beta="log"`` uses
    ``ln(N / (Σ t + 1))`` with N the voxels of one sample and the sum over the batch (ConResNet's BCE_w).

    Args:
        beta: a float, ``"auto"`` or ``"log"``.
    """

    def __init__(self, mode: str = "auto", *, beta: float | str = 2.0, include_background: bool = True,
                 ignore_index: int | None = None, reduction: str = "mean") -> None:
        super().__init__(mode, include_background=include_background, ignore_index=ignore_index,
                         reduction=reduction)
        if isinstance(beta, str) and beta not in BETA_RULES:
            raise MedsegError(f"beta must be a number or one of {', '.join(BETA_RULES)}, got {beta!r}")
        if not isinstance(beta, str) and beta < 0:
            raise MedsegError(f"beta must be >= 0, got {beta}")
        self.beta = beta

    def pos_neg_weights(self, logits: Tensor, targets: Targets) -> tuple[Tensor | float, Tensor | float]:
        if not isinstance(self.beta, str):
            return float(self.beta), 1.0
        onehot = targets.onehot.detach()
        positives = spatial_sum(onehot, batch=True)
        if self.beta == "log":
            voxels = float(onehot[0, 0].numel())
            return channel_view(torch.log(voxels / (positives + 1.0)), logits.dim()), 1.0
        valid = torch.ones_like(onehot) if targets.valid is None else targets.valid.expand_as(onehot)
        negatives = spatial_sum(valid, batch=True) - positives
        return channel_view(negatives / positives.clamp_min(1.0), logits.dim()), 1.0


@register_loss("focal")
class FocalLoss(SegLoss):
    """Focal loss (Lin et al. 2017, Eq. 5): ``-α_t (1 - p_t)^γ log p_t``.

    Multiclass: summed over the classes of each voxel (the true class only, with one-hot targets), a
    scalar α gives ``1 - α`` to the background and ``α`` to the other classes, a sequence one α per class;
    averaged over voxels (MONAI averages over voxels and classes: its value is ours / C).
    Binary / multilabel: per element, ``α_t = α`` for positives and ``1 - α`` for negatives; averaged
    over elements (as MONAI). ``γ = 0`` and ``α = None`` give (B)CE.

    Args:
        gamma: focusing parameter γ >= 0.
        alpha: None, a scalar in [0, 1] or one value per class.
    """

    def __init__(self, mode: str = "auto", *, gamma: float = 2.0, alpha: Weights = None,
                 include_background: bool = True, ignore_index: int | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(mode, include_background=include_background, ignore_index=ignore_index,
                         reduction=reduction)
        if gamma < 0:
            raise MedsegError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.alpha = alpha

    def _alpha(self, logits: Tensor, mode: str) -> Tensor | None:
        channels = logits.shape[1]
        if self.alpha is None:
            return None
        if mode == "multiclass" and isinstance(self.alpha, (int, float)):
            values = [1.0 - float(self.alpha)] + [float(self.alpha)] * (channels - 1)
            return as_class_vector(values, logits, channels, "alpha")
        return as_class_vector(self.alpha, logits, channels, "alpha")

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        log_p, log_q = log_probabilities(logits, targets.mode)
        alpha = self._alpha(logits, targets.mode)
        a = 1.0 if alpha is None else channel_view(alpha, logits.dim())
        pos = a * torch.exp(self.gamma * log_q)
        if targets.mode == "multiclass":
            values = drop_background(binary_terms(log_p, log_q, targets.onehot, pos, 0.0), targets.mode,
                                     self.include_background).sum(1, keepdim=True)
        else:
            neg = (1.0 - a) if alpha is not None else 1.0
            values = binary_terms(log_p, log_q, targets.onehot, pos, neg * torch.exp(self.gamma * log_p))
        return _finish(values, targets, self.reduction)
