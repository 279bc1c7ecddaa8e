"""Deep supervision as a wrapper around any loss (nnU-Net's scheme, Isensee et al. 2021).

A :class:`SegOutput`'s main logits and auxiliary maps (finest first) each get the wrapped loss, weighted
``1/2^i`` and normalised to sum 1 (or given weights). Where an auxiliary map is smaller than the target,
the target is down-sampled with nearest-neighbour interpolation (``resize="target"``, nnU-Net) or the map
is up-sampled (bi/trilinear) to the target (``resize="output"``, U-Net v2's polyp recipe). The registered
loss ``pspnet`` is the wrapper with PSPNet's weights (main 1, auxiliary 0.4).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from medseg.errors import MedsegError
from medseg.layers import resize_labels, resize_to
from medseg.losses.base import check_choice
from medseg.losses.registry import accepts_option, create_loss, register_loss
from medseg.outputs import SegOutput

RESIZE_MODES = ("target", "output")


def deep_supervision_weights(levels: int) -> list[float]:
    """``1/2^i`` for ``i = 0 .. levels-1``, normalised to sum 1."""
    raw = [0.5 ** i for i in range(levels)]
    total = sum(raw)
    return [w / total for w in raw]


def _takes_extras(loss: nn.Module) -> bool:
    params = inspect.signature(loss.forward).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in params)


class DeepSupervisionLoss(nn.Module):
    """Apply ``loss`` to the main logits and every auxiliary map of a :class:`SegOutput`.

    Args:
        loss: the loss of one output (any loss of the registry, or a module taking ``(logits, target)``).
        weights: one weight per output (main first); None: ``1/2^i`` normalised to sum 1.
        resize: ``target`` (down-sample the target, nearest) or ``output`` (up-sample the map).

    A plain Tensor gets the wrapped loss unchanged. ``extras`` (the output's and the keywords) reach every
    level; with ``resize="target"`` those shaped like the target's spatial size are down-sampled with it
    (e.g. precomputed distance maps).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None,
                 resize: str = "target") -> None:
        super().__init__()
        self.loss = loss
        if weights is not None and (not weights or any(w < 0 for w in weights)):
            raise MedsegError("deep supervision weights must be a non-empty list of numbers >= 0, "
                              f"got {weights}")
        self.weights = None if weights is None else [float(w) for w in weights]
        self.resize = check_choice("resize", resize, RESIZE_MODES)
        self._extras = _takes_extras(loss)

    def level_weights(self, levels: int) -> list[float]:
        """The weight of each of ``levels`` outputs."""
        if self.weights is None:
            return deep_supervision_weights(levels)
        if len(self.weights) != levels:
            raise MedsegError(f"deep supervision has {len(self.weights)} weights for {levels} outputs "
                              "(the main logits and each auxiliary map)")
        return self.weights

    def _call(self, logits: Tensor, target: Tensor, extras: Mapping[str, Any]) -> Tensor:
        return self.loss(logits, target, **extras) if self._extras else self.loss(logits, target)

    def level_loss(self, logits: Tensor, target: Tensor, extras: Mapping[str, Any]) -> Tensor:
        """The wrapped loss of one output, resizing the target (or the output) when the sizes differ."""
        has_channels = target.dim() == logits.dim()
        target_size = tuple(target.shape[2:] if has_channels else target.shape[1:])
        size = tuple(logits.shape[2:])
        if size == target_size:
            return self._call(logits, target, extras)
        if self.resize == "output":
            return self._call(resize_to(logits, list(target_size)), target, extras)
        resized = {key: resize_labels(value, list(size))
                   if isinstance(value, Tensor) and value.dim() == logits.dim() and tuple(value.shape[2:]) ==
                   target_size else value for key, value in extras.items()}
        return self._call(logits, resize_labels(target, list(size), has_channels), resized)

    def forward(self, output: Tensor | SegOutput, target: Tensor, **extras: Any) -> Tensor:
        if not isinstance(output, SegOutput):
            return self._call(output, target, extras)
        maps = [output.logits, *output.aux]
        merged = {**output.extras, **extras}
        weights = self.level_weights(len(maps))
        total: Tensor | float = 0.0
        for weight, logits in zip(weights, maps, strict=True):
            if weight:
                total = total + weight * self.level_loss(logits, target, merged)
        return total  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"weights={self.weights or '1/2^i'}, resize={self.resize!r}"


@register_loss("pspnet")
def pspnet_loss(mode: str = "auto", *, aux_weight: float = 0.4, base: str = "ce",
                ignore_index: int | None = None, base_options: Mapping[str, Any] | None = None
                ) -> DeepSupervisionLoss:
    """PSPNet's training loss (Zhao et al. 2017, Sec. 4.1; hszhao/semseg ``main_loss + aux_weight *
    aux_loss``): ``base`` (cross-entropy) on the main logits plus ``aux_weight`` (0.4) times it on the
    auxiliary map, i.e. :class:`DeepSupervisionLoss` with weights ``[1, aux_weight]`` (not normalised).
    A plain Tensor (eval mode, or a model without the auxiliary head) gets the base loss alone.
    ``base_options`` go to ``base``; ``mode`` and ``ignore_index`` too when it takes them."""
    if aux_weight < 0:
        raise MedsegError(f"pspnet loss option aux_weight must be >= 0, got {aux_weight}")
    options = dict(base_options or {})
    for key, value in (("mode", mode), ("ignore_index", ignore_index)):
        if key not in options and accepts_option(base, key):
            options[key] = value
    return DeepSupervisionLoss(create_loss(base, **options), weights=[1.0, aux_weight], resize="output")
