"""Losses made of terms: Dice + CE (nnU-Net's default), combo, exponential logarithmic, and a weighted sum
of any registered losses built from a config (:func:`build_loss`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medseg.errors import MedsegError
from medseg.losses.base import (
    MODES,
    SegLoss,
    Targets,
    as_class_vector,
    channel_view,
    check_choice,
    check_keys,
    drop_background,
    log_probabilities,
    masked_mean,
    spatial_sum,
)
from medseg.losses.pixel import CrossEntropyLoss, binary_terms
from medseg.losses.region import DiceLoss, RegionLoss, soft_dice
from medseg.losses.registry import accepts_option, create_loss, register_loss

POWER_EPS = 1e-7


@register_loss("dice_ce")
class DiceCELoss(SegLoss):
    """``λ_dice · soft Dice + λ_ce · CE`` (nnU-Net's default loss; the training default for new data).

    Multiclass: softmax Dice without the background (nnU-Net's ``do_bg=False``; ``include_background``
    changes it) plus cross-entropy over all classes. Binary / multilabel: sigmoid Dice over every channel
    plus BCE (nnU-Net's region-based Dice + BCE). Equals MONAI's ``DiceCELoss`` with the same settings.

    Args:
        lambda_dice, lambda_ce: term weights.
        squared, smooth_nr, smooth_dr, batch, include_background: Dice options (:class:`DiceLoss`).
        class_weights, label_smoothing: CE options (:class:`CrossEntropyLoss`).
        ignore_index: target value that does not count (both terms).
    """

    def __init__(self, mode: str = "auto", *, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 squared: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 include_background: bool = False, class_weights: float | Sequence[float] | None = None,
                 label_smoothing: float = 0.0, ignore_index: int | None = None) -> None:
        super().__init__(mode, include_background=include_background, ignore_index=ignore_index)
        if lambda_dice < 0 or lambda_ce < 0:
            raise MedsegError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice} and {lambda_ce}")
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.dice = DiceLoss(mode, squared=squared, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                             include_background=include_background, ignore_index=ignore_index)
        self.ce = CrossEntropyLoss(mode, class_weights=class_weights, label_smoothing=label_smoothing,
                                   ignore_index=ignore_index)

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        return (self.lambda_dice * self.dice.compute(logits, targets, extras)
                + self.lambda_ce * self.ce.compute(logits, targets, extras))


class _DiceTermLoss(RegionLoss):
    """A region loss whose Dice term uses one smooth value ``smooth`` on both sides."""

    def __init__(self, mode: str = "auto", *, smooth: float = 1.0, batch: bool = False,
                 include_background: bool = True, ignore_index: int | None = None) -> None:
        super().__init__(mode, smooth_nr=smooth, smooth_dr=smooth, batch=batch,
                         include_background=include_background, ignore_index=ignore_index)

    def dice(self, logits: Tensor, targets: Targets) -> Tensor:
        """Soft Dice per sample and class (per class with ``batch``)."""
        return soft_dice(*self.counts(logits, targets), self.smooth_nr, self.smooth_dr)


@register_loss("combo")
class ComboLoss(_DiceTermLoss):
    """Combo loss (Taghanaki et al. 2019, Eq. 3): ``α · L_wce - (1 - α) · Dice``.

    ``L_wce = -mean[β t ln p + (1 - β)(1 - t) ln(1 - p)]`` over elements (β > 0.5 penalises false negatives
    more, β < 0.5 false positives); Dice is the soft Dice with ``smooth`` (1 as in the official code)
    averaged over samples and classes (the paper sums over classes). Multiclass: one-vs-rest terms on the
    softmax probabilities. The value lies in ``[-(1 - α), +∞)``.
    """

    def __init__(self, mode: str = "auto", *, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0,
                 batch: bool = False, include_background: bool = True,
                 ignore_index: int | None = None) -> None:
        super().__init__(mode, smooth=smooth, batch=batch, include_background=include_background,
                         ignore_index=ignore_index)
        if not (0.0 <= alpha <= 1.0 and 0.0 <= beta <= 1.0):
            raise MedsegError(f"alpha and beta must lie in [0, 1], got {alpha} and {beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        log_p, log_q = log_probabilities(logits, targets.mode)
        terms = binary_terms(log_p, log_q, targets.onehot, self.beta, 1.0 - self.beta)
        wce = masked_mean(drop_background(terms, targets.mode, self.include_background), targets)
        return self.alpha * wce - (1.0 - self.alpha) * self.dice(logits, targets).mean()


def _frequency_weights(counts: Tensor) -> Tensor:
    """``w_l = (Σ_k f_k / f_l)^0.5`` (Wong et al. 2018, Eq. 4); labels with no voxel get 0."""
    weights = (counts.sum(0, keepdim=True) / counts.clamp_min(1e-12)).sqrt()
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


@register_loss("exp_log", aliases=("exponential_logarithmic",))
class ExpLogLoss(_DiceTermLoss):
    """Exponential logarithmic loss (Wong et al. 2018, Eqs. 1-4):
    ``w_dice · E_i[(-ln Dice_i)^γ_dice] + w_cross · E_x[w_l (-ln p_l(x))^γ_cross]``.

    ``Dice_i`` is the soft Dice of label i with pseudo-count ``smooth`` (ε = 1 in the paper) per sample
    (per batch with ``batch``); the expectation of the cross term runs over valid voxels, l being the true
    label. Label weights ``w_l = (Σ_k f_k / f_l)^0.5`` come from ``label_frequencies`` (multiclass: one
    count or frequency per class; binary / multilabel: the positive fraction per channel, negatives
    ``1 - f``) or, when None, from the batch's voxel counts (binary / multilabel: positives and negatives
    of each channel are the two labels). Defaults are the paper's: 0.8 / 0.2 and γ = 0.3.
    """

    def __init__(self, mode: str = "auto", *, w_dice: float = 0.8, w_cross: float = 0.2,
                 gamma_dice: float = 0.3, gamma_cross: float = 0.3, smooth: float = 1.0,
                 label_frequencies: Sequence[float] | None = None, batch: bool = False,
                 include_background: bool = True, ignore_index: int | None = None) -> None:
        super().__init__(mode, smooth=smooth, batch=batch, include_background=include_background,
                         ignore_index=ignore_index)
        if min(w_dice, w_cross) < 0 or min(gamma_dice, gamma_cross) <= 0:
            raise MedsegError("w_dice, w_cross must be >= 0 and gamma_dice, gamma_cross > 0")
        self.w_dice, self.w_cross = float(w_dice), float(w_cross)
        self.gamma_dice, self.gamma_cross = float(gamma_dice), float(gamma_cross)
        self.label_frequencies = label_frequencies

    def label_weights(self, logits: Tensor, targets: Targets) -> tuple[Tensor, Tensor]:
        """Weights of the positive and (binary / multilabel) negative label per channel, ``[C]`` each."""
        channels = logits.shape[1]
        given = as_class_vector(self.label_frequencies, logits, channels, "label_frequencies")
        if targets.mode == "multiclass":
            counts = given if given is not None else spatial_sum(targets.onehot.detach(), batch=True)
            return _frequency_weights(counts.unsqueeze(1))[:, 0], torch.zeros_like(counts)
        if given is not None:
            positives, negatives = given, 1.0 - given
        else:
            positives = spatial_sum(targets.onehot.detach(), batch=True)
            valid = torch.ones_like(targets.onehot) if targets.valid is None else targets.valid
            negatives = spatial_sum(valid, batch=True) - positives
        weights = _frequency_weights(torch.stack([positives, negatives]))
        return weights[0], weights[1]

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        neg_log_dice = -torch.log(self.dice(logits, targets))
        dice_term = neg_log_dice.clamp_min(POWER_EPS).pow(self.gamma_dice).mean()
        log_p, log_q = log_probabilities(logits, targets.mode)
        pos_w, neg_w = (channel_view(w, logits.dim()) for w in self.label_weights(logits, targets))
        t = targets.onehot
        if targets.mode == "multiclass":
            nll = -(t * log_p).sum(1, keepdim=True)
            weight = (t * pos_w).sum(1, keepdim=True)
        else:
            nll = binary_terms(log_p, log_q, t)
            weight = t * pos_w + (1.0 - t) * neg_w
        cross_term = masked_mean(weight * nll.clamp_min(POWER_EPS).pow(self.gamma_cross), targets)
        return self.w_dice * dice_term + self.w_cross * cross_term


class CompoundLoss(nn.Module):
    """A weighted sum of losses, ``Σ_k w_k · L_k(output, target, **extras)``.

    ``last_values`` holds the detached value of each term after a forward (for logging), and
    :meth:`set_weight` changes a term's weight during training (e.g. :func:`boundary_schedule`).
    """

    def __init__(self, terms: Sequence[tuple[str, nn.Module, float]]) -> None:
        super().__init__()
        if not terms:
            raise MedsegError("a compound loss needs at least one term")
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name, loss, weight in terms:
            key, suffix = name, 2
            while key in self.terms:
                key, suffix = f"{name}_{suffix}", suffix + 1
            self.terms[key] = loss
            self.weights[key] = float(weight)
        self.last_values: dict[str, Tensor] = {}

    def set_weight(self, name: str, weight: float) -> None:
        """Change the weight of the term ``name``."""
        check_choice("term", name, list(self.weights))
        self.weights[name] = float(weight)

    def forward(self, output: Any, target: Tensor, **extras: Any) -> Tensor:
        total: Tensor | float = 0.0
        for name, loss in self.terms.items():
            value = loss(output, target, **extras)
            self.last_values[name] = value.detach()
            total = total + self.weights[name] * value
        return total  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={weight:g}" for name, weight in self.weights.items())


CONFIG_KEYS = ("losses", "mode", "include_background", "ignore_index", "deep_supervision", "pointrend")
SHARED_KEYS = ("mode", "include_background", "ignore_index")
DEEP_SUPERVISION_KEYS = ("weights", "resize")
POINTREND_KEYS = ("weight",)


def _term(entry: Any, index: int, shared: Mapping[str, Any]) -> tuple[str, nn.Module, float]:
    where = f"losses[{index}]"
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise MedsegError(f"{where} must be a loss name or a mapping with a 'name' key, got {entry!r}")
    options = {k: v for k, v in entry.items() if k not in ("name", "weight")}
    name, weight = str(entry["name"]), entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise MedsegError(f"{where}.weight must be a number >= 0, got {weight!r}")
    for key, value in shared.items():
        if key not in options and accepts_option(name, key):
            options[key] = value
    try:
        return name, create_loss(name, **options), float(weight)
    except MedsegError as exc:
        raise MedsegError(f"{where}: {exc}") from None


def _wrapper_options(value: Any, name: str, keys: Sequence[str]) -> dict[str, Any] | None:
    """The options of a loss wrapper given as true, false/None or a mapping of ``keys``."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise MedsegError(f"{name} must be true, false or a mapping, got {value!r}")
    check_keys([f"{name}.{key}" for key in value], [f"{name}.{key}" for key in keys], "key(s)")
    return dict(value)


def _deep_supervision_options(value: Any) -> dict[str, Any] | None:
    return _wrapper_options(value, "deep_supervision", DEEP_SUPERVISION_KEYS)


def build_loss(config: str | Mapping[str, Any]) -> nn.Module:
    """Build a loss from a name or a config mapping.

    ``{"losses": [{"name": "dice", "weight": 1}, {"name": "ce", "weight": 1, ...options}],
    "mode": "multiclass", "include_background": false, "ignore_index": 255, "deep_supervision": true}``.
    ``mode``, ``include_background`` and ``ignore_index`` are passed to every term that takes them (a term's
    own value wins). ``deep_supervision`` is a bool or ``{"weights": [...], "resize": "target"|"output"}``;
    ``pointrend`` a bool or ``{"weight": w}`` (:class:`~medseg.losses.pointrend.PointRendLoss`, applied
    outermost with the config's ``mode`` and ``ignore_index``).
    One term of weight 1 is returned as is, several as a :class:`CompoundLoss`.
    """
    from medseg.losses.deep_supervision import DeepSupervisionLoss

    if isinstance(config, str):
        config = {"losses": [config]}
    if not isinstance(config, Mapping):
        raise MedsegError(f"a loss config must be a name or a mapping, got {type(config).__name__}")
    check_keys(config, CONFIG_KEYS, "loss config key(s)")
    entries = config.get("losses")
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence) or not entries:
        raise MedsegError(f"losses must be a non-empty list of loss entries, got {entries!r}")
    if "mode" in config:
        check_choice("mode", config["mode"], MODES)
    shared = {key: config[key] for key in SHARED_KEYS if key in config}
    terms = [_term(entry, index, shared) for index, entry in enumerate(entries)]
    loss = terms[0][1] if len(terms) == 1 and terms[0][2] == 1.0 else CompoundLoss(terms)
    ds_options = _deep_supervision_options(config.get("deep_supervision"))
    if ds_options is not None:
        loss = DeepSupervisionLoss(loss, **ds_options)
    pointrend = _wrapper_options(config.get("pointrend"), "pointrend", POINTREND_KEYS)
    if pointrend is not None:
        from medseg.losses.pointrend import PointRendLoss

        loss = PointRendLoss(loss, mode=config.get("mode", "auto"), ignore_index=config.get("ignore_index"),
                             **pointrend)
    return loss
