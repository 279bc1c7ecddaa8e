"""Residual units of ResNet (He et al. 2016, "Deep Residual Learning", Fig. 5), 2D and 3D.

Attribute names follow timm / torchvision ResNet (``conv1``, ``bn1``, ..., ``downsample.0`` the
1x1 projection conv and ``downsample.1`` its norm), so an encoder built from these blocks loads a
timm ResNet state dict key for key.
"""

from __future__ import annotations

from torch import Tensor, nn

from medseg import layers


def projection_shortcut(spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                        norm: str | None = "batch", num_groups: int = 8) -> nn.Sequential:
    """The 1x1 (strided) projection shortcut W_s of He 2016, Eq. 2, followed by a norm."""
    return nn.Sequential(
        layers.conv(spatial_dims, in_channels, out_channels, 1, stride, padding=0,
                    bias=(norm or "none") == "none"),
        layers.norm(norm, spatial_dims, out_channels, num_groups=num_groups),
    )


class _ResidualUnit(nn.Module):
    """Shared forward of the residual units: act(F(x) + shortcut(x))."""

    expansion = 1

    def _shortcut(self, spatial_dims: int, in_channels: int, stride: int, norm: str | None,
                  num_groups: int) -> None:
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != self.out_channels:
            self.downsample = projection_shortcut(spatial_dims, in_channels, self.out_channels, stride, norm,
                                                  num_groups)

    def _zero_init(self, last_norm: nn.Module) -> None:
        weight = getattr(last_norm, "weight", None)
        if isinstance(weight, nn.Parameter):
            nn.init.zeros_(weight)

    def residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act_out(self.residual(x) + shortcut)


class ResidualBlock(_ResidualUnit):
    """Basic residual block: two 3x3 conv-norm layers and a shortcut, activation after the sum.

    He et al. 2016, Fig. 5 (left) and Eq. 1/2: y = act(F(x) + x), with a 1x1 projection shortcut
    (option B) when the stride or the channel count changes. ``dilation`` applies to both convs
    (``first_dilation`` overrides the first one, as timm's dilated stages need);
    ``zero_init_last`` zeroes the last norm's scale so the block starts as act(shortcut).
    """

    expansion = 1

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                 dilation: int = 1, first_dilation: int | None = None, norm: str | None = "batch",
                 act: str | None = "relu", num_groups: int = 8, zero_init_last: bool = False) -> None:
        super().__init__()
        self.out_channels = out_channels
        bias = (norm or "none") == "none"
        first = first_dilation or dilation
        self.conv1 = layers.conv(spatial_dims, in_channels, out_channels, 3, stride, padding=first,
                                 dilation=first, bias=bias)
        self.bn1 = layers.norm(norm, spatial_dims, out_channels, num_groups=num_groups)
        self.act1 = layers.activation(act, out_channels)
        self.conv2 = layers.conv(spatial_dims, out_channels, out_channels, 3, padding=dilation,
                                 dilation=dilation, bias=bias)
        self.bn2 = layers.norm(norm, spatial_dims, out_channels, num_groups=num_groups)
        self.act_out = layers.activation(act, out_channels)
        self._shortcut(spatial_dims, in_channels, stride, norm, num_groups)
        if zero_init_last:
            self._zero_init(self.bn2)

    def residual(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))


class BottleneckBlock(_ResidualUnit):
    """Bottleneck residual block: 1x1 reduce, 3x3 (stride, dilation, groups), 1x1 expand by 4.

    He et al. 2016, Fig. 5 (right); the stride sits on the 3x3 conv (ResNet v1.5, as timm and
    torchvision) and ``groups``/``base_width`` give ResNeXt's width = channels * base_width / 64 * groups
    (Xie et al. 2017). Output channels = ``channels * expansion``.
    """

    expansion = 4

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, base_width: int = 64, expansion: int = 4,
                 first_dilation: int | None = None, norm: str | None = "batch", act: str | None = "relu",
                 num_groups: int = 8, zero_init_last: bool = False) -> None:
        super().__init__()
        self.expansion = expansion
        self.out_channels = channels * expansion
        width = int(channels * (base_width / 64.0)) * groups
        bias = (norm or "none") == "none"
        mid_dilation = first_dilation or dilation
        self.conv1 = layers.conv(spatial_dims, in_channels, width, 1, padding=0, bias=bias)
        self.bn1 = layers.norm(norm, spatial_dims, width, num_groups=num_groups)
        self.act1 = layers.activation(act, width)
        self.conv2 = layers.conv(spatial_dims, width, width, 3, stride, padding=mid_dilation,
                                 dilation=mid_dilation, groups=groups, bias=bias)
        self.bn2 = layers.norm(norm, spatial_dims, width, num_groups=num_groups)
        self.act2 = layers.activation(act, width)
        self.conv3 = layers.conv(spatial_dims, width, self.out_channels, 1, padding=0, bias=bias)
        self.bn3 = layers.norm(norm, spatial_dims, self.out_channels, num_groups=num_groups)
        self.act_out = layers.activation(act, self.out_channels)
        self._shortcut(spatial_dims, in_channels, stride, norm, num_groups)
        if zero_init_last:
            self._zero_init(self.bn3)

    def residual(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))
