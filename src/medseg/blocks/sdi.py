"""Semantics and Detail Infusion (Peng et al. 2023, U-Net v2, Sec. 3.2 and Fig. 2), 2D and 3D.

:class:`SemanticDetailInfusion` builds one enriched skip feature: every level is resized to the target
level (adaptive average pooling when larger, identity when equal, bilinear/trilinear interpolation with
``align_corners=True`` when smaller), smoothed by its own 3x3 conv, and all are multiplied element-wise
(Hadamard product, Eq. 3-4). :class:`SemanticDetailSkips` is the whole skip stage of U-Net v2: per level
CBAM channel and spatial attention (Eq. 1), a 1x1 conv + BN to ``channels`` (Eq. 2), then one SDI per
target level. Both take any number of levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.attention import ChannelAttention, SpatialAttention
from medseg.blocks.conv import ConvNormAct
from medseg.errors import MedsegError


def resize_to_level(x: Tensor, size: list[int]) -> Tensor:
    """The SDI resizing rule (U-Net v2 Eq. 3): adaptive average pooling along axes that are larger than
    ``size``, identity at equal size, then bilinear/trilinear ``align_corners=True`` interpolation along
    axes that are smaller."""
    current = [int(s) for s in x.shape[2:]]
    if current == size:
        return x
    pooled = [min(c, s) for c, s in zip(current, size, strict=True)]
    if pooled != current:
        pool = F.adaptive_avg_pool2d if x.dim() == 4 else F.adaptive_avg_pool3d
        x = pool(x, pooled)
    if pooled != size:
        x = layers.resize_to(x, size, align_corners=True)
    return x


class SemanticDetailInfusion(nn.Module):
    """One SDI module (U-Net v2 Eq. 3-4): the enriched feature of level ``target``.

    ``forward(features)`` takes one map per source level (``in_channels[j]`` channels each, any sizes),
    resizes each to ``features[target]``'s size (:func:`resize_to_level`), applies a 3x3 conv
    ``in_channels[j] -> out_channels`` (with bias; one conv per source) and returns the product of all.
    With U-Net v2's widths every level has ``c`` channels, so ``in_channels = [c] * L``.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], target: int,
                 out_channels: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if not in_channels:
            raise MedsegError("SemanticDetailInfusion: in_channels must name at least one level")
        if not 0 <= target < len(in_channels):
            raise MedsegError(f"SemanticDetailInfusion: target {target} is not one of the "
                              f"{len(in_channels)} levels")
        out = out_channels or in_channels[target]
        self.target = target
        self.out_channels = out
        self.smooth = nn.ModuleList(layers.conv(spatial_dims, c, out, kernel_size) for c in in_channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.smooth):
            raise MedsegError(f"SemanticDetailInfusion: expected {len(self.smooth)} feature maps, "
                              f"got {len(features)}")
        size = [int(s) for s in features[self.target].shape[2:]]
        result = self.smooth[0](resize_to_level(features[0], size))
        for conv, feature in zip(self.smooth[1:], features[1:], strict=True):
            result = result * conv(resize_to_level(feature, size))
        return result


class SemanticDetailSkips(nn.Module):
    """The skip stage of U-Net v2 (Fig. 2): attention, 1x1 reduction and SDI for every level.

    Per source level ``i``: channel attention then spatial attention (CBAM, Eq. 1; left out with
    ``attention=False``, the "without SC" ablation), a 1x1 conv ``in_channels[i] -> channels`` without
    bias and a BN (Eq. 2; the official code builds a ReLU there but never applies it: none here).
    Then one :class:`SemanticDetailInfusion` per level of ``targets`` (default: all levels), each over
    all reduced levels. ``forward(features)`` returns the enriched maps in the order of ``targets``.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], channels: int = 32,
                 attention: bool = True, targets: Sequence[int] | None = None, ratio: int = 16,
                 norm: str | None = "batch") -> None:
        super().__init__()
        levels = len(in_channels)
        targets = list(range(levels)) if targets is None else [int(t) for t in targets]
        if channels < 1:
            raise MedsegError(f"SDI channels must be >= 1, got {channels}")
        self.targets = targets
        self.attention = nn.ModuleList(
            nn.Sequential(ChannelAttention(spatial_dims, c, ratio), SpatialAttention(spatial_dims))
            if attention else nn.Identity() for c in in_channels)
        self.reduce = nn.ModuleList(ConvNormAct(spatial_dims, c, channels, 1, norm=norm, act=None, bias=False)
                                    for c in in_channels)
        self.infusion = nn.ModuleList(SemanticDetailInfusion(spatial_dims, [channels] * levels, t, channels)
                                      for t in targets)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.reduce):
            raise MedsegError(f"SemanticDetailSkips: expected {len(self.reduce)} feature maps, "
                              f"got {len(features)}")
        reduced = [reduce(attend(f)) for attend, reduce, f in zip(self.attention, self.reduce, features,
                                                                    strict=True)]
        return [sdi(reduced) for sdi in self.infusion]
