from __future__ import annotations

from functools import partial

import pytest
import torch

from helpers import assert_grads_finite, random_input
from medseg.blocks.attention import CBAM, ChannelAttention, NonLocalBlock, SpatialAttention, SqueezeExcitation
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters

DIMS = [2, 3]


_input = partial(random_input, size=6)



@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("block_cls", [ChannelAttention, SqueezeExcitation])
def test_channel_gate_broadcasts_over_space(spatial_dims: int, block_cls: type) -> None:
    block = block_cls(spatial_dims, 32)
    x = _input(spatial_dims, 32)
    gate = block.gate(x)
    assert gate.shape == (2, 32, *([1] * spatial_dims))
    assert ((gate > 0) & (gate < 1)).all()
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x * gate)
    assert_grads_finite(block, x)


def _mlp(block: ChannelAttention, pooled: torch.Tensor) -> torch.Tensor:
    """The shared MLP written as matrices on ``[B, C]`` vectors."""
    w1 = block.fc1.weight.flatten(1)
    w2 = block.fc2.weight.flatten(1)
    b1 = block.fc1.bias if block.fc1.bias is not None else 0
    b2 = block.fc2.bias if block.fc2.bias is not None else 0
    return torch.relu(pooled @ w1.T + b1) @ w2.T + b2


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_channel_attention_matches_cbam_equation(spatial_dims: int) -> None:
    block = ChannelAttention(spatial_dims, 32)
    x = _input(spatial_dims, 32)
    flat = x.flatten(2)
    expected = torch.sigmoid(_mlp(block, flat.mean(-1)) + _mlp(block, flat.amax(-1)))
    torch.testing.assert_close(block.gate(x).flatten(1), expected)
    assert block.fc1.bias is None and block.fc2.bias is None


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_squeeze_excitation_matches_its_equation_and_ignores_the_max(spatial_dims: int) -> None:
    block = SqueezeExcitation(spatial_dims, 32)
    x = _input(spatial_dims, 32)
    expected = torch.sigmoid(_mlp(block, x.flatten(2).mean(-1)))
    torch.testing.assert_close(block.gate(x).flatten(1), expected)
    # A zero-mean change moves the maxima but not the averages: SE's gate stays, CBAM's moves.
    bump = torch.zeros_like(x)
    bump.view(2, 32, -1)[..., 0] = 5.0
    bump.view(2, 32, -1)[..., 1] = -5.0
    torch.testing.assert_close(block.gate(x + bump), block.gate(x))
    torch.manual_seed(1)  # an unlucky init can leave both ReLU hidden units dead for the max path
    cbam_channel = ChannelAttention(spatial_dims, 32)
    assert not torch.allclose(cbam_channel.gate(x + bump), cbam_channel.gate(x))


def test_channel_attention_parameter_counts_by_hand() -> None:
    assert count_parameters(ChannelAttention(2, 64)) == 2 * 64 * 4
    assert count_parameters(ChannelAttention(3, 320)) == 2 * 320 * 20  # U-Net v2 level 3: 12,800
    assert count_parameters(ChannelAttention(2, 8)) == 2 * 8 * 1  # hidden width at least 1
    assert count_parameters(ChannelAttention(2, 64, ratio=8)) == 2 * 64 * 8
    assert count_parameters(SqueezeExcitation(2, 64)) == 64 * 4 + 4 + 4 * 64 + 64


def test_channel_attention_rejects_unknown_pool() -> None:
    with pytest.raises(MedsegError):
        ChannelAttention(2, 16, pools=("avg", "median"))


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_spatial_attention_gate_is_constant_over_channels(spatial_dims: int) -> None:
    block = SpatialAttention(spatial_dims)
    x = _input(spatial_dims, 5)
    gate = block.gate(x)
    assert gate.shape == (2, 1, *([6] * spatial_dims))
    assert ((gate > 0) & (gate < 1)).all()
    y = block(x)
    torch.testing.assert_close(y, x * gate)
    ratio = y / x
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert_grads_finite(block, x)


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_spatial_attention_pools_mean_then_max(spatial_dims: int) -> None:
    block = SpatialAttention(spatial_dims, kernel_size=3)
    centre = (0, 0) + (1,) * spatial_dims
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv1.weight[centre] = 1.0  # pass the first pooled map (the mean) through unchanged
    x = _input(spatial_dims, 4)
    torch.testing.assert_close(block.gate(x), torch.sigmoid(x.mean(1, keepdim=True)))
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv1.weight[(0, 1) + centre[2:]] = 1.0  # the second one is the max
    torch.testing.assert_close(block.gate(x), torch.sigmoid(x.amax(1, keepdim=True)))


def test_spatial_attention_parameter_counts() -> None:
    assert count_parameters(SpatialAttention(2)) == 2 * 7 * 7
    assert count_parameters(SpatialAttention(3)) == 2 * 7 * 7 * 7
    assert count_parameters(SpatialAttention(2, kernel_size=3)) == 2 * 3 * 3


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_cbam_is_channel_then_spatial_attention(spatial_dims: int) -> None:
    block = CBAM(spatial_dims, 32, ratio=8, kernel_size=5)
    x = _input(spatial_dims, 32)
    expected = block.spatial_attention(block.channel_attention(x))
    torch.testing.assert_close(block(x), expected)
    assert count_parameters(block) == 2 * 32 * 4 + 2 * 5**spatial_dims
    assert_grads_finite(block, x)


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("sub_sample", [True, False])
def test_non_local_block_is_identity_at_init(spatial_dims: int, sub_sample: bool) -> None:
    block = NonLocalBlock(spatial_dims, 8, sub_sample=sub_sample)
    x = _input(spatial_dims, 8)
    torch.testing.assert_close(block(x), x)
    with torch.no_grad():
        block.w[1].weight.fill_(1.0)
    assert not torch.allclose(block(x), x)


def test_non_local_block_without_norm_zeroes_the_output_conv() -> None:
    block = NonLocalBlock(2, 8, norm=None)
    x = _input(2, 8)
    torch.testing.assert_close(block(x), x)
    assert block.w[0].weight.abs().sum() == 0


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_non_local_block_matches_embedded_gaussian(spatial_dims: int) -> None:
    block = NonLocalBlock(spatial_dims, 8, inter_channels=3, sub_sample=True, norm=None)
    with torch.no_grad():
        torch.nn.init.normal_(block.w[0].weight)
    x = _input(spatial_dims, 8)
    theta = block.theta(x).flatten(2)
    phi = block.pool(block.phi(x)).flatten(2)
    g = block.pool(block.g(x)).flatten(2)
    assert phi.shape[-1] == 3**spatial_dims  # 6 -> 3 along every axis
    f = torch.einsum("bcn,bcm->bnm", theta, phi).softmax(-1)
    y = torch.einsum("bnm,bcm->bcn", f, g).reshape(2, 3, *x.shape[2:])
    torch.testing.assert_close(block(x), x + block.w(y))
    assert_grads_finite(block, x)


def test_non_local_block_parameter_count_by_hand() -> None:
    # theta, phi, g: 1x1 16 -> 8 with bias; W: 1x1 8 -> 16 with bias; BN(16).
    assert count_parameters(NonLocalBlock(2, 16)) == 3 * (16 * 8 + 8) + (8 * 16 + 16) + 2 * 16
