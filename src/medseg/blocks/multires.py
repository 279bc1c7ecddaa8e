"""MultiResUNet's blocks (Ibtehaz & Rahman 2020, Fig. 3-5): the MultiRes block and the Res path (2D, 3D)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct


def multires_widths(unet_width: int, alpha: float = 1.67) -> tuple[int, int, int]:
    """The three conv widths of a MultiRes block standing for a U-Net level of ``unet_width`` filters:
    ``W = alpha * U`` split as ``int(W * 0.167)``, ``int(W * 0.333)``, ``int(W * 0.5)`` (the official code's
    W/6, W/3, W/2)."""
    w = alpha * unet_width
    return int(w * 0.167), int(w * 0.333), int(w * 0.5)


class MultiResBlock(nn.Module):
    """MultiRes block (Fig. 4c): a chain of three 3x3 convs (W/6, W/3, W/2 filters: the receptive fields of a
    3x3, 5x5 and 7x7 conv), their outputs concatenated and normalised, plus a 1x1 conv-norm shortcut, then
    ``act`` and a norm (the official Keras code's order). Convs have no bias (``conv_bias`` adds them, as the
    official PyTorch port)."""

    def __init__(self, spatial_dims: int, in_channels: int, unet_width: int, alpha: float = 1.67,
                 norm: str | None = "batch", act: str | None = "relu", conv_bias: bool = False) -> None:
        super().__init__()
        a, b, c = multires_widths(unet_width, alpha)
        bias = True if conv_bias else None  # None: a bias only without a norm
        self.out_channels = a + b + c

        def cna(cin: int, cout: int, k: int, activation: str | None) -> ConvNormAct:
            return ConvNormAct(spatial_dims, cin, cout, k, norm=norm, act=activation, bias=bias)

        self.shortcut = cna(in_channels, self.out_channels, 1, None)
        self.conv3x3 = cna(in_channels, a, 3, act)
        self.conv5x5 = cna(a, b, 3, act)
        self.conv7x7 = cna(b, c, 3, act)
        self.norm_cat = layers.norm(norm, spatial_dims, self.out_channels)
        self.act = layers.activation(act, self.out_channels)
        self.norm_out = layers.norm(norm, spatial_dims, self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv3x3(x)
        b = self.conv5x5(a)
        c = self.conv7x7(b)
        y = self.norm_cat(torch.cat([a, b, c], dim=1)) + self.shortcut(x)
        return self.norm_out(self.act(y))


class ResPathUnit(nn.Module):
    """One residual unit of a Res path (Fig. 5): 3x3 conv-norm-act plus a 1x1 conv-norm shortcut, act,
    norm."""

    def __init__(self, spatial_dims: int, channels: int, norm: str | None = "batch", act: str | None = "relu",
                 conv_bias: bool = False) -> None:
        super().__init__()
        bias = True if conv_bias else None
        self.shortcut = ConvNormAct(spatial_dims, channels, channels, 1, norm=norm, act=None, bias=bias)
        self.conv = ConvNormAct(spatial_dims, channels, channels, 3, norm=norm, act=act, bias=bias)
        self.act = layers.activation(act, channels)
        self.norm = layers.norm(norm, spatial_dims, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.act(self.conv(x) + self.shortcut(x)))


class ResPath(nn.Sequential):
    """Res path (Sec. 3.3): ``length`` residual units on a skip connection (4, 3, 2, 1 from the finest
    level down: fewer where the encoder and decoder features are semantically closer)."""

    def __init__(self, spatial_dims: int, channels: int, length: int, norm: str | None = "batch",
                 act: str | None = "relu", conv_bias: bool = False) -> None:
        super().__init__(*[ResPathUnit(spatial_dims, channels, norm, act, conv_bias) for _ in range(length)])
