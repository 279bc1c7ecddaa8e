"""Densely connected and multi-branch blocks (DenseNet, FC-DenseNet, Inception), 2D and 3D."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.layers import Padding


class NormActConv(nn.Sequential):
    """Pre-activation unit: norm, activation, then convolution (He et al. 2016, "Identity Mappings").

    The composite function H_l of DenseNet (Huang et al. 2017, Sec. 3) and of FC-DenseNet's layers.
    ``conv`` replaces the plain convolution (e.g. a weight-standardised one, ConResNet).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: Padding = "same", dilation: int = 1, norm: str | None = "batch",
                 act: str | None = "relu", bias: bool = False, num_groups: int = 8,
                 conv: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = layers.norm(norm, spatial_dims, in_channels, num_groups=num_groups)
        self.act = layers.activation(act, in_channels)
        if conv is None:
            conv = layers.conv(spatial_dims, in_channels, out_channels, kernel_size, stride, padding,
                               dilation, bias=bias)
        self.conv = conv


class DenseLayer(nn.Module):
    """One dense layer: [BN-ReLU-Conv1x1 to ``bottleneck_channels``]-BN-ReLU-Conv3x3 to k-Dropout.

    Huang et al. 2017 (DenseNet, Sec. 3: composite function, bottleneck layers of DenseNet-B, 4k wide) and
    Jégou et al. 2017 (FC-DenseNet, Table 1: BN, ReLU, 3x3 conv, dropout p = 0.2). Returns only the
    ``growth_rate`` new feature maps; the concatenation is the block's job. ``bias=True`` as in
    FC-DenseNet's and DenseASPP's reference code (torchvision's DenseNet uses ``bias=False``);
    dropout is element-wise, or whole channels with ``channelwise_dropout``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, growth_rate: int, bottleneck_channels: int = 0,
                 dropout: float = 0.0, dilation: int = 1, norm: str | None = "batch",
                 act: str | None = "relu", bias: bool = True, num_groups: int = 8,
                 channelwise_dropout: bool = False) -> None:
        super().__init__()
        conv_in = in_channels
        self.bottleneck: nn.Module = nn.Identity()
        if bottleneck_channels > 0:
            conv_in = bottleneck_channels
            self.bottleneck = NormActConv(spatial_dims, in_channels, conv_in, 1, norm=norm, act=act,
                                          bias=bias, num_groups=num_groups)
        self.conv = NormActConv(spatial_dims, conv_in, growth_rate, 3, dilation=dilation, norm=norm, act=act,
                                bias=bias, num_groups=num_groups)
        self.drop = layers.dropout(spatial_dims, dropout, channelwise=channelwise_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.conv(self.bottleneck(x)))


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each fed the concatenation of the input and all earlier outputs.

    Huang et al. 2017, Eq. 2: x_l = H_l([x_0, ..., x_{l-1}]). The output is [x_0, x_1, ..., x_n]
    (``in_channels + num_layers * growth_rate`` channels) or, with ``return_only_new``, [x_1, ..., x_n]
    as on FC-DenseNet's up path (Jégou et al. 2017, Fig. 1 and Sec. 3.2). ``bottleneck_factor`` = 4
    gives DenseNet-BC's 1x1 bottleneck to 4k channels; 0 leaves it out.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_layers: int, growth_rate: int,
                 bottleneck_factor: int = 0, dropout: float = 0.0, return_only_new: bool = False,
                 dilation: int = 1, norm: str | None = "batch", act: str | None = "relu", bias: bool = True,
                 num_groups: int = 8) -> None:
        super().__init__()
        self.return_only_new = return_only_new
        self.layers = nn.ModuleList(
            DenseLayer(spatial_dims, in_channels + i * growth_rate, growth_rate,
                       bottleneck_factor * growth_rate, dropout, dilation, norm, act, bias, num_groups)
            for i in range(num_layers))
        new_channels = num_layers * growth_rate
        self.out_channels = new_channels if return_only_new else in_channels + new_channels

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features[1:] if self.return_only_new else features, dim=1)


class InceptionBlock(nn.Module):
    """Multi-branch Inception module with the 5x5 branch factorised into two 3x3 convs.

    Szegedy et al. 2015 (GoogLeNet, Fig. 2b) with the factorisation of Szegedy et al. 2016
    (Inception-v3, Fig. 5): branches 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3; 3x3 max pool -> 1x1;
    each conv followed by norm and activation, outputs concatenated. The defaults are
    GoogLeNet's inception (3a) widths: 64, (96, 128), (16, 32), 32 -> 256 channels.
    """

    def __init__(self, spatial_dims: int, in_channels: int, branch1x1: int = 64,
                 branch3x3: tuple[int, int] = (96, 128), branch5x5: tuple[int, int] = (16, 32),
                 pool_proj: int = 32, norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()

        def cna(cin: int, cout: int, k: int) -> ConvNormAct:
            return ConvNormAct(spatial_dims, cin, cout, k, norm=norm, act=act)

        self.branch1 = cna(in_channels, branch1x1, 1)
        self.branch2 = nn.Sequential(cna(in_channels, branch3x3[0], 1), cna(branch3x3[0], branch3x3[1], 3))
        self.branch3 = nn.Sequential(cna(in_channels, branch5x5[0], 1), cna(branch5x5[0], branch5x5[1], 3),
                                     cna(branch5x5[1], branch5x5[1], 3))
        self.branch4 = nn.Sequential(layers.max_pool(spatial_dims, 3, stride=1, padding=1),
                                     cna(in_channels, pool_proj, 1))
        self.out_channels = branch1x1 + branch3x3[1] + branch5x5[1] + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)



class TransitionDown(nn.Sequential):
    """FC-DenseNet's transition down (Jégou et al. 2017, Table 1): BN, ReLU, 1x1 conv keeping the channels,
    dropout, 2x2 max-pool (the conv with its bias and element-wise dropout, as the reference code)."""

    def __init__(self, spatial_dims: int, channels: int, dropout: float = 0.2, norm: str | None = "batch",
                 act: str | None = "relu", bias: bool = True) -> None:
        super().__init__()
        self.unit = NormActConv(spatial_dims, channels, channels, 1, norm=norm, act=act, bias=bias)
        self.drop = layers.dropout(spatial_dims, dropout, channelwise=False)
        self.pool = layers.max_pool(spatial_dims, 2)


class TransitionUp(nn.Module):
    """FC-DenseNet's transition up (Jégou et al. 2017, Table 1 and Fig. 1): a 3x3 transposed conv of stride
    2 (unpadded, so ``2n + 1`` wide), centre-cropped to the skip and concatenated ``[up, skip]``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = layers.conv_transpose(spatial_dims, in_channels, out_channels, 3, 2)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return torch.cat([layers.center_crop(self.up(x), list(skip.shape[2:])), skip], dim=1)
