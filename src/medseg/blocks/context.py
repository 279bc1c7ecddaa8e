"""Multi-scale context blocks: ASPP (DeepLabV3's and V2's summed ASPP-L), DenseASPP, pyramid pooling,
CE-Net's DAC and RMP (2D and 3D)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct, DepthwiseSeparableConv
from medseg.blocks.dense import DenseLayer
from medseg.errors import MedsegError


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLabV3 (Chen et al. 2017, Sec. 3.3 and Fig. 5).

    Parallel branches on the same input: a 1x1 conv, one 3x3 atrous conv per rate (6, 12, 18 at
    output stride 16; double them at 8) and image pooling (global average pool, 1x1 conv, upsampled
    back); each with BN and ReLU and ``out_channels`` wide. Their concatenation goes through a
    1x1 conv-BN-ReLU and dropout. ``separable=True`` makes the atrous branches depthwise-separable
    (DeepLabV3+, Chen et al. 2018, Sec. 3.2). The image-pooling branch normalises a 1x1 map: with
    batch norm, training needs a batch of at least 2 (use ``norm="group"`` otherwise).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int = 256,
                 rates: Sequence[int] = (6, 12, 18), dropout: float = 0.5, separable: bool = False,
                 norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()

        def atrous(rate: int) -> nn.Module:
            if separable:
                return DepthwiseSeparableConv(spatial_dims, in_channels, out_channels, 3, dilation=rate,
                                              norm=norm, act=act)
            return ConvNormAct(spatial_dims, in_channels, out_channels, 3, dilation=rate, norm=norm, act=act)

        self.branches = nn.ModuleList(
            [ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm=norm, act=act)]
            + [atrous(rate) for rate in rates])
        self.image_pool = nn.Sequential(
            layers.adaptive_avg_pool(spatial_dims, 1),
            ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm=norm, act=act))
        self.project = nn.Sequential(
            ConvNormAct(spatial_dims, (len(rates) + 2) * out_channels, out_channels, 1, norm=norm, act=act),
            layers.dropout(spatial_dims, dropout, channelwise=False))
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        features = [branch(x) for branch in self.branches]
        features.append(layers.resize_to(self.image_pool(x), x.shape[2:]))
        return self.project(torch.cat(features, dim=1))


class SummedASPP(nn.Module):
    """DeepLabV2's ASPP-L (Chen et al. 2017, Sec. 3.1 and Fig. 4): parallel 3x3 atrous branches at rates
    6, 12, 18, 24, each producing ``out_channels`` (the class scores), summed.

    With ``hidden_channels`` each branch is the VGG-16 variant's fc6 (3x3 atrous, ``hidden_channels``)
    -ReLU-dropout-fc7 (1x1)-ReLU-dropout-fc8 (1x1); without it (the ResNet-101 variant of the official
    prototxt) a single 3x3 atrous conv with bias.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 rates: Sequence[int] = (6, 12, 18, 24), hidden_channels: int | None = None,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if not rates:
            raise MedsegError("SummedASPP needs at least one rate")

        def branch(rate: int) -> nn.Module:
            if hidden_channels is None:
                return layers.conv(spatial_dims, in_channels, out_channels, 3, dilation=rate)
            return nn.Sequential(
                layers.conv(spatial_dims, in_channels, hidden_channels, 3, dilation=rate),
                layers.activation("relu"), layers.dropout(spatial_dims, dropout),
                layers.conv(spatial_dims, hidden_channels, hidden_channels, 1),
                layers.activation("relu"), layers.dropout(spatial_dims, dropout),
                layers.conv(spatial_dims, hidden_channels, out_channels, 1))

        self.branches = nn.ModuleList(branch(rate) for rate in rates)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DenseASPP(nn.Module):
    """Densely connected atrous spatial pyramid pooling (Yang et al. 2018, Fig. 2 and Eq. 3).

    Atrous layers with rates 3, 6, 12, 18, 24; layer l sees the input and every earlier layer's
    output: y_l = H_{K,d_l}([y_{l-1}, ..., y_0]). Each layer is BN-ReLU-1x1 conv to
    ``bottleneck_channels``, BN-ReLU-3x3 conv at its rate to ``growth_rate``, channel dropout.
    As in the reference code, new features are stacked in front: the output is
    [y_5, ..., y_1, x] with ``in_channels + len(rates) * growth_rate`` channels. Defaults are
    DenseASPP-121's (128, 64, dropout 0.1); the reference omits the first layer's input BN because
    its backbone ends with one: ours keeps it (2 * in_channels more parameters).
    """

    def __init__(self, spatial_dims: int, in_channels: int, bottleneck_channels: int = 128,
                 growth_rate: int = 64, rates: Sequence[int] = (3, 6, 12, 18, 24), dropout: float = 0.1,
                 norm: str | None = "batch", act: str | None = "relu", bias: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(spatial_dims, in_channels + i * growth_rate, growth_rate, bottleneck_channels, dropout,
                       dilation=rate, norm=norm, act=act, bias=bias, channelwise_dropout=True)
            for i, rate in enumerate(rates))
        self.out_channels = in_channels + len(rates) * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.cat([layer(x), x], dim=1)
        return x


class PyramidPooling(nn.Module):
    """Pyramid pooling module of PSPNet (Zhao et al. 2017, Sec. 3.2 and Fig. 3).

    For each bin size (1, 2, 3, 6): adaptive average pooling to bin^d cells, 1x1 conv (no bias) to
    ``in_channels / len(bins)`` channels, BN, ReLU, and bilinear/trilinear up-sampling back with
    ``align_corners=True`` (as the official code); the input is concatenated in front, giving
    ``2 * in_channels`` channels by default. With batch norm, the bin-1 branch needs a training batch of 2+.
    """

    def __init__(self, spatial_dims: int, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6),
                 reduction_channels: int | None = None, norm: str | None = "batch", act: str | None = "relu",
                 align_corners: bool = True) -> None:
        super().__init__()
        reduced = reduction_channels or in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(layers.adaptive_avg_pool(spatial_dims, size),
                          ConvNormAct(spatial_dims, in_channels, reduced, 1, norm=norm, act=act))
            for size in bins)
        self.align_corners = align_corners
        self.out_channels = in_channels + len(bins) * reduced

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        pooled = [layers.resize_to(stage(x), size, align_corners=self.align_corners) for stage in self.stages]
        return torch.cat([x] + pooled, dim=1)


class DenseAtrousConv(nn.Module):
    """CE-Net's dense atrous convolution (DAC) block (Gu et al. 2019, Fig. 3).

    Three atrous 3x3 convs (rates 1, 3, 5) and one 1x1 conv, their weights shared by four cascade
    branches as in the official code: relu(d1(x)), relu(c(d3(x))), relu(c(d3(d1(x)))),
    relu(c(d5(d3(d1(x))))); the output is x plus the four branches (no activation after the sum,
    as the official code). Convs have biases, initialised to zero. Keeps channels and size.
    """

    def __init__(self, spatial_dims: int, in_channels: int, rates: tuple[int, int, int] = (1, 3, 5)) -> None:
        super().__init__()
        if len(rates) != 3:
            raise MedsegError(f"DenseAtrousConv takes three rates, got {rates!r}")
        self.dilate1, self.dilate2, self.dilate3 = (
            layers.conv(spatial_dims, in_channels, in_channels, 3, dilation=rate) for rate in rates)
        self.conv1x1 = layers.conv(spatial_dims, in_channels, in_channels, 1, padding=0)
        for conv in (self.dilate1, self.dilate2, self.dilate3, self.conv1x1):
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        a = self.dilate1(x)
        ab = self.dilate2(a)
        branches = (a, self.conv1x1(self.dilate2(x)), self.conv1x1(ab), self.conv1x1(self.dilate3(ab)))
        out = x
        for branch in branches:
            out = out + torch.relu(branch)
        return out


class ResidualMultiKernelPooling(nn.Module):
    """CE-Net's residual multi-kernel pooling (RMP) block (Gu et al. 2019, Fig. 4).

    Max pooling with kernels 2, 3, 5, 6 (stride = kernel, in every spatial axis), one 1x1 conv
    to a single channel shared by all levels (bias, as the official code), up-sampling back to the
    input size (bilinear/trilinear, ``align_corners=False``), then [level maps, input]
    concatenated in the official order: ``in_channels + len(kernel_sizes)`` channels, the input last.
    Every spatial side must be at least the largest kernel.
    """

    def __init__(self, spatial_dims: int, in_channels: int, kernel_sizes: Sequence[int] = (2, 3, 5, 6),
                 align_corners: bool = False) -> None:
        super().__init__()
        self.kernel_sizes = tuple(kernel_sizes)
        self.pools = nn.ModuleList(layers.max_pool(spatial_dims, k, stride=k) for k in self.kernel_sizes)
        self.conv = layers.conv(spatial_dims, in_channels, 1, 1, padding=0)
        self.align_corners = align_corners
        self.out_channels = in_channels + len(self.kernel_sizes)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        if min(size) < max(self.kernel_sizes):
            raise MedsegError(f"RMP needs every spatial side >= {max(self.kernel_sizes)}, got {list(size)}")
        maps = [layers.resize_to(self.conv(pool(x)), size, align_corners=self.align_corners)
                for pool in self.pools]
        return torch.cat(maps + [x], dim=1)
