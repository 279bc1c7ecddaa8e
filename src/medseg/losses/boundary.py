"""Boundary loss (Kervadec et al. 2019, "Boundary loss for highly unbalanced segmentation").

``L_B = mean_Ω(p · φ_G)``: the probabilities times the signed distance map (SDM) φ_G of the target,
negative inside the object and positive outside (Eq. 5 of the paper, normalised by the voxel count as
in the official code and MONAI). The SDM of a target is computed once with scipy's Euclidean distance
transform and kept in a small cache keyed by the mask's bytes, or precomputed by the training loop (e.g.
in the data loader with :func:`target_distance_maps`) and passed as ``distance_map=`` (or in
``SegOutput.extras["distance_map"]``). Its weight usually rises over training: :func:`boundary_schedule`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from medseg.errors import MedsegError
from medseg.losses.base import (
    SegLoss,
    Targets,
    activate,
    check_choice,
    drop_background,
    prepare_targets,
    reduce,
    resolve_mode,
)
from medseg.losses.registry import register_loss

DISTANCE_KEY = "distance_map"
SCHEDULES = ("rebalance", "increase")


def signed_distance_map(mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Kervadec's SDM of a boolean mask: the distance to the object outside it, ``-(d - 1)`` inside with d
    the distance to the background (so the object's inner boundary voxels are 0), float32.

    Distances are in voxels, or in physical units with ``spacing`` (one value per array axis); then the
    inside offset is the smallest spacing instead of 1, so the inside stays <= 0 (the official code
    subtracts 1 in any unit). An empty or full mask has no boundary: all zeros (as in the official code).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return np.zeros(mask.shape, dtype=np.float32)
    sampling = None if spacing is None else [float(s) for s in spacing]
    offset = 1.0 if sampling is None else min(sampling)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return np.where(mask, offset - inside, outside).astype(np.float32)


class DistanceMapCache:
    """A least-recently-used cache of signed distance maps keyed by a digest of the mask (and spacing)."""

    def __init__(self, max_items: int = 256) -> None:
        self.max_items = int(max_items)
        self._maps: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """The SDM of ``mask``, computed on a miss."""
        if self.max_items <= 0:
            return signed_distance_map(mask, spacing)
        digest = hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest()
        key = (digest, mask.shape, None if spacing is None else tuple(float(s) for s in spacing))
        found = self._maps.get(key)
        if found is not None:
            self.hits += 1
            self._maps.move_to_end(key)
            return found
        self.misses += 1
        found = signed_distance_map(mask, spacing)
        self._maps[key] = found
        if len(self._maps) > self.max_items:
            self._maps.popitem(last=False)
        return found


def signed_distance_maps(onehot: Tensor, spacing: Sequence[float] | None = None,
                         cache: DistanceMapCache | None = None) -> Tensor:
    """SDMs ``[B, C, *spatial]`` of a one-hot / multi-channel target (channels > 0.5 are the objects)."""
    masks = (onehot.detach() > 0.5).cpu().numpy()
    maps = np.empty(masks.shape, dtype=np.float32)
    for index in np.ndindex(*masks.shape[:2]):
        maps[index] = signed_distance_map(masks[index], spacing) if cache is None else cache.get(
            masks[index], spacing)
    return torch.from_numpy(maps).to(onehot.device)


def target_distance_maps(target: Tensor, channels: int, spatial_dims: int, *, mode: str = "auto",
                         ignore_index: int | None = None, spacing: Sequence[float] | None = None) -> Tensor:
    """SDMs of a batch of targets for ``channels`` logit channels (to precompute outside the loss).

    ``target`` has the loss's target form (integer labels in multiclass mode) with ``spatial_dims`` trailing
    spatial axes; the result is ``[B, channels, *spatial]``, to pass as ``loss(output, target,
    distance_map=maps)``.
    """
    shape = (target.shape[0], channels, *target.shape[target.dim() - spatial_dims:])
    like = torch.zeros((), device=target.device).expand(*shape)
    targets = prepare_targets(like, target, resolve_mode(mode, channels), ignore_index)
    return signed_distance_maps(targets.onehot, spacing)


def boundary_schedule(epoch: int, *, strategy: str = "rebalance", step: float = 0.01,
                      floor: float = 0.01) -> tuple[float, float]:
    """``(region_weight, boundary_weight)`` at ``epoch`` (0-based), Kervadec et al. 2019, Sec. 3.3.

    ``rebalance``: ``α L_region + (1 - α) L_B`` with α = 1 at first, lowered by ``step`` per epoch down to
    ``floor``: the boundary weight rises from 0 to ``1 - floor``. ``increase``: ``L_region + α L_B`` with
    α = ``step`` · (epoch + 1). Set them with :meth:`CompoundLoss.set_weight` each epoch.
    """
    check_choice("strategy", strategy, SCHEDULES)
    if epoch < 0 or step < 0:
        raise MedsegError(f"epoch and step must be >= 0, got {epoch} and {step}")
    if strategy == "increase":
        return 1.0, step * (epoch + 1)
    region = max(1.0 - step * epoch, floor)
    return region, 1.0 - region


@register_loss("boundary")
class BoundaryLoss(SegLoss):
    """Boundary loss ``mean(p · φ_G)`` per sample and class (Kervadec et al. 2019, Eq. 5).

    The background class is excluded by default in multiclass mode (the paper supervises the foreground).
    Values are negative when the prediction covers the object (its minimum is reached by predicting exactly
    the object), so it is used with a region loss (Dice, generalized Dice), usually with a rising weight.

    Args:
        spacing: voxel spacing per spatial axis for physical distances (None: voxel units).
        cache_size: how many per-sample, per-class SDMs to keep (0: no cache).

    ``forward(output, target, distance_map=...)`` takes precomputed SDMs ``[B, C, *spatial]`` (all logit
    channels, or only the kept ones); without them they are computed from the target (and cached).
    Equals MONAI's ``BoundaryLoss`` with the same ``include_background``.
    """

    def __init__(self, mode: str = "auto", *, spacing: Sequence[float] | None = None, cache_size: int = 256,
                 include_background: bool = False, ignore_index: int | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(mode, include_background=include_background, ignore_index=ignore_index,
                         reduction=reduction)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.cache = DistanceMapCache(cache_size)

    def distance_maps(self, targets: Targets, given: Tensor | None, channels: int) -> Tensor:
        """SDMs of the kept channels: the given ones (checked) or computed from the target."""
        kept = drop_background(targets.onehot, targets.mode, self.include_background)
        if given is None:
            return signed_distance_maps(kept, self.spacing, self.cache)
        given = given.to(device=kept.device, dtype=kept.dtype)
        if given.shape[1] == channels and given.shape[1] != kept.shape[1]:
            given = drop_background(given, targets.mode, self.include_background)
        if given.shape != kept.shape:
            raise MedsegError(f"{DISTANCE_KEY} must be [B, C, *spatial] like the logits or the kept channels "
                              f"{tuple(kept.shape)}, got {tuple(given.shape)}")
        return given

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        phi = self.distance_maps(targets, extras.get(DISTANCE_KEY), logits.shape[1])
        probs = drop_background(targets.masked(activate(logits, targets.mode)), targets.mode,
                                self.include_background)
        values = (probs * phi).flatten(2).mean(-1)
        return reduce(values, self.reduction)
