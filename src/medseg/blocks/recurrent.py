"""Recurrent convolutional units of R2U-Net / RU-Net (Alom et al. 2018), 2D and 3D."""

from __future__ import annotations

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.errors import MedsegError


class RecurrentConv(nn.Module):
    """Recurrent convolutional layer unfolded for ``t`` steps (Alom et al. 2018, Eq. 1-2, Fig. 4).

    One conv-norm-act ``f`` with weights shared over time: ``h_0 = f(x)`` and
    ``h_k = f(x + h_{k-1})`` for ``k = 1..t``; the output is ``h_t`` (``t + 1`` convolutions, the
    unfolding of the reference implementation's ``Recurrent_block``). ``t = 0`` is a plain conv.
    """

    def __init__(self, spatial_dims: int, channels: int, t: int = 2, kernel_size: int = 3,
                 norm: str | None = "batch", act: str | None = "relu", bias: bool | None = True) -> None:
        super().__init__()
        if t < 0:
            raise MedsegError(f"the number of recurrent steps t must be >= 0, got {t}")
        self.t = t
        self.conv = ConvNormAct(spatial_dims, channels, channels, kernel_size, norm=norm, act=act, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        for _ in range(self.t):
            h = self.conv(x + h)
        return h


class RecurrentResidualUnit(nn.Module):
    """Recurrent residual convolutional unit, RRCU (Alom et al. 2018, R2U-Net, Fig. 3-4).

    A 1x1 conv matches the channels, two recurrent conv layers (:class:`RecurrentConv`) follow, and
    their output is added to the 1x1 conv's output (``x_{l+1} = x_l + F(x_l, w_l)``, Eq. 3). With
    ``residual=False`` the addition is left out (the RCU of RU-Net).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, t: int = 2,
                 kernel_size: int = 3, norm: str | None = "batch", act: str | None = "relu",
                 bias: bool | None = True, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.project = layers.conv(spatial_dims, in_channels, out_channels, 1)
        self.recurrent = nn.Sequential(
            RecurrentConv(spatial_dims, out_channels, t, kernel_size, norm, act, bias),
            RecurrentConv(spatial_dims, out_channels, t, kernel_size, norm, act, bias),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.project(x)
        out = self.recurrent(x)
        return x + out if self.residual else out


class RecurrentConvUnit(RecurrentResidualUnit):
    """Recurrent convolutional unit of RU-Net (Alom et al. 2018, Fig. 4b): the RRCU without the addition."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, t: int = 2,
                 kernel_size: int = 3, norm: str | None = "batch", act: str | None = "relu",
                 bias: bool | None = True) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, t, kernel_size, norm, act, bias,
                         residual=False)
