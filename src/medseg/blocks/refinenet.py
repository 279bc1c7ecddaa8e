"""RefineNet's blocks (Lin et al. 2017, "RefineNet: Multi-Path Refinement Networks", Fig. 3), 2D and 3D.

- :class:`ResidualConvUnit` (RCU): ReLU, 3x3 conv, ReLU, 3x3 conv, plus the input (Fig. 3b).
- :class:`MultiResolutionFusion`: a 3x3 conv per input to the output width, up-sampling to the largest
  input's resolution, sum (Fig. 3c).
- :class:`ChainedResidualPooling` (CRP): ReLU, then a chain of blocks each a 3x3 conv and a 5x5 stride-1
  max-pool, every block's output summed to the (ReLU'd) input (Fig. 3d).
- :class:`RefineNetBlock`: two RCUs per input path, the fusion, the CRP and an output RCU (Fig. 3a).

Details follow the official MatConvNet code (guosheng/refinenet ``main/``): the second conv of an RCU, the
fusion and the CRP convs have no bias (``add_dim_reduce_layer``), the first RCU conv has one; the CRP is
the released "improved version" (``do_gen_block_convbeforepool``: conv before pool, 2 blocks, 5x5 pools);
the paper's figure puts the pool first (``conv_first=False``). Up-sampling is bi/trilinear.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medseg import layers
from medseg.errors import MedsegError


class ResidualConvUnit(nn.Module):
    """RCU: ``x + conv(relu(conv(relu(x))))`` with 3x3 convs keeping ``channels`` (Fig. 3b)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv1 = layers.conv(spatial_dims, channels, channels, 3, bias=True)
        self.conv2 = layers.conv(spatial_dims, channels, channels, 3, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.conv1(self.relu(x))))


class MultiResolutionFusion(nn.Module):
    """Multi-resolution fusion (Fig. 3c): a 3x3 conv (no bias) per input to ``out_channels``, each
    up-sampled to the largest input resolution, summed. One input passes through unchanged (RefineNet-4 of
    the cascade; its width must then be ``out_channels``)."""

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        if not in_channels:
            raise MedsegError("MultiResolutionFusion needs at least one input")
        if len(in_channels) == 1 and in_channels[0] != out_channels:
            raise MedsegError(f"a single fusion input must have the output width {out_channels}, "
                              f"got {in_channels[0]}")
        self.convs = nn.ModuleList(
            layers.conv(spatial_dims, c, out_channels, 3, bias=False) for c in in_channels) \
            if len(in_channels) > 1 else nn.ModuleList()

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(self.convs) == 0:
            return features[0]
        size = [max(f.shape[2 + axis] for f in features) for axis in range(features[0].dim() - 2)]
        out = None
        for conv, feature in zip(self.convs, features, strict=True):
            mapped = layers.resize_to(conv(feature), size)
            out = mapped if out is None else out + mapped
        return out  # type: ignore[return-value]


class ChainedResidualPooling(nn.Module):
    """Chained residual pooling (Fig. 3d): ``y = relu(x) + p_1 + ... + p_n`` with ``p_0 = relu(x)`` and
    ``p_i = pool(conv(p_{i-1}))`` (``conv_first``, the official code's improved version) or
    ``conv(pool(p_{i-1}))`` (the paper's figure); 3x3 convs without bias, ``pool_size`` max-pools of
    stride 1 keeping the size."""

    def __init__(self, spatial_dims: int, channels: int, blocks: int = 2, pool_size: int = 5,
                 conv_first: bool = True) -> None:
        super().__init__()
        if blocks < 1 or pool_size < 1 or pool_size % 2 == 0:
            raise MedsegError(f"CRP needs blocks >= 1 and an odd pool_size, got {blocks} and {pool_size}")
        self.relu = nn.ReLU()
        self.convs = nn.ModuleList(layers.conv(spatial_dims, channels, channels, 3, bias=False)
                                   for _ in range(blocks))
        self.pool = layers.max_pool(spatial_dims, pool_size, 1, padding=pool_size // 2)
        self.conv_first = conv_first

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(x)
        out, path = x, x
        for conv in self.convs:
            path = self.pool(conv(path)) if self.conv_first else conv(self.pool(path))
            out = out + path
        return out


class RefineNetBlock(nn.Module):
    """One RefineNet block (Fig. 3a): ``rcus`` RCUs on each input path (at the path's width), the
    multi-resolution fusion to ``out_channels``, chained residual pooling and ``output_rcus`` RCUs.

    Inputs are given coarse to fine or in any order; the output has the largest input resolution.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], out_channels: int, rcus: int = 2,
                 crp_blocks: int = 2, output_rcus: int = 1, pool_size: int = 5,
                 conv_first: bool = True) -> None:
        super().__init__()
        self.paths = nn.ModuleList(
            nn.Sequential(*[ResidualConvUnit(spatial_dims, c) for _ in range(rcus)]) for c in in_channels)
        self.fusion = MultiResolutionFusion(spatial_dims, in_channels, out_channels)
        self.crp = ChainedResidualPooling(spatial_dims, out_channels, crp_blocks, pool_size, conv_first)
        self.output = nn.Sequential(*[ResidualConvUnit(spatial_dims, out_channels)
                                      for _ in range(output_rcus)])
        self.out_channels = out_channels

    def forward(self, features: list[Tensor]) -> Tensor:
        paths = [path(feature) for path, feature in zip(self.paths, features, strict=True)]
        return self.output(self.crp(self.fusion(paths)))
