"""Subtraction units and the multi-scale subtraction pyramid of MSNet / M2SNet (2D and 3D).

Zhao et al., "M2SNet: Multi-scale in Multi-scale Subtraction Network for Medical Image Segmentation"
(2023), and its MICCAI 2021 predecessor MSNet:

- SU (MSNet, Eq. 1): ``CBR(|up(A) - B|)`` with ``A`` the coarser feature map upsampled to ``B``'s size.
- MSU (M2SNet, Eq. 2): ``CBR(|A' - B| + sum_k |F_k(A') - F_k(B)|)`` with ``A' = up(A)`` and ``F_k`` a
  fixed all-ones full-channel ``k x k`` filter followed by a learnable BN + ReLU (the "1x1" scale of
  the paper is the plain difference).
- The pyramid (Fig. 2): units between adjacent levels, then between adjacent unit outputs, ...,
  and the complementary features that sum each column of the pyramid.

CBR is a 3x3 convolution (with bias, as in the official code) + batch norm + ReLU; in 3D every
convolution, filter and upsampling is cubic / trilinear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.errors import MedsegError


def conv_bn_relu(spatial_dims: int, in_channels: int, out_channels: int) -> ConvNormAct:
    """The paper's CBR: 3x3 convolution with bias, batch norm, ReLU."""
    return ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm="batch", act="relu", bias=True)


class AllOnesFilter(nn.Module):
    """One intra-level scale of M2SNet: a fixed all-ones ``k x k`` (``k^3`` in 3D) filter over all
    channels (no bias, "same" zero padding), then a learnable batch norm and ReLU.

    The all-ones weight is a non-persistent buffer: it is never trained, never counted as a parameter
    and not stored in state dicts (the official code keeps it outside the module's parameters too).
    The forward does not convolve with it: every output channel of an all-ones full-channel filter is
    the same ``k^d`` window sum of the channel sum, so ``window_sum(Σ_c x)`` gives the identical result
    in O(C + k^d) per voxel instead of O(C² k^d) (M2SNet's 17.5 GMACs at 256 become MSNet's 8.9).
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise MedsegError(f"filter_sizes must be odd and >= 3 (the plain difference is the 1x1 scale), "
                              f"got {kernel_size}")
        self.spatial_dims = spatial_dims
        self.kernel_size = kernel_size
        self.register_buffer("weight", torch.ones(channels, channels, *[kernel_size] * spatial_dims),
                             persistent=False)
        self.norm = layers.norm("batch", spatial_dims, channels)
        self.act = layers.activation("relu")

    def filter(self, x: Tensor) -> Tensor:
        """``conv(x, self.weight, padding=k // 2)`` computed as the window sum of the channel sum."""
        k, pad = self.kernel_size, self.kernel_size // 2
        total = F.pad(x.sum(dim=1, keepdim=True), [pad] * (2 * self.spatial_dims))
        pool = F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d
        window_sum = pool(total, k, stride=1) * float(k**self.spatial_dims)
        return window_sum.expand(-1, self.weight.shape[0], *window_sum.shape[2:])

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.filter(x)))


class MultiScaleFilters(nn.Module):
    """The intra-level scales of an MSU: one :class:`AllOnesFilter` per size in ``filter_sizes``.

    In M2SNet one instance (with its batch norms) is shared by every unit of the pyramid.
    """

    def __init__(self, spatial_dims: int, channels: int, filter_sizes: Sequence[int] = (3, 5)) -> None:
        super().__init__()
        if len(set(filter_sizes)) != len(filter_sizes):
            raise MedsegError(f"filter_sizes must not repeat a size, got {tuple(filter_sizes)}")
        self.filters = nn.ModuleList(AllOnesFilter(spatial_dims, channels, k) for k in filter_sizes)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [f(x) for f in self.filters]


class SubtractionUnit(nn.Module):
    """SU of MSNet (Eq. 1): ``CBR(|up(coarse) - fine|)``, ``up`` bilinear (trilinear in 3D)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(spatial_dims, channels, channels)

    def difference(self, coarse: Tensor, fine: Tensor) -> Tensor:
        """The difference map fed to the CBR; ``coarse`` is already at ``fine``'s size."""
        return torch.abs(coarse - fine)

    def forward(self, coarse: Tensor, fine: Tensor) -> Tensor:
        coarse = layers.resize_to(coarse, list(fine.shape[2:]))
        return self.conv(self.difference(coarse, fine))


class MultiScaleSubtractionUnit(SubtractionUnit):
    """MSU of M2SNet (Eq. 2): ``CBR(|A' - B| + sum_k |F_k(A') - F_k(B)|)`` with ``A' = up(coarse)``.

    Args:
        spatial_dims: 2 or 3.
        channels: channels of both inputs and of the output.
        filter_sizes: sizes of the all-ones filters ``F_k`` (the paper's 3 and 5); ignored when
            ``filters`` is given.
        filters: a :class:`MultiScaleFilters` shared with other units (the same module object, as in
            the official code); ``None`` gives the unit its own.
    """

    def __init__(self, spatial_dims: int, channels: int, filter_sizes: Sequence[int] = (3, 5),
                 filters: MultiScaleFilters | None = None) -> None:
        super().__init__(spatial_dims, channels)
        self.filters = filters if filters is not None else MultiScaleFilters(spatial_dims, channels,
                                                                              filter_sizes)

    def difference(self, coarse: Tensor, fine: Tensor) -> Tensor:
        total = torch.abs(coarse - fine)
        for a, b in zip(self.filters(coarse), self.filters(fine), strict=True):
            total = total + torch.abs(a - b)
        return total


class SubtractionPyramid(nn.Module):
    """The multi-scale subtraction pyramid with complementary-feature aggregation (Fig. 2).

    With ``N`` input levels ``x_1`` (finest) ... ``x_N`` (coarsest), all with ``channels`` channels,
    pyramid level 1 has the units ``U(x_{i+1}, x_i)``, and level ``d`` the units between adjacent
    outputs of level ``d - 1``: ``N(N-1)/2`` units (10 for the paper's 5 levels). Column ``i`` of the
    pyramid holds the outputs whose finest input is ``x_i``; the complementary feature of column ``i``
    is the CBR of the column's sum, except the coarsest column, which holds one unit and is used as is.
    For 5 levels: ``C4 = x54``, ``C3 = CBR(x43 + x543)``, ``C2 = CBR(x32 + x432 + x5432)``,
    ``C1 = CBR(x21 + x321 + x4321 + x54321)``.

    ``refine_top``: in the official code the coarser input of the single unit of the top level
    (``x5432`` for ``x54321``) first passes one more CBR. We apply it to the top unit for any ``N >= 3``
    (for ``N = 2`` the top unit takes an encoder level, which is already reduced by a CBR).

    Args:
        spatial_dims: 2 or 3.
        num_levels: ``N >= 2``.
        channels: channels of every input level and of the outputs.
        filter_sizes: all-ones filter sizes of the MSUs; empty gives MSNet's plain SUs.
        shared_filters: one :class:`MultiScaleFilters` (``self.filters``) shared by all units, as in the
            official code; otherwise each unit has its own.
        refine_top: the extra CBR described above.

    ``forward(features)`` takes the ``N`` maps finest first and returns the ``N - 1`` complementary
    features finest first (at the sizes of ``x_1 .. x_{N-1}``).
    """

    def __init__(self, spatial_dims: int, num_levels: int, channels: int, filter_sizes: Sequence[int] = (),
                 shared_filters: bool = True, refine_top: bool = True) -> None:
        super().__init__()
        if num_levels < 2:
            raise MedsegError(f"the subtraction pyramid needs at least 2 levels, got {num_levels}")
        self.num_levels = num_levels
        self.filters = (MultiScaleFilters(spatial_dims, channels, filter_sizes)
                        if filter_sizes and shared_filters else None)

        def unit() -> SubtractionUnit:
            if not filter_sizes:
                return SubtractionUnit(spatial_dims, channels)
            return MultiScaleSubtractionUnit(spatial_dims, channels, filter_sizes, self.filters)

        # levels[d - 1][i]: the unit of pyramid level d whose finest input lies in column i.
        self.levels = nn.ModuleList(nn.ModuleList(unit() for _ in range(num_levels - d))
                                    for d in range(1, num_levels))
        self.top_refine = conv_bn_relu(spatial_dims, channels, channels) \
            if refine_top and num_levels >= 3 else None
        self.aggregate = nn.ModuleList(conv_bn_relu(spatial_dims, channels, channels)
                                       for _ in range(num_levels - 2))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        if len(features) != self.num_levels:
            raise MedsegError(f"the subtraction pyramid expects {self.num_levels} feature maps, "
                              f"got {len(features)}")
        columns: list[list[Tensor]] = [[] for _ in range(self.num_levels - 1)]
        below = list(features)
        for d, units in enumerate(self.levels):
            outputs: list[Tensor] = []
            for i, unit in enumerate(units):
                coarse = below[i + 1]
                if self.top_refine is not None and d == self.num_levels - 2:
                    coarse = self.top_refine(coarse)
                outputs.append(unit(coarse, below[i]))
            for i, out in enumerate(outputs):
                columns[i].append(out)
            below = outputs
        complementary: list[Tensor] = []
        for agg, column in zip(self.aggregate, columns, strict=False):
            total = column[0]
            for out in column[1:]:
                total = total + out
            complementary.append(agg(total))
        return complementary + [columns[-1][0]]
