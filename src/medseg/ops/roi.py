"""RoIAlign (He et al. 2017, Sec. 3) in 2D and 3D, and its multi-scale form on a feature pyramid.

Each RoI is divided into ``output_size`` bins; each bin is the average of ``sampling_ratio`` x
``sampling_ratio`` (x ``sampling_ratio``) bilinear samples at regularly spaced points, with no
quantisation of the RoI or of the bins. The sampling rule is torchvision's / Detectron2's
``ROIAlign`` kernel: a point more than one pixel outside the map contributes 0, a point within one
pixel of the border takes the border value; ``aligned=True`` shifts the box by -0.5 pixel so that a box
corner ``x`` means the continuous coordinate ``x`` (pixel centres at ``i + 0.5``). Written with
``grid_sample`` (one call per image), so it runs on any device and is differentiable with respect to
the features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from medseg.errors import MedsegError


def _axis_samples(start: Tensor, length: Tensor, bins: int, ratio: int) -> Tensor:
    """For ``K`` RoIs along one axis: the ``[K, bins * ratio]`` sample coordinates (pixel units)."""
    steps = (torch.arange(bins * ratio, device=start.device, dtype=start.dtype) + 0.5) / ratio
    return start[:, None] + steps[None, :] * (length[:, None] / bins)


def roi_align(features: Tensor, rois: Tensor, output_size: int | Sequence[int], spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True) -> Tensor:
    """Pool ``rois`` from ``features``.

    Args:
        features: ``[B, C, H, W]`` or ``[B, C, D, H, W]``.
        rois: ``[K, 1 + 2d]`` rows ``(batch index, x1, y1, x2, y2)`` or ``(b, x1, y1, z1, x2, y2, z2)``
            in input-image coordinates (x along the last axis).
        output_size: bins per axis (an int for all axes, or ``(h, w)`` / ``(d, h, w)``).
        spatial_scale: feature size / image size (1/4 on P2).
        sampling_ratio: samples per bin along each axis (>= 1).
        aligned: the -0.5 pixel shift of aligned RoIAlign; without it RoIs are at least 1 pixel wide.

    Returns:
        ``[K, C, *output_size]``.
    """
    d = features.dim() - 2
    if d not in (2, 3):
        raise MedsegError(f"roi_align: features must be [B, C, H, W] or [B, C, D, H, W], got "
                          f"{tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 1 + 2 * d:
        raise MedsegError(f"roi_align: {d}D features need rois [K, {1 + 2 * d}], got {tuple(rois.shape)}")
    if sampling_ratio < 1:
        raise MedsegError(f"roi_align: sampling_ratio must be >= 1, got {sampling_ratio}")
    sizes = [int(output_size)] * d if isinstance(output_size, int) else [int(s) for s in output_size]
    if len(sizes) != d:
        raise MedsegError(f"roi_align: output_size {sizes} does not match {d}D features")
    k, channels = rois.shape[0], features.shape[1]
    if k == 0:
        return features.new_zeros((0, channels, *sizes))
    rois = rois.detach().to(features.dtype)
    batch = rois[:, 0].long()
    offset = 0.5 if aligned else 0.0
    # axis a of the tensor (0 = depth/height ...) is coordinate column d - 1 - a of the box (x is last)
    axes = []
    for a in range(d):
        column = d - 1 - a
        start = rois[:, 1 + column] * spatial_scale - offset
        length = rois[:, 1 + d + column] * spatial_scale - offset - start
        if not aligned:
            length = length.clamp(min=1.0)
        axes.append(_axis_samples(start, length, sizes[a], sampling_ratio))
    n = [sizes[a] * sampling_ratio for a in range(d)]
    # bilinear samples by grid_sample: "border" clamps to the edge pixels (the kernel's rule within one
    # pixel of the map) and points further out are zeroed by ``valid``
    valid = torch.ones((k, *[1] * d), dtype=features.dtype, device=features.device)
    grids = []
    for a in range(d):
        shape = [k] + [n[b] if b == a else 1 for b in range(d)]
        extent = features.shape[2 + a]
        valid = valid * ((axes[a] >= -1.0) & (axes[a] <= extent)).to(features.dtype).view(shape)
        grids.append(((2 * axes[a] + 1) / extent - 1).view(shape).expand(k, *n))
    grid = torch.stack(grids[::-1], dim=-1)  # [K, *n, d] with x first
    out = features.new_zeros((k, channels, *n))
    for b in torch.unique(batch).tolist():
        chosen = torch.where(batch == b)[0]
        g = grid[chosen].reshape(1, -1, *n[1:], d)
        sampled = F.grid_sample(features[b:b + 1], g, mode="bilinear", padding_mode="border",
                                align_corners=False)
        out[chosen] = sampled.view(channels, chosen.numel(), *n).transpose(0, 1).to(out.dtype)
    out = out * valid[:, None]
    # average the sampling_ratio^d samples of each bin
    out = out.reshape(k, channels, *[v for a in range(d) for v in (sizes[a], sampling_ratio)])
    return out.mean(dim=tuple(3 + 2 * a for a in range(d)))


class LevelMapper:
    """FPN's RoI-to-level rule (Lin et al. 2017, Eq. 1): ``k = floor(k0 + log2(sqrt(w h) / 224) + eps)``
    with ``k0 = 4``, clamped to the pyramid's ``[k_min, k_max]``; returns ``k - k_min``."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: float = 224, canonical_level: int = 4,
                 eps: float = 1e-6) -> None:
        self.k_min, self.k_max = k_min, k_max
        self.canonical_scale, self.canonical_level, self.eps = canonical_scale, canonical_level, eps

    def __call__(self, boxes: Tensor) -> Tensor:
        scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        levels = torch.floor(self.canonical_level + torch.log2(scale / self.canonical_scale) + self.eps)
        return (levels.clamp(self.k_min, self.k_max) - self.k_min).long()


def infer_scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
    """The power of two closest to feature size / image size (the same on every axis)."""
    scales = {2.0 ** round(math.log2(f / i)) for f, i in zip(feature_size, image_size, strict=True)}
    if len(scales) != 1:
        raise MedsegError(f"feature map {list(feature_size)} is not a uniform power-of-two reduction of "
                          f"{list(image_size)}")
    return scales.pop()


class MultiScaleRoIAlign:
    """RoIAlign on the pyramid level that :class:`LevelMapper` assigns to each box (2D).

    Args:
        output_size: bins per axis (7 for the box head, 14 for the mask head).
        sampling_ratio: samples per bin along each axis.
        aligned: see :func:`roi_align`.
    """

    def __init__(self, output_size: int, sampling_ratio: int = 2, aligned: bool = True) -> None:
        self.output_size, self.sampling_ratio, self.aligned = output_size, sampling_ratio, aligned

    def __call__(self, features: Sequence[Tensor], boxes: Sequence[Tensor],
                 image_size: Sequence[int]) -> Tensor:
        """Pool the per-image ``boxes`` from ``features`` (finest first, e.g. P2-P5) of a padded batch
        of spatial ``image_size``; returns ``[sum K_i, C, S, S]`` in the order of the boxes."""
        scales = [infer_scale(f.shape[-2:], image_size) for f in features]
        k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, scales[0], self.sampling_ratio,
                             self.aligned)
        levels = LevelMapper(k_min, k_max)(rois[:, 1:])
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], self.output_size, self.output_size))
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            chosen = torch.where(levels == level)[0]
            if chosen.numel():
                out[chosen] = roi_align(feature, rois[chosen], self.output_size, scale, self.sampling_ratio,
                                        self.aligned).to(out.dtype)
        return out
