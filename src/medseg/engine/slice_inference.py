"""2.5D and tri-planar prediction: a 2D model's logits for a whole volume, rebuilt slice by slice
(:func:`predict_by_slices`); tri-planar prediction averages the probabilities of the rebuilds along the
three axes (:class:`SlicePredictor`). The slicing itself is :mod:`medseg.data.slices`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from medseg.data.slices import TRIPLANAR, slice_windows
from medseg.engine.inference import logits_to_probabilities
from medseg.errors import MedsegError

__all__ = ["Predictor2D", "SlicePredictor", "logits_of", "mean_probabilities", "predict_by_slices"]


Predictor2D = Callable[[Tensor], Tensor]
"""A 2D model in eval mode (or a wrapper of it): ``[b, C * (2k + 1), *plane]`` -> logits
``[b, K, *plane]``."""


def predict_by_slices(predictor: Predictor2D, volume: Tensor, axis: int, k: int, batch_size: int = 4
                      ) -> Tensor:
    """Logits ``[K, *spatial]`` of ``volume`` ``[C, *spatial]``: every slice across ``axis`` predicted from
    its ``2k + 1`` neighbours, ``batch_size`` slices per call, put back in place (on the logits' device)."""
    if batch_size < 1:
        raise MedsegError(f"slices per batch must be >= 1, got {batch_size}")
    extent = volume.shape[axis + 1]
    out: Tensor | None = None
    for start in range(0, extent, batch_size):
        stop = min(start + batch_size, extent)
        logits = predictor(slice_windows(volume, axis, k, range(start, stop)))
        if out is None:
            out = logits.new_empty((logits.shape[1], *volume.shape[1:]), dtype=torch.float32)
        out.narrow(axis + 1, start, stop - start).copy_(logits.movedim(0, axis + 1))
    assert out is not None
    return out


def logits_of(probs: Tensor, mode: str, eps: float = 1e-7) -> Tensor:
    """Scores whose probabilities (:func:`~medseg.engine.inference.logits_to_probabilities`) are ``probs``
    (up to ``eps``): log for softmax, logit for sigmoid. Lets averaged probabilities go through code that
    expects logits (thresholds and argmax unchanged)."""
    if mode == "multiclass":
        return probs.clamp_min(eps).log()
    return torch.logit(probs, eps=eps)


def mean_probabilities(logit_maps: Sequence[Tensor], mode: str) -> Tensor:
    """The mean of the probabilities of ``logit_maps`` (tri-planar ensembling)."""
    if not logit_maps:
        raise MedsegError("mean_probabilities needs at least one map")
    total = logits_to_probabilities(logit_maps[0], mode)
    for logits in logit_maps[1:]:
        total += logits_to_probabilities(logits, mode).to(total.device)
    return total.div_(len(logit_maps))


class SlicePredictor:
    """A 3D predictor made of a 2D one: ``[B, C, *spatial]`` -> logits ``[B, K, *spatial]``.

    One axis: the slice-by-slice rebuild along it. Several (tri-planar): the mean of the probabilities of
    the rebuilds along each axis, returned as :func:`logits_of` that mean, so sliding-window, mirroring and
    label conversions apply to it like to any model's logits.

    Args:
        predictor: the 2D model (eval mode), taking ``C * (2k + 1)`` channels.
        axes: array axes to cut across (``(0, 1, 2)`` for tri-planar).
        k: neighbours on each side of the centre slice.
        mode: label mode (``binary``, ``multiclass``, ``multilabel``) for the averaging.
        batch_size: slices per call of ``predictor``.
    """

    def __init__(self, predictor: Predictor2D, axes: Sequence[int], k: int, mode: str, batch_size: int = 4
                 ) -> None:
        if not axes or any(a not in TRIPLANAR for a in axes):
            raise MedsegError(f"slice axes must be among 0, 1, 2, got {tuple(axes)}")
        self.predictor, self.axes, self.k = predictor, tuple(int(a) for a in axes), int(k)
        self.mode, self.batch_size = mode, int(batch_size)

    def volume_logits(self, volume: Tensor) -> Tensor:
        """Logits ``[K, *spatial]`` of one volume ``[C, *spatial]``."""
        maps = [predict_by_slices(self.predictor, volume, axis, self.k, self.batch_size)
                for axis in self.axes]
        if len(maps) == 1:
            return maps[0]
        return logits_of(mean_probabilities(maps, self.mode), self.mode)

    def __call__(self, batch: Tensor) -> Tensor:
        return torch.stack([self.volume_logits(volume) for volume in batch])
