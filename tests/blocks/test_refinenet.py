"""RefineNet's blocks: residual conv unit, multi-resolution fusion, chained residual pooling, the block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.blocks.refinenet import (
    ChainedResidualPooling,
    MultiResolutionFusion,
    RefineNetBlock,
    ResidualConvUnit,
)
from medseg.errors import MedsegError


def test_rcu_is_relu_conv_relu_conv_plus_identity() -> None:
    torch.manual_seed(0)
    rcu = ResidualConvUnit(2, 4)
    assert rcu.conv1.bias is not None and rcu.conv2.bias is None  # as the official code
    x = torch.randn(2, 4, 6, 6)
    expected = x + F.conv2d(F.relu(F.conv2d(F.relu(x), rcu.conv1.weight, rcu.conv1.bias, padding=1)),
                            rcu.conv2.weight, padding=1)
    torch.testing.assert_close(rcu(x), expected)


def test_fusion_convs_upsamples_to_the_largest_and_sums() -> None:
    torch.manual_seed(0)
    fusion = MultiResolutionFusion(2, [6, 4], 3)
    coarse, fine = torch.randn(2, 6, 4, 4), torch.randn(2, 4, 8, 8)
    out = fusion([coarse, fine])
    up = F.interpolate(F.conv2d(coarse, fusion.convs[0].weight, padding=1), size=(8, 8), mode="bilinear",
                       align_corners=False)
    torch.testing.assert_close(out, up + F.conv2d(fine, fusion.convs[1].weight, padding=1))
    assert all(conv.bias is None for conv in fusion.convs)


def test_single_input_fusion_passes_through() -> None:
    x = torch.randn(1, 5, 4, 4)
    assert MultiResolutionFusion(2, [5], 5)([x]) is x
    with pytest.raises(MedsegError, match="output width"):
        MultiResolutionFusion(2, [4], 5)


@pytest.mark.parametrize("conv_first", [True, False])
def test_crp_chains_pools_and_sums(conv_first: bool) -> None:
    crp = ChainedResidualPooling(2, 3, blocks=2, pool_size=5, conv_first=conv_first)
    with torch.no_grad():
        for conv in crp.convs:  # a negated identity: max-pooling does not commute with it
            conv.weight.zero_()
            for c in range(3):
                conv.weight[c, c, 1, 1] = -1.0
    x = torch.randn(2, 3, 7, 7)
    r = F.relu(x)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(t, 5, 1, 2)

    p1 = pool(-r) if conv_first else -pool(r)
    p2 = pool(-p1) if conv_first else -pool(p1)
    torch.testing.assert_close(crp(x), r + p1 + p2)


def test_crp_bad_options() -> None:
    with pytest.raises(MedsegError, match="odd pool_size"):
        ChainedResidualPooling(2, 3, pool_size=4)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_block_output_width_and_resolution(spatial_dims: int) -> None:
    block = RefineNetBlock(spatial_dims, [8, 4], 4)
    assert [len(path) for path in block.paths] == [2, 2] and len(block.output) == 1
    coarse = torch.randn(2, 8, *[2] * spatial_dims)
    fine = torch.randn(2, 4, *[4] * spatial_dims)
    out = block([coarse, fine])
    assert out.shape == (2, 4, *[4] * spatial_dims)
    out.sum().backward()
    assert all(p.grad is not None for p in block.parameters())
