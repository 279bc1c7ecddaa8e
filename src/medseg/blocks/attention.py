"""Attention blocks: squeeze-and-excitation, CBAM channel/spatial attention, non-local (2D and 3D)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.errors import MedsegError

_GLOBAL_POOLS = {"avg": layers.adaptive_avg_pool, "max": layers.adaptive_max_pool}


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al. 2018, Eq. 2).

    M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), the MLP shared: 1x1 conv C -> C/r (no bias),
    ReLU, 1x1 conv C/r -> C (no bias); the output is F * M_c(F). ``gate(x)`` returns M_c alone,
    shaped ``[B, C, 1, ...]``. Names ``fc1``/``fc2`` match the U-Net v2 reference code.
    """

    def __init__(self, spatial_dims: int, in_channels: int, ratio: int = 16,
                 pools: Sequence[str] = ("avg", "max"), bias: bool = False, act: str | None = "relu",
                 min_hidden: int = 1) -> None:
        super().__init__()
        unknown = [p for p in pools if p not in _GLOBAL_POOLS]
        if unknown or not pools:
            raise MedsegError(f"pools must be a non-empty subset of {sorted(_GLOBAL_POOLS)}, "
                              f"got {list(pools)}")
        hidden = max(min_hidden, in_channels // ratio)
        self.pools = nn.ModuleList(_GLOBAL_POOLS[p](spatial_dims, 1) for p in pools)
        self.fc1 = layers.conv(spatial_dims, in_channels, hidden, 1, padding=0, bias=bias)
        self.act = layers.activation(act, hidden)
        self.fc2 = layers.conv(spatial_dims, hidden, in_channels, 1, padding=0, bias=bias)

    def gate(self, x: Tensor) -> Tensor:
        logits = torch.zeros((), dtype=x.dtype, device=x.device)
        for pool in self.pools:
            logits = logits + self.fc2(self.act(self.fc1(pool(x))))
        return torch.sigmoid(logits)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class SqueezeExcitation(ChannelAttention):
    """Squeeze-and-excitation (Hu et al. 2018, Fig. 2 and Eq. 2-4).

    Squeeze: global average pooling; excitation: FC C -> C/r (bias), ReLU, FC C/r -> C (bias),
    sigmoid; scale: x * s. The FCs are 1x1 convs; the hidden width is at least ``min_hidden``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, reduction: int = 16, act: str | None = "relu",
                 min_hidden: int = 1) -> None:
        super().__init__(spatial_dims, in_channels, reduction, pools=("avg",), bias=True, act=act,
                         min_hidden=min_hidden)


class SpatialAttention(nn.Module):
    """CBAM spatial attention (Woo et al. 2018, Eq. 3).

    M_s(F) = sigmoid(conv_kxk([AvgPool_c(F); MaxPool_c(F)])): channel mean and channel max
    concatenated (in that order), a k x k conv 2 -> 1 without bias (k = 7), sigmoid; the output is
    F * M_s(F). ``gate(x)`` returns M_s alone, shaped ``[B, 1, *spatial]``. ``in_channels`` is only
    accepted for the common block constructor: the block works on any channel count.
    """

    def __init__(self, spatial_dims: int, in_channels: int | None = None, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = layers.conv(spatial_dims, 2, 1, kernel_size, padding="same", bias=False)

    def gate(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al. 2018, Fig. 1): channel then spatial attention."""

    def __init__(self, spatial_dims: int, in_channels: int, ratio: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(spatial_dims, in_channels, ratio)
        self.spatial_attention = SpatialAttention(spatial_dims, in_channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial_attention(self.channel_attention(x))


class NonLocalBlock(nn.Module):
    """Non-local block, embedded Gaussian version (Wang et al. 2018, Eq. 1-3 and 6, Fig. 2).

    z = W(y) + x with y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j); theta, phi, g are 1x1
    convs to ``inter_channels`` (in/2 by default), W a 1x1 conv back to ``in_channels`` followed by a
    norm. W's norm (or W itself when ``norm`` is none) starts at zero, so the block is the identity
    at initialisation (Sec. 4.1). ``sub_sample`` max-pools phi and g by 2 along every axis (Sec. 3.3).

    ``num_heads`` > 1 splits theta, phi and g into heads that attend separately (multi-head attention, as
    the global aggregation block of the Non-local U-Net, Wang et al. 2020, Fig. 2); ``scaled`` divides the
    affinities by sqrt(channels per head) (scaled dot-product attention, Vaswani et al. 2017).
    """

    def __init__(self, spatial_dims: int, in_channels: int, inter_channels: int | None = None,
                 sub_sample: bool = True, norm: str | None = "batch", num_groups: int = 8, num_heads: int = 1,
                 scaled: bool = False) -> None:
        super().__init__()
        inter = inter_channels or max(1, in_channels // 2)
        if num_heads < 1 or inter % num_heads:
            raise MedsegError(f"num_heads {num_heads} must be >= 1 and divide the {inter} inner channels")
        self.num_heads = num_heads
        self.scale = (inter // num_heads) ** -0.5 if scaled else 1.0
        self.theta = layers.conv(spatial_dims, in_channels, inter, 1, padding=0)
        self.phi = layers.conv(spatial_dims, in_channels, inter, 1, padding=0)
        self.g = layers.conv(spatial_dims, in_channels, inter, 1, padding=0)
        self.pool = layers.max_pool(spatial_dims, 2) if sub_sample else nn.Identity()
        self.w = nn.Sequential(layers.conv(spatial_dims, inter, in_channels, 1, padding=0),
                               layers.norm(norm, spatial_dims, in_channels, num_groups=num_groups))
        zeroed = self.w[0] if isinstance(self.w[1], nn.Identity) else self.w[1]
        for param in zeroed.parameters():
            nn.init.zeros_(param)

    def forward(self, x: Tensor) -> Tensor:
        batch, heads = x.shape[0], self.num_heads
        theta = self.theta(x).flatten(2)  # [B, C', N]
        phi = self.pool(self.phi(x)).flatten(2)  # [B, C', M]
        g = self.pool(self.g(x)).flatten(2)  # [B, C', M]
        theta, phi, g = (t.reshape(batch * heads, t.shape[1] // heads, t.shape[2]) for t in (theta, phi, g))
        affinity = torch.softmax(theta.transpose(1, 2) @ phi * self.scale, dim=-1)  # [B h, N, M]
        y = (g @ affinity.transpose(1, 2)).reshape([batch, -1] + list(x.shape[2:]))  # [B, C', *spatial]
        return x + self.w(y)
