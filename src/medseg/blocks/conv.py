"""Convolution blocks: conv-norm-act, double conv, depthwise-separable conv (2D and 3D)."""

from __future__ import annotations

from torch import Tensor, nn

from medseg import layers
from medseg.layers import Padding


class ConvNormAct(nn.Sequential):
    """Convolution, then normalisation, then activation (and optional dropout).

    The bias of the convolution is dropped when a normalisation with an affine shift follows,
    unless ``bias`` is given explicitly.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: Padding = "same", dilation: int = 1, groups: int = 1,
                 norm: str | None = "batch", act: str | None = "relu", dropout: float = 0.0,
                 bias: bool | None = None, weight_standardized: bool = False,
                 num_groups: int = 8) -> None:
        norm = norm or "none"
        use_bias = (norm == "none") if bias is None else bias
        super().__init__()
        self.conv = layers.conv(spatial_dims, in_channels, out_channels, kernel_size, stride, padding,
                                dilation, groups, use_bias, weight_standardized)
        self.norm = layers.norm(norm, spatial_dims, out_channels, num_groups=num_groups)
        self.act = layers.activation(act, out_channels)
        if dropout > 0:
            self.drop = layers.dropout(spatial_dims, dropout)


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-norm-act layers: the level block of U-Net (Ronneberger 2015, Fig. 1)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 mid_channels: int | None = None, kernel_size: int = 3, padding: Padding = "same",
                 norm: str | None = "batch", act: str | None = "relu", dropout: float = 0.0,
                 bias: bool | None = None) -> None:
        mid = mid_channels or out_channels
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, mid, kernel_size, padding=padding, norm=norm, act=act,
                        bias=bias),
            ConvNormAct(spatial_dims, mid, out_channels, kernel_size, padding=padding, norm=norm, act=act,
                        dropout=dropout, bias=bias),
        )


class DepthwiseSeparableConv(nn.Module):
    """Depthwise conv (one filter per channel) then a 1x1 pointwise conv (Chollet 2017, Xception).

    Norm and activation follow the depthwise and the pointwise conv when given
    (``norm_depthwise``/``act_depthwise`` as in DeepLabV3+'s separable conv).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, dilation: int = 1, norm: str | None = "batch", act: str | None = "relu",
                 norm_depthwise: bool = True, act_depthwise: bool = False) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(spatial_dims, in_channels, in_channels, kernel_size, stride,
                                     dilation=dilation, groups=in_channels,
                                     norm=norm if norm_depthwise else None,
                                     act=act if act_depthwise else None)
        self.pointwise = ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))
