"""Inter-slice context residual learning (Zhang et al., IEEE TMI 2020, ConResNet), 2D and 3D.

* :func:`inter_slice_residual` — ``|a[s] - a[s-1]|`` along one spatial axis with a zero first slice (the
  paper's Eq. 1). The model applies it to the image, the context residual module to its probabilities and
  the loss to the labels, so all three agree on the slice axis and the zero first slice.
* :class:`PreActivationConv` and :class:`PreActivationResidualBlock` — GN(8)-ReLU-Conv with weight
  standardisation, the unit of every ConResNet layer (Sec. III-B).
* :class:`ContextResidualModule` — the bridge between the segmentation decoder and the context residual
  decoder (Fig. 2): context residual mapping and context attention mapping, each switchable for the
  paper's ablation (Table I), usable in any 2D/3D decoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.dense import NormActConv
from medseg.errors import MedsegError

WS_EPS = 1e-12
"""Weight standardisation epsilon of the paper's code (``sqrt(var + 1e-12)``). The library default (1e-5)
is not negligible next to the variance of a default-initialised 3x3x3x256 filter (about 5e-5)."""


def check_slice_axis(slice_axis: int, spatial_dims: int) -> int:
    """``slice_axis`` as a spatial axis index in ``[0, spatial_dims)`` (negative: counted from the end)."""
    if isinstance(slice_axis, bool) or not isinstance(slice_axis, int) \
            or not -spatial_dims <= slice_axis < spatial_dims:
        raise MedsegError(f"slice_axis must be a spatial axis in [{-spatial_dims}, {spatial_dims - 1}] "
                          f"(0: the first spatial axis, depth in 3D), got {slice_axis!r}")
    return slice_axis % spatial_dims


def inter_slice_residual(x: Tensor, slice_axis: int = 0) -> Tensor:
    """``|x[s] - x[s-1]|`` along spatial axis ``slice_axis`` of ``[B, C, *spatial]``, first slice 0 (Eq. 1).

    ``slice_axis`` 0 is the first spatial axis (depth D of ``[B, C, D, H, W]``: the axial slices of an
    array-ordered volume).
    """
    dim = 2 + check_slice_axis(slice_axis, x.dim() - 2)
    length = x.shape[dim]
    if length < 2:
        return torch.zeros_like(x)
    change = (x.narrow(dim, 1, length - 1) - x.narrow(dim, 0, length - 1)).abs()
    return torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), change], dim=dim)


def standardized_conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                      stride: int = 1, dilation: int = 1) -> layers.WeightStandardizedConv:
    """A bias-free weight-standardised conv with 'same' padding (ConResNet's ``Conv3d``, eps 1e-12).

    Uses the library's biased variance where the official code uses the unbiased one: a constant factor
    ``sqrt(n / (n - 1))`` of the weights that the following GroupNorm removes.
    """
    padding = layers.same_padding(kernel_size, dilation)
    return layers.WeightStandardizedConv(spatial_dims, in_channels, out_channels, kernel_size, stride,
                                         padding, dilation, bias=False, eps=WS_EPS)


class PreActivationConv(NormActConv):
    """GroupNorm(8) -> ReLU -> weight-standardised conv (no bias): ConResNet's pre-activation unit."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, dilation: int = 1, num_groups: int = 8) -> None:
        conv = standardized_conv(spatial_dims, in_channels, out_channels, kernel_size, stride, dilation)
        super().__init__(spatial_dims, in_channels, out_channels, norm="group", act="relu",
                         num_groups=num_groups, conv=conv)


class PreActivationResidualBlock(nn.Module):
    """Two GN-ReLU-Conv3x3 units plus an identity shortcut (He et al. 2016, "Identity Mappings", Fig. 4e).

    The shortcut is a GN-ReLU-Conv1x1 projection only when the channel count changes (never inside
    ConResNet, whose stages change width in a strided conv before their blocks). No activation after the sum.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilation: int = 1,
                 num_groups: int = 8) -> None:
        super().__init__()
        self.conv1 = PreActivationConv(spatial_dims, in_channels, out_channels, 3, dilation=dilation,
                                       num_groups=num_groups)
        self.conv2 = PreActivationConv(spatial_dims, out_channels, out_channels, 3, dilation=dilation,
                                       num_groups=num_groups)
        self.shortcut: nn.Module = (nn.Identity() if in_channels == out_channels else
                                    PreActivationConv(spatial_dims, in_channels, out_channels, 1,
                                                      num_groups=num_groups))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class ContextResidualModule(nn.Module):
    """Context residual module (Zhang et al. 2020, Fig. 3): couples a segmentation and a residual decoder.

    With ``seg`` and ``res`` the two decoders' inputs at one scale:

    * ``F = Conv(seg)`` (GN-ReLU-Conv3x3);
    * context residual mapping (``context_residual``): ``G = |σ(F)[s] - σ(F)[s-1]|`` along ``slice_axis``
      (first slice zero), ``r = Conv1x1(G)`` is added to the residual path;
    * ``O_res = Conv(P(res) + r)`` with ``P`` the residual input projection;
    * context attention mapping (``context_attention``): ``O_seg = F ⊙ (1 + σ(O_res))`` (the 1 keeps the
      background from being attenuated), else ``O_seg = F``.

    ``P`` is a plain weight-standardised 3x3 conv when the residual input is an image residual
    (``residual_is_image``: the first module, fed the input's own inter-slice residual), a GN-ReLU-Conv3x3
    when the channel count changes and the identity otherwise (the official code's layers that run).

    ``forward(seg, res)`` returns ``(O_seg, O_res)``, both with ``out_channels`` at the input size.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 residual_channels: int | None = None, slice_axis: int = 0, context_residual: bool = True,
                 context_attention: bool = True, residual_is_image: bool = False,
                 num_groups: int = 8) -> None:
        super().__init__()
        self.slice_axis = check_slice_axis(slice_axis, layers.check_spatial_dims(spatial_dims))
        self.context_residual = bool(context_residual)
        self.context_attention = bool(context_attention)
        residual_channels = out_channels if residual_channels is None else residual_channels
        self.seg_conv = PreActivationConv(spatial_dims, in_channels, out_channels, 3, num_groups=num_groups)
        self.context_conv: nn.Module | None = (standardized_conv(spatial_dims, out_channels, out_channels, 1)
                                               if self.context_residual else None)
        if residual_is_image:
            self.res_in: nn.Module = standardized_conv(spatial_dims, residual_channels, out_channels, 3)
        elif residual_channels != out_channels:
            self.res_in = PreActivationConv(spatial_dims, residual_channels, out_channels, 3,
                                            num_groups=num_groups)
        else:
            self.res_in = nn.Identity()
        self.res_conv = PreActivationConv(spatial_dims, out_channels, out_channels, 3, num_groups=num_groups)

    def forward(self, seg: Tensor, res: Tensor) -> tuple[Tensor, Tensor]:
        f = self.seg_conv(seg)
        res = self.res_in(res)
        if self.context_conv is not None:
            res = res + self.context_conv(inter_slice_residual(torch.sigmoid(f), self.slice_axis))
        res = self.res_conv(res)
        if self.context_attention:
            f = f * (1.0 + torch.sigmoid(res))
        return f, res

    def extra_repr(self) -> str:
        return (f"slice_axis={self.slice_axis}, context_residual={self.context_residual}, "
                f"context_attention={self.context_attention}")
