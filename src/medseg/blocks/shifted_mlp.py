"""Tokenized shifted MLP of UNeXt (Valanarasu & Patel, MICCAI 2022, Sec. 2.2, Fig. 2), 2D and 3D.

* :func:`shift_tokens` - the axial shift: the channels are split into ``shift_size`` groups and group
  ``g`` is moved by ``g - shift_size // 2`` positions along one spatial axis, zeros entering at the border.
* :class:`ShiftedMLP` - shift, fc1, depthwise conv on the token grid, GELU, shift along the next axis(es),
  fc2 (Eq. 1-3 of the paper; "shifted MLP across width" then "across height" in Fig. 2).
* :class:`ShiftedMLPBlock` - ``x + ShiftedMLP(LN(x))`` (the paper's tokenized MLP block without its
  final LayerNorm, which UNeXt applies per stage).
* :class:`OverlapPatchEmbed` - the tokenization: a 3x3 convolution with stride 2 and a LayerNorm over the
  channels (PVT v2's overlapping patch embedding as UNeXt uses it).

Every module takes and returns channels-first tensors ``[B, C, *spatial]`` so that it drops into any
convolutional network; inside the MLP the tokens are kept channels-last (``nn.Linear`` on the channels).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.errors import MedsegError


def shift_tokens(x: Tensor, dim: int, shift_size: int = 5, channel_dim: int = 1) -> Tensor:
    """Shift channel groups of ``x`` along the axis ``dim`` with zero fill (UNeXt's axial shift).

    The channels (axis ``channel_dim``) are split as ``torch.chunk(x, shift_size)`` splits them (groups of
    ``ceil(C / shift_size)`` channels, the last one smaller, as the official code does; very few channels
    can give fewer groups). Group ``g`` is moved by ``g - shift_size // 2`` positions: ``out[i] = x[i - s]``,
    zero where ``i - s`` falls outside. This equals the official "zero-pad by ``shift_size // 2``, roll,
    crop", written as one pad and one crop per group.
    """
    if shift_size < 1:
        raise MedsegError(f"shift_size must be >= 1, got {shift_size}")
    pad = shift_size // 2
    if pad == 0:
        return x
    dim = dim % x.dim()
    length = x.shape[dim]
    zeros_shape = list(x.shape)
    zeros_shape[dim] = pad
    zeros = x.new_zeros(zeros_shape)
    padded = torch.cat([zeros, x, zeros], dim=dim)
    groups = torch.chunk(padded, shift_size, dim=channel_dim)
    shifted = [group.narrow(dim, pad - (g - pad), length) for g, group in enumerate(groups)]
    return torch.cat(shifted, dim=channel_dim)


def _init_trunc_normal(module: nn.Module) -> None:
    """The official initialisation: Linear ~ truncated N(0, 0.02) with zero bias; convolutions
    ~ N(0, sqrt(2 / fan_out)) with zero bias; LayerNorm at (1, 0). Meta tensors (parameter counting) are
    skipped: random init on ``meta`` would import torch._dynamo (seconds) for nothing."""
    if any(p.is_meta for p in module.parameters(recurse=False)):
        return
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d | nn.Conv3d):
        fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ShiftedMLP(nn.Module):
    """Shifted MLP on channels-last tokens ``[B, *spatial, C]`` (UNeXt Eq. 1-3).

    2D (as the official code): shift along H, fc1, depthwise 3x3 conv on the token grid, GELU, shift along
    W, fc2. 3D (ours): shift along D before fc1; after the depthwise 3x3x3 conv and GELU, shift along H
    then W before fc2. The rule is the same in both cases: the first spatial axis before fc1, the others in
    turn before fc2, so every axis is shifted once and each fc mixes the groups of its shifted window.
    """

    def __init__(self, spatial_dims: int, channels: int, hidden_channels: int | None = None,
                 shift_size: int = 5, drop: float = 0.0) -> None:
        super().__init__()
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        hidden = hidden_channels or channels
        if channels < 1 or hidden < 1:
            raise MedsegError(f"ShiftedMLP channels must be >= 1, got {channels} and hidden {hidden}")
        if shift_size < 1:
            raise MedsegError(f"shift_size must be >= 1, got {shift_size}")
        self.shift_size = shift_size
        self.fc1 = nn.Linear(channels, hidden)
        self.dwconv = layers.conv(spatial_dims, hidden, hidden, 3, groups=hidden, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x = shift_tokens(x, 1, self.shift_size, channel_dim=-1)
        x = self.fc1(x)
        x = self.dwconv(x.movedim(-1, 1)).movedim(1, -1)
        x = self.drop(self.act(x))
        for axis in range(2, self.spatial_dims + 1):
            x = shift_tokens(x, axis, self.shift_size, channel_dim=-1)
        return self.drop(self.fc2(x))


class ShiftedMLPBlock(nn.Module):
    """``x + ShiftedMLP(LN(x))`` on a channels-first map ``[B, C, *spatial]`` (UNeXt's shifted block;
    the MLP ratio is 1 in UNeXt, i.e. ``hidden = channels``)."""

    def __init__(self, spatial_dims: int, channels: int, mlp_ratio: float = 1.0, shift_size: int = 5,
                 drop: float = 0.0) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise MedsegError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        self.norm = nn.LayerNorm(channels)
        self.mlp = ShiftedMLP(spatial_dims, channels, max(1, int(channels * mlp_ratio)), shift_size, drop)
        self.apply(_init_trunc_normal)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.movedim(1, -1)
        tokens = tokens + self.mlp(self.norm(tokens))
        return tokens.movedim(-1, 1)


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: ``LN(conv_kxk,stride(x))`` on a channels-first map (UNeXt Sec. 2.2;
    3x3 with stride 2 halves the resolution). LayerNorm eps 1e-5 as ``nn.LayerNorm``."""

    def __init__(self, spatial_dims: int, in_channels: int, embed_dim: int, kernel_size: int = 3,
                 stride: int = 2) -> None:
        super().__init__()
        self.proj = layers.conv(spatial_dims, in_channels, embed_dim, kernel_size, stride,
                                padding=kernel_size // 2)
        self.norm = layers.ChannelLayerNorm(embed_dim, eps=1e-5)
        self.apply(_init_trunc_normal)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))
