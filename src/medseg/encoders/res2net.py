"""Res2Net-50 v1b 26w x 4s encoder (Gao et al. 2021, "Res2Net: A New Multi-scale Backbone", Fig. 2), 2D/3D.

The v1b variant (the M2SNet / MSNet encoder) has a deep stem (three 3x3 convs) and average-pool
shortcuts. Module names follow timm's ``res2net50d`` (``conv1.0/1/3/4/6``, ``bn1``, ``layerN.M.convs.i``,
``bns.i``, ``downsample.1/2``), which are also the official Res2Net repository's v1b names, so either
weight file loads key for key (``fc`` is ignored). Returned levels: the deep stem's output before the
max-pool (1/2) and the four stages (1/4 .. 1/32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.residual import projection_shortcut
from medseg.encoders.base import register_encoder
from medseg.encoders.resnet import STAGE_WIDTHS, ResNetEncoder
from medseg.errors import MedsegError


def avg_down_shortcut(spatial_dims: int, in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """The "D" shortcut: average pool (stride 2, ceil mode, padding excluded), then 1x1 conv and BN.

    Indices 0 (pool, no parameters), 1 (conv), 2 (BN) as timm's ``downsample_avg`` and the official v1b.
    """
    pool: nn.Module = nn.Identity()
    if stride > 1:
        pool = layers.avg_pool(spatial_dims, stride, stride, count_include_pad=False)
        pool.ceil_mode = True  # as the official code (matters only for odd sizes)
    return nn.Sequential(pool, *projection_shortcut(spatial_dims, in_channels, out_channels, 1, "batch"))


class Res2NetBottleneck(nn.Module):
    """Res2Net bottleneck (Gao et al. 2021, Fig. 2 and Eq. 1).

    A 1x1 conv to ``scale`` groups of ``width`` channels; group 1 goes through a 3x3 conv, group i
    (2 <= i < scale) through a 3x3 conv of (group i + output of group i-1), the last group is kept
    (average-pooled in a stage's first block); the groups are concatenated, fused by a 1x1 conv to
    ``channels * 4`` and added to the shortcut. In a stage's first block every group uses only its own
    input and the 3x3 convs carry the stride (official ``stype='stage'``).
    """

    expansion = 4

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, stride: int = 1,
                 base_width: int = 26, scale: int = 4, stage_first: bool = False) -> None:
        super().__init__()
        width = int(math.floor(channels * base_width / 64.0))
        if width < 1:
            raise MedsegError(f"Res2Net base_width {base_width} gives zero channels for stage width "
                              f"{channels}")
        self.width = width
        self.scale = scale
        self.stage_first = stage_first
        out_channels = channels * self.expansion
        self.conv1 = layers.conv(spatial_dims, in_channels, width * scale, 1, padding=0, bias=False)
        self.bn1 = layers.norm("batch", spatial_dims, width * scale)
        branches = max(1, scale - 1)
        self.convs = nn.ModuleList([layers.conv(spatial_dims, width, width, 3, stride, padding=1, bias=False)
                                    for _ in range(branches)])
        self.bns = nn.ModuleList([layers.norm("batch", spatial_dims, width) for _ in range(branches)])
        self.pool: nn.Module = nn.Identity()
        if stage_first:
            # = AvgPool(3, stride, padding=1) counting the padding, as the official code; the explicit zero
            # pad lets 3D inputs smaller than the kernel through (avg_pool3d rejects those even when padded)
            pad = nn.ZeroPad2d(1) if spatial_dims == 2 else nn.ZeroPad3d(1)
            self.pool = nn.Sequential(pad, layers.avg_pool(spatial_dims, 3, stride))
        self.conv3 = layers.conv(spatial_dims, width * scale, out_channels, 1, padding=0, bias=False)
        self.bn3 = layers.norm("batch", spatial_dims, out_channels)
        self.relu = layers.activation("relu")
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = avg_down_shortcut(spatial_dims, in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        groups = torch.split(out, self.width, 1)
        outputs: list[Tensor] = []
        sp = groups[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            sp = groups[i] if i == 0 or self.stage_first else sp + groups[i]
            sp = self.relu(bn(conv(sp)))
            outputs.append(sp)
        if self.scale > 1:
            outputs.append(self.pool(groups[self.scale - 1]))
        out = self.bn3(self.conv3(torch.cat(outputs, 1)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Res2NetEncoder(ResNetEncoder):
    """Res2Net v1b: deep stem (3x3 convs in -> stem_width -> stem_width -> 2 * stem_width, the first with
    stride 2, BN+ReLU), 3x3 stride-2 max-pool, four stages of :class:`Res2NetBottleneck`.

    Args:
        in_channels, spatial_dims: as every encoder.
        depths: blocks per stage (default Res2Net-50's ``(3, 4, 6, 3)``).
        widths: base widths of the four stages (outputs are 4x these).
        stem_width: width of the first two stem convs (the stem outputs twice this).
        base_width: the "26w" (split width = stage width * base_width / 64).
        scale: the "4s" (number of channel groups).
    """

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2, depths: Sequence[int] = (3, 4, 6, 3),
                 widths: Sequence[int] = STAGE_WIDTHS, stem_width: int = 32, base_width: int = 26,
                 scale: int = 4) -> None:
        if scale < 1 or base_width < 1:
            raise MedsegError(f"Res2Net scale and base_width must be >= 1, got {scale} and {base_width}")
        self.base_width = base_width  # plain ints, read by make_block while the trunk is built
        self.scale = scale
        # the v1b deep stem (ResNetEncoder's deep_stem: timm's conv1.0/1/3/4/6 and bn1)
        super().__init__(in_channels, spatial_dims, depths, True, widths, stem_width, deep_stem=True)

    def make_block(self, spatial_dims: int, in_channels: int, width: int, stride: int, first: bool,
                   dilation: int = 1, first_dilation: int | None = None) -> nn.Module:
        if dilation != 1 or (first_dilation or 1) != 1:
            raise MedsegError("Res2Net blocks are not dilated (no output_stride option)")
        return Res2NetBottleneck(spatial_dims, in_channels, width, stride, self.base_width, self.scale,
                                 stage_first=first)


@register_encoder("res2net50_v1b_26w_4s", paper="Gao et al. 2021, Res2Net: A New Multi-scale Backbone "
                  "Architecture", dims=(2, 3), params=23_669_352, timm_name="res2net50d",
                  aliases=("res2net50d",))
def res2net50_v1b_26w_4s(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> Res2NetEncoder:
    """Res2Net-50 v1b 26w x 4s; channels [64, 256, 512, 1024, 2048]."""
    return Res2NetEncoder(in_channels, spatial_dims, **options)  # type: ignore[arg-type]
