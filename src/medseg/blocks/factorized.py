"""Factorised and inverted-residual blocks of the lightweight segmenters (2D and 3D).

:class:`FactorizedConv` is a k x k (x k) conv replaced by 1D convs along each axis (Szegedy et al. 2016;
ENet's asymmetric convs, ERFNet's factorised ones), :class:`NonBottleneck1D` ERFNet's residual layer
(Romera et al. 2017, Fig. 2c), :class:`InvertedResidual` MobileNetV2's linear bottleneck (Sandler et al.
2018, Table 1), the building block of Fast-SCNN, and :class:`DownsamplerBlock` the concatenated
conv/max-pool down-sampling of ENet's initial block and ERFNet's down-sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct


class FactorizedConv(nn.Sequential):
    """1D convs of size ``kernel_size`` along every spatial axis in turn (first axis first), with
    ``act`` between them (``inner_act``) or none (ENet's asymmetric pair has norm-act after each one:
    ``inner_norm``). Receptive field of a ``kernel_size``-cubed conv for about ``d / k`` of its weights."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1, bias: bool = True, inner_norm: str | None = None,
                 inner_act: str | None = "relu", prelu_channels: int | None = None) -> None:
        super().__init__()
        for axis in range(spatial_dims):
            cin = in_channels if axis == 0 else out_channels
            conv = layers.axial_conv(spatial_dims, cin, out_channels, kernel_size, axis, dilation=dilation,
                                     bias=bias)
            self.add_module(f"conv{axis}", conv)
            if axis < spatial_dims - 1:
                self.add_module(f"norm{axis}", layers.norm(inner_norm, spatial_dims, out_channels))
                self.add_module(f"act{axis}", layers.activation(inner_act, prelu_channels or out_channels))


class NonBottleneck1D(nn.Module):
    """ERFNet's non-bottleneck-1D layer (Romera et al. 2017, Fig. 2c and Table 1).

    Two factorised 3x3 convs (3x1, act, 1x3 in 2D; along the three axes in 3D), each followed by norm,
    the second one dilated; act after the first, dropout after the second, then ``act(x + F(x))``. Convs
    have biases as in the reference code (Eromera/erfnet_pytorch).
    """

    def __init__(self, spatial_dims: int, channels: int, dilation: int = 1, dropout: float = 0.0,
                 norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()
        self.conv1 = FactorizedConv(spatial_dims, channels, channels, 3, inner_act=act)
        self.norm1 = layers.norm(norm, spatial_dims, channels)
        self.act1 = layers.activation(act, channels)
        self.conv2 = FactorizedConv(spatial_dims, channels, channels, 3, dilation=dilation, inner_act=act)
        self.norm2 = layers.norm(norm, spatial_dims, channels)
        self.drop = layers.dropout(spatial_dims, dropout)
        self.act_out = layers.activation(act, channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.drop(self.norm2(self.conv2(y)))
        return self.act_out(x + y)


class InvertedResidual(nn.Module):
    """MobileNetV2's linear bottleneck: 1x1 expansion by ``expansion`` (conv-norm-act), 3x3 depthwise
    conv-norm-act with ``stride``, 1x1 linear projection (conv-norm); identity shortcut when the stride is 1
    and the widths match (Sandler et al. 2018, Fig. 3b; the bottleneck of Fast-SCNN, Table 2)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, expansion: int = 6,
                 stride: int = 1, norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(
            ConvNormAct(spatial_dims, in_channels, hidden, 1, norm=norm, act=act),
            ConvNormAct(spatial_dims, hidden, hidden, 3, stride, padding=1, groups=hidden, norm=norm,
                        act=act),
            ConvNormAct(spatial_dims, hidden, out_channels, 1, norm=norm, act=None))

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_shortcut else out


class DownsamplerBlock(nn.Module):
    """Stride-2 down-sampling by a 3x3 conv to ``out_channels - in_channels`` maps concatenated with a
    max-pool of the input, then norm and act (ENet's initial block, Paszke et al. 2016, Fig. 2a, with a 3x3
    pool; ERFNet's down-sampler block, Romera et al. 2017, with a 2x2 pool). When ``in_channels >=
    out_channels`` (e.g. many input channels) the conv alone makes all ``out_channels``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, pool_kernel: int = 2,
                 bias: bool = True, norm: str | None = "batch", act: str | None = "relu",
                 act_channels: int | None = None) -> None:
        super().__init__()
        self.pool: nn.Module | None = None
        conv_out = out_channels
        if in_channels < out_channels:
            conv_out = out_channels - in_channels
            self.pool = layers.max_pool(spatial_dims, pool_kernel, 2, padding=(pool_kernel - 1) // 2)
        self.conv = layers.conv(spatial_dims, in_channels, conv_out, 3, 2, padding=1, bias=bias)
        self.norm = layers.norm(norm, spatial_dims, out_channels)
        self.act = layers.activation(act, act_channels or out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.pool is not None:
            y = torch.cat([y, self.pool(x)], dim=1)
        return self.act(self.norm(y))
