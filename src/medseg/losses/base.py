"""What every segmentation loss shares: label modes, activations, targets, masks and reductions.

Conventions (written once here, used by every loss of the package):

* **Logits in.** Losses take raw logits ``[B, C, *spatial]`` (2D or 3D) or a :class:`SegOutput`, whose
  main ``logits`` are used (deep supervision is :class:`~medseg.losses.deep_supervision.DeepSupervisionLoss`).
* **Modes.** ``binary``: one channel, sigmoid. ``multiclass``: C >= 2 channels with the background as
  channel 0, softmax, integer targets ``[B, *spatial]`` or ``[B, 1, *spatial]`` (or one-hot ``[B, C, ...]``).
  ``multilabel``: C independent sigmoid channels, float or bool targets ``[B, C, *spatial]``. ``auto``
  picks ``binary`` for one channel and ``multiclass`` otherwise.
* **ignore_index.** Voxels whose label equals it (multiclass), or channel values equal to it (binary and
  multilabel), take no part in the loss: they are masked out of probabilities, targets and means.
* **include_background.** Only meaningful in multiclass mode: ``False`` drops channel 0 from
  region-type terms (in binary and multilabel modes every channel is a foreground channel).
* **Reduction.** Region losses are computed per sample and class (``[B, C]``; ``[C]`` with
  ``batch=True``) and then averaged (``mean``), summed (``sum``) or returned (``none``). Pixel losses
  average over valid voxels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg.errors import MedsegError, check_choice
from medseg.outputs import SegOutput, main_logits

MODES = ("auto", "binary", "multiclass", "multilabel")
REDUCTIONS = ("mean", "sum", "none")
LOG_EPS = 1e-7


def check_keys(given: Iterable[str], allowed: Sequence[str], what: str) -> None:
    """Raise a :class:`MedsegError` naming the keys of ``given`` not in ``allowed`` (``what``: their kind)."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise MedsegError(f"unknown {what} {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def resolve_mode(mode: str, channels: int) -> str:
    """The concrete label mode of ``channels`` logit channels (``auto``: binary for 1, else multiclass)."""
    if mode == "auto":
        return "binary" if channels == 1 else "multiclass"
    if mode == "binary" and channels != 1:
        raise MedsegError(f"binary mode needs 1 logit channel, got {channels}")
    if mode == "multiclass" and channels < 2:
        raise MedsegError("multiclass mode needs at least 2 logit channels (background included), got 1")
    return mode


@dataclass
class Targets:
    """A target in the form every loss uses.

    Attributes:
        mode: the concrete label mode.
        onehot: float ``[B, C, *spatial]`` (one-hot in multiclass mode), zero at ignored voxels.
        valid: float ``[B, 1 or C, *spatial]`` mask of the voxels that count, or None when all count.
        labels: long ``[B, *spatial]`` class indices when the multiclass target was given as labels (ignored
            voxels set to 0), else None.
    """

    mode: str
    onehot: Tensor
    valid: Tensor | None
    labels: Tensor | None

    def masked(self, x: Tensor) -> Tensor:
        """``x`` with the ignored voxels set to zero."""
        return x if self.valid is None else x * self.valid

    def valid_count(self, like: Tensor) -> Tensor:
        """Number of voxels that count in a tensor shaped like ``like`` (broadcast of ``valid``)."""
        if self.valid is None:
            return torch.tensor(float(like.numel()), device=like.device)
        return self.valid.expand_as(like).sum()


def _check_spatial(logits: Tensor, target: Tensor) -> None:
    if tuple(target.shape[2:]) != tuple(logits.shape[2:]) or target.shape[0] != logits.shape[0]:
        raise MedsegError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")


def _class_targets(logits: Tensor, target: Tensor, ignore_index: int | None) -> Targets:
    channels = logits.shape[1]
    if target.dim() == logits.dim() and target.shape[1] == channels:
        _check_spatial(logits, target)
        return Targets("multiclass", target.to(logits.dtype), None, None)
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target[:, 0]
    _check_spatial(logits, target.unsqueeze(1))
    labels = target.long()
    valid = None
    if ignore_index is not None:
        keep = labels != ignore_index
        labels = torch.where(keep, labels, torch.zeros_like(labels))
        valid = keep.unsqueeze(1).to(logits.dtype)
    low, high = (int(v) for v in torch.aminmax(labels)) if labels.numel() else (0, 0)
    if low < 0 or high >= channels:
        raise MedsegError(f"multiclass labels must lie in [0, {channels - 1}] (or equal ignore_index "
                          f"{ignore_index}), got values in [{low}, {high}]")
    onehot = torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)
    if valid is not None:
        onehot = onehot * valid
    return Targets("multiclass", onehot, valid, labels)


def _channel_targets(mode: str, logits: Tensor, target: Tensor, ignore_index: int | None) -> Targets:
    if target.dim() == logits.dim() - 1 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    if target.dim() != logits.dim() or target.shape[1] != logits.shape[1]:
        raise MedsegError(f"{mode} targets must be [B, {logits.shape[1]}, *spatial] like the logits, "
                          f"got {tuple(target.shape)} for logits {tuple(logits.shape)}")
    _check_spatial(logits, target)
    values = target.to(logits.dtype)
    valid = None
    if ignore_index is not None:
        valid = (target != ignore_index).to(logits.dtype)
        values = values * valid
    return Targets(mode, values, valid, None)


def prepare_targets(logits: Tensor, target: Tensor, mode: str, ignore_index: int | None = None) -> Targets:
    """Convert ``target`` for ``logits`` in a concrete ``mode`` (see the module docstring for shapes).

    Multiclass targets given one-hot (``[B, C, *spatial]``) are used as they are: ``ignore_index`` applies to
    label maps only.
    """
    if mode == "multiclass":
        return _class_targets(logits, target, ignore_index)
    return _channel_targets(mode, logits, target, ignore_index)


def activate(logits: Tensor, mode: str) -> Tensor:
    """Probabilities: softmax over channels in multiclass mode, an element-wise sigmoid otherwise."""
    return torch.softmax(logits, 1) if mode == "multiclass" else torch.sigmoid(logits)


def log1mexp(log_p: Tensor) -> Tensor:
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, stable at both ends (Maechler 2012)."""
    a = log_p.clamp(max=-LOG_EPS)
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def log_probabilities(logits: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """``(log p, log(1 - p))`` per channel, computed from the logits without taking log of 0."""
    if mode == "multiclass":
        log_p = torch.log_softmax(logits, 1)
        return log_p, log1mexp(log_p)
    return F.logsigmoid(logits), F.logsigmoid(-logits)


def drop_background(x: Tensor, mode: str, include_background: bool) -> Tensor:
    """``x`` without channel 0 in multiclass mode when the background is excluded."""
    return x if include_background or mode != "multiclass" else x[:, 1:]


def spatial_sum(x: Tensor, batch: bool = False) -> Tensor:
    """Sum over the spatial axes (and the batch with ``batch=True``): ``[B, C]`` or ``[C]``."""
    dims = list(range(2, x.dim()))
    return x.sum(dim=[0, *dims]) if batch else x.sum(dim=dims)


def reduce(values: Tensor, reduction: str) -> Tensor:
    """Apply a ``mean`` / ``sum`` / ``none`` reduction."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def masked_mean(values: Tensor, targets: Targets) -> Tensor:
    """Mean of a voxel-wise loss over the valid voxels; 0 (with a gradient path) when none is valid."""
    if targets.valid is None:
        return values.mean()
    return targets.masked(values).sum() / targets.valid_count(values).clamp_min(1.0)


def as_class_vector(values: float | Sequence[float] | Tensor | None, like: Tensor, channels: int,
                    key: str) -> Tensor | None:
    """A per-class ``[C]`` tensor from a scalar or a sequence of ``channels`` values (None stays None)."""
    if values is None:
        return None
    vector = torch.as_tensor(values, dtype=like.dtype, device=like.device).flatten()
    if vector.numel() == 1:
        vector = vector.expand(channels)
    if vector.numel() != channels:
        raise MedsegError(f"{key} needs {channels} values (one per channel), got {vector.numel()}")
    if bool((vector < 0).any()):
        raise MedsegError(f"{key} values must be >= 0, got {vector.tolist()}")
    return vector


def channel_view(vector: Tensor, dims: int) -> Tensor:
    """``[C]`` reshaped to broadcast over ``[B, C, *spatial]`` with ``dims`` dimensions."""
    return vector.view(1, -1, *([1] * (dims - 2)))


class SegLoss(nn.Module):
    """Base class: resolves the mode, prepares the targets once and calls :meth:`compute`.

    Args:
        mode: ``auto``, ``binary``, ``multiclass`` or ``multilabel``.
        include_background: keep channel 0 in multiclass mode (ignored in the other modes).
        ignore_index: target value whose voxels do not count, or None.
        reduction: ``mean``, ``sum`` or ``none``.

    ``forward(output, target, **extras)`` takes a Tensor or a :class:`SegOutput`; the output's ``extras``
    and the keyword ``extras`` (e.g. precomputed distance maps) reach :meth:`compute`, the keywords winning.
    """

    def __init__(self, mode: str = "auto", *, include_background: bool = True,
                 ignore_index: int | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.mode = check_choice("mode", mode, MODES)
        self.include_background = bool(include_background)
        self.ignore_index = ignore_index
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def prepare(self, output: Tensor | SegOutput, target: Tensor) -> tuple[Tensor, Targets]:
        """Logits (half precision raised to float32) and prepared targets."""
        logits = main_logits(output)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        mode = resolve_mode(self.mode, logits.shape[1])
        return logits, prepare_targets(logits, target, mode, self.ignore_index)

    def forward(self, output: Tensor | SegOutput, target: Tensor, **extras: Any) -> Tensor:
        merged = {**output.extras, **extras} if isinstance(output, SegOutput) else extras
        logits, targets = self.prepare(output, target)
        return self.compute(logits, targets, merged)

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        """The loss of float logits against prepared targets (subclasses implement it)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, reduction={self.reduction!r}"
