"""The blocks of the Pyramid Attention Network (Li et al. 2018, "Pyramid Attention Network for Semantic
Segmentation", Fig. 2 and 3), 2D and 3D.

- :class:`FeaturePyramidAttention` (FPA): a U-shaped pyramid of 7x7 / 5x5 / 3x3 stride-2 convs on the top
  feature map, merged coarse to fine into a pixel-level attention map that multiplies a 1x1 conv of the
  input; a global-pooling branch is added.
- :class:`GlobalAttentionUpsample` (GAU): global pooling of the high-level feature, 1x1 conv-BN-ReLU,
  giving channel weights for a 3x3 conv-BN of the low-level feature; the weighted low-level feature is
  added to the up-sampled high-level feature.

The authors released no code; the layout follows the paper's text and figures, with the choices of the
reference reimplementations (JaveyWang/Pyramid-Attention-Networks-pytorch, segmentation_models_pytorch's
PAN) where the paper is silent: strided convs in the pyramid, each level refined by a second conv of its
kernel, bi/trilinear up-sampling, a ReLU after the GAU sum. ``pyramid_channels=1`` (a spatial attention
map broadcast over the channels) is the default; ``pyramid_channels=out_channels`` gives per-channel
attention.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.errors import MedsegError


class FeaturePyramidAttention(nn.Module):
    """FPA (Fig. 2): ``out = conv1x1(x) * up(pyramid(x)) + up(gp(x))``.

    The pyramid: ``kernel_sizes`` stride-2 conv-BN-ReLU layers in a chain (in -> ``pyramid_channels``), each
    level then refined by a stride-1 conv-BN-ReLU of the same kernel; from the coarsest, each level is
    up-sampled to the next finer one and added, and the finest sum is up-sampled to the input size. The
    global branch: global average pooling, 1x1 conv-BN-ReLU (batch norm on a 1-pixel map: train with a
    batch of 2 or more).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, pyramid_channels: int = 1,
                 kernel_sizes: Sequence[int] = (7, 5, 3)) -> None:
        super().__init__()
        if pyramid_channels not in (1, out_channels):
            raise MedsegError(f"FPA pyramid_channels must be 1 or out_channels ({out_channels}), got "
                              f"{pyramid_channels}")
        if not kernel_sizes:
            raise MedsegError("FPA needs at least one pyramid level")
        self.master = ConvNormAct(spatial_dims, in_channels, out_channels, 1)
        self.global_pool = nn.Sequential(layers.adaptive_avg_pool(spatial_dims, 1),
                                         ConvNormAct(spatial_dims, in_channels, out_channels, 1))
        self.down = nn.ModuleList(
            ConvNormAct(spatial_dims, in_channels if i == 0 else pyramid_channels, pyramid_channels, k, 2)
            for i, k in enumerate(kernel_sizes))
        self.refine = nn.ModuleList(ConvNormAct(spatial_dims, pyramid_channels, pyramid_channels, k)
                                    for k in kernel_sizes)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        levels: list[Tensor] = []
        path = x
        for down, refine in zip(self.down, self.refine, strict=True):
            path = down(path)
            levels.append(refine(path))
        attention = levels[-1]
        for level in levels[-2::-1]:
            attention = layers.resize_to(attention, list(level.shape[2:])) + level
        attention = layers.resize_to(attention, list(x.shape[2:]))
        return self.master(x) * attention + self.global_pool(x)


class GlobalAttentionUpsample(nn.Module):
    """GAU (Fig. 3): ``relu(up(proj(high)) + conv3x3(low) * gate(high))`` at the low-level resolution.

    ``gate`` is global average pooling, a 1x1 conv-BN-ReLU from ``high_channels`` to ``out_channels``;
    ``conv3x3`` a 3x3 conv-BN from ``low_channels``; ``proj`` a 1x1 conv-BN when ``high_channels`` differs
    from ``out_channels`` (else the identity).
    """

    def __init__(self, spatial_dims: int, low_channels: int, high_channels: int, out_channels: int) -> None:
        super().__init__()
        self.low = ConvNormAct(spatial_dims, low_channels, out_channels, 3, act=None)
        self.gate = nn.Sequential(layers.adaptive_avg_pool(spatial_dims, 1),
                                  ConvNormAct(spatial_dims, high_channels, out_channels, 1))
        self.project: nn.Module = nn.Identity() if high_channels == out_channels else \
            ConvNormAct(spatial_dims, high_channels, out_channels, 1, act=None)
        self.relu = nn.ReLU()
        self.out_channels = out_channels

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        up = layers.resize_to(self.project(high), list(low.shape[2:]))
        return self.relu(up + self.low(low) * self.gate(high))
