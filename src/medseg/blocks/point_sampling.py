"""PointRend's point utilities (Kirillov et al., CVPR 2020, Sec. 3), 2D and 3D.

Points are normalised coordinates in ``[0, 1]`` in ``grid_sample`` order: the last spatial axis first
(``(x, y)`` in 2D, ``(x, y, z)`` in 3D), so a point ``p`` of a map with spatial size ``(H, W)`` lies at
pixel ``(p[1] * H - 0.5, p[0] * W - 0.5)`` (``align_corners=False``: 0 and 1 are the outer edges of the
border pixels, the centre of pixel ``i`` is ``(i + 0.5) / W``).

* :func:`point_sample` reads a feature map at points (bilinear in 2D, trilinear in 3D, or nearest for
  label maps) with ``grid_sample``.
* :func:`uncertainty` is the paper's ``-(top1 - top2)`` of the logits (one channel: ``-|logit|``).
* :func:`training_points` is the training selection (Sec. 3.1): ``k * N`` uniform random points, the
  ``beta * N`` most uncertain of them, plus ``(1 - beta) * N`` uniform random points.
* :func:`uncertain_grid_points` is the inference selection: the ``N`` most uncertain points of a grid.
* :func:`points_for_size` is our rule for the training ``N``: the Cityscapes config's density, 2048
  points per 512x1024 crop, i.e. one point per 256 input pixels (voxels in 3D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from medseg.errors import MedsegError

POINTS_PER_PIXEL = 2048 / (512 * 1024)
"""Training points per input pixel (voxel): the Cityscapes config's 2048 points on 512x1024 crops."""
MIN_TRAINING_POINTS = 64
"""The fewest training points :func:`points_for_size` gives (small patches)."""


def point_sample(features: Tensor, coords: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample ``features [B, C, *spatial]`` at ``coords [B, N, dims]`` (in ``[0, 1]``): ``[B, C, N]``.

    ``mode`` is ``bilinear`` (trilinear on volumes: ``grid_sample`` calls both ``bilinear``) or
    ``nearest``. ``align_corners=False`` as in PointRend; points outside the outer pixel centres take the
    border value (``padding_mode="border"``), so samples at a finer grid's pixel centres equal
    ``F.interpolate(..., align_corners=False)`` exactly (detectron2 pads with zeros, which fades the outer
    half pixel towards 0).
    """
    dims = features.dim() - 2
    if dims not in (2, 3) or coords.dim() != 3 or coords.shape[-1] != dims \
            or coords.shape[0] != features.shape[0]:
        raise MedsegError(f"point_sample: features {tuple(features.shape)} and points {tuple(coords.shape)} "
                          f"do not fit (expected [B, C, *spatial] with 2 or 3 spatial axes and [B, N, dims])")
    grid = (2.0 * coords - 1.0).to(features.dtype).view(coords.shape[0], -1, *([1] * (dims - 1)), dims)
    sampled = F.grid_sample(features, grid, mode=mode, padding_mode="border", align_corners=False)
    return sampled.reshape(features.shape[0], features.shape[1], -1)


def uncertainty(logits: Tensor, multilabel: bool = False) -> Tensor:
    """Per-location uncertainty ``[B, 1, ...]`` of logits ``[B, K, ...]`` (higher: more uncertain).

    Multiclass (``K >= 2``): ``-(top1 - top2)``, minus the margin between the two largest logits.
    One channel: ``-|logit|``. ``multilabel`` (independent sigmoid channels, our extension): the most
    uncertain channel, ``-min_k |logit_k|``.
    """
    if logits.shape[1] == 1 or multilabel:
        return -logits.abs().amin(dim=1, keepdim=True)
    top2 = torch.topk(logits, k=2, dim=1).values
    return (top2[:, 1:2] - top2[:, 0:1])


def points_for_size(size: Sequence[int]) -> int:
    """Training points for an input of spatial ``size``: ``POINTS_PER_PIXEL`` of its pixels (voxels),
    rounded, at least ``MIN_TRAINING_POINTS`` (2048 at 512x1024, 484 at 352x352, 1024 at 128^3)."""
    return max(MIN_TRAINING_POINTS, round(math.prod(int(s) for s in size) * POINTS_PER_PIXEL))


def random_points(batch: int, count: int, dims: int, device: torch.device | str | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
    """``count`` uniform random points per sample: ``[batch, count, dims]`` in ``[0, 1)``."""
    return torch.rand(batch, count, dims, device=device, generator=generator)


def training_points(coarse_logits: Tensor, count: int, oversample: float = 3.0, importance: float = 0.75,
                    multilabel: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """PointRend's training points (Sec. 3.1): ``[B, count, dims]``.

    ``int(oversample * count)`` uniform random points are drawn; the coarse logits are sampled at them
    (bilinear: the uncertainty of the interpolated prediction, as detectron2 stresses) and the
    ``int(importance * count)`` most uncertain are kept, then ``count - int(importance * count)`` fresh
    uniform random points are added (the paper's "uniform distribution"; detectron2 takes them from the
    unselected oversampled points instead, which are uniform draws too). The selection itself carries no
    gradient.
    """
    if count < 1 or oversample < 1 or not 0.0 <= importance <= 1.0:
        raise MedsegError(f"training points: need count >= 1, oversample >= 1 and 0 <= importance <= 1, got "
                          f"{count}, {oversample}, {importance}")
    batch, dims, device = coarse_logits.shape[0], coarse_logits.dim() - 2, coarse_logits.device
    n_uncertain = int(importance * count)
    n_random = count - n_uncertain
    chosen = []
    with torch.no_grad():
        if n_uncertain:
            drawn = max(int(oversample * count), n_uncertain)
            candidates = random_points(batch, drawn, dims, device, generator)
            scores = uncertainty(point_sample(coarse_logits.detach(), candidates), multilabel)[:, 0]
            top = torch.topk(scores, k=n_uncertain, dim=1).indices
            chosen.append(torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, dims)))
        if n_random:
            chosen.append(random_points(batch, n_random, dims, device, generator))
    return torch.cat(chosen, dim=1)


def grid_point_coords(indices: Tensor, size: Sequence[int]) -> Tensor:
    """The ``[0, 1]`` centre coordinates ``[B, N, dims]`` (``grid_sample`` order) of flat grid
    ``indices [B, N]`` into a grid of spatial ``size`` (array order)."""
    coords = []
    rest = indices
    for extent in reversed([int(s) for s in size]):  # last axis first: x, y(, z)
        coords.append(((rest % extent).to(torch.float32) + 0.5) / extent)
        rest = torch.div(rest, extent, rounding_mode="floor")
    return torch.stack(coords, dim=-1)


def uncertain_grid_points(scores: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` most uncertain points of an uncertainty map ``[B, 1, *spatial]`` (all of them when
    the grid has fewer): flat indices ``[B, N]`` and their centre coordinates ``[B, N, dims]``."""
    size = list(scores.shape[2:])
    flat = scores.reshape(scores.shape[0], -1)
    count = min(int(count), flat.shape[1])
    indices = torch.topk(flat, k=count, dim=1).indices
    return indices, grid_point_coords(indices, size)
