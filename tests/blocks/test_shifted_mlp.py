"""UNeXt's shifted MLP: the axial shift on hand-made tensors, the 2D/3D shift order, block contracts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers import assert_grads_finite, random_input
from medseg.blocks.shifted_mlp import OverlapPatchEmbed, ShiftedMLP, ShiftedMLPBlock, shift_tokens
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters


def roll_reference(x: Tensor, dim: int, shift_size: int = 5) -> Tensor:
    """The official recipe on a channels-first tensor: zero-pad every spatial axis by shift_size // 2,
    chunk the channels, roll chunk g by g - pad along ``dim``, crop back."""
    pad = shift_size // 2
    spatial = x.dim() - 2
    padded = F.pad(x, [pad] * (2 * spatial))
    chunks = torch.chunk(padded, shift_size, 1)
    rolled = torch.cat([torch.roll(c, s, dim) for c, s in zip(chunks, range(-pad, pad + 1), strict=False)], 1)
    for axis in range(2, x.dim()):
        rolled = rolled.narrow(axis, pad, x.shape[axis])
    return rolled


def test_shift_by_hand_one_channel_per_group() -> None:
    """Five channels, one per group: channel g moves by g - 2 along H, zeros enter at the border."""
    x = torch.tensor([[10.0 * c + h + 1 for h in range(4)] for c in range(5)]).view(1, 5, 4, 1)
    expected = torch.tensor([
        [3.0, 4.0, 0.0, 0.0],      # shift -2: out[i] = x[i + 2]
        [12.0, 13.0, 14.0, 0.0],   # shift -1
        [21.0, 22.0, 23.0, 24.0],  # shift 0
        [0.0, 31.0, 32.0, 33.0],   # shift +1
        [0.0, 0.0, 41.0, 42.0],    # shift +2
    ]).view(1, 5, 4, 1)
    assert torch.equal(shift_tokens(x, 2), expected)


def test_shift_by_hand_groups_of_two_along_width_channels_last() -> None:
    """Six channels in groups of two, channels-last layout [B, H, W, C], shift along W with size 3."""
    # x[w, c] = 6 w + c + 1 with W = 4, C = 6 (groups (c0, c1) -1, (c2, c3) 0, (c4, c5) +1), H = 1
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                        [7.0, 8.0, 9.0, 10.0, 11.0, 12.0],
                        [13.0, 14.0, 15.0, 16.0, 17.0, 18.0],
                        [19.0, 20.0, 21.0, 22.0, 23.0, 24.0]]]])  # [B=1, H=1, W=4, C=6]
    expected = torch.tensor([[[[7.0, 8.0, 3.0, 4.0, 0.0, 0.0],
                               [13.0, 14.0, 9.0, 10.0, 5.0, 6.0],
                               [19.0, 20.0, 15.0, 16.0, 11.0, 12.0],
                               [0.0, 0.0, 21.0, 22.0, 17.0, 18.0]]]])
    assert torch.equal(shift_tokens(x, 2, shift_size=3, channel_dim=-1), expected)


@pytest.mark.parametrize("channels", [256, 128, 160, 32])
@pytest.mark.parametrize("dim", [2, 3])
def test_shift_matches_pad_roll_crop_2d(channels: int, dim: int) -> None:
    """Uneven chunks (256 -> 52, 52, 52, 52, 48) split exactly as the official torch.chunk."""
    x = torch.randn(2, channels, 6, 7)
    assert torch.equal(shift_tokens(x, dim), roll_reference(x, dim))


@pytest.mark.parametrize("dim", [2, 3, 4])
def test_shift_matches_pad_roll_crop_3d(dim: int) -> None:
    x = torch.randn(1, 20, 5, 6, 7)
    assert torch.equal(shift_tokens(x, dim), roll_reference(x, dim))


def test_shift_size_one_is_identity_and_zero_is_an_error() -> None:
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(shift_tokens(x, 2, shift_size=1), x)
    with pytest.raises(MedsegError, match="shift_size"):
        shift_tokens(x, 2, shift_size=0)


def _identity_mlp(spatial_dims: int, channels: int) -> ShiftedMLP:
    """A ShiftedMLP whose fc1, fc2, depthwise conv and activation are identities: only the shifts remain."""
    mlp = ShiftedMLP(spatial_dims, channels)
    with torch.no_grad():
        for fc in (mlp.fc1, mlp.fc2):
            fc.weight.copy_(torch.eye(channels))
            fc.bias.zero_()
        mlp.dwconv.weight.zero_()
        mlp.dwconv.weight[(slice(None), 0, *[1] * spatial_dims)] = 1.0
        mlp.dwconv.bias.zero_()
    mlp.act = nn.Identity()
    return mlp


def test_2d_order_is_height_then_width() -> None:
    x = torch.randn(2, 10, 6, 7)  # channels-first reference, channels-last into the MLP
    out = _identity_mlp(2, 10)(x.movedim(1, -1)).movedim(-1, 1)
    assert torch.allclose(out, roll_reference(roll_reference(x, 2), 3))
    assert not torch.allclose(out, roll_reference(x, 2))  # both axes are shifted


def test_3d_order_is_depth_then_height_then_width() -> None:
    """3D: D before fc1, then H and W before fc2 (every axis shifted once)."""
    x = torch.randn(1, 10, 5, 6, 7)
    out = _identity_mlp(3, 10)(x.movedim(1, -1)).movedim(-1, 1)
    expected = roll_reference(roll_reference(roll_reference(x, 2), 3), 4)
    assert torch.allclose(out, expected)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_first_axis_is_shifted_before_fc1_the_others_after(spatial_dims: int) -> None:
    """With fc1 mixing the channels the order is observable: first axis (H in 2D, D in 3D) before fc1,
    the remaining axes after it."""
    mlp = _identity_mlp(spatial_dims, 5)
    mix = torch.randn(5, 5)
    with torch.no_grad():
        mlp.fc1.weight.copy_(mix)
    x = torch.randn(1, 5, *[6] * spatial_dims)
    y = roll_reference(x, 2)
    y = (y.movedim(1, -1) @ mix.T).movedim(-1, 1)
    for axis in range(3, spatial_dims + 2):
        y = roll_reference(y, axis)
    assert torch.allclose(mlp(x.movedim(1, -1)).movedim(-1, 1), y, atol=1e-5)
    z = (x.movedim(1, -1) @ mix.T).movedim(-1, 1)  # every shift after fc1 would give something else
    for axis in range(2, spatial_dims + 2):
        z = roll_reference(z, axis)
    assert not torch.allclose(mlp(x.movedim(1, -1)).movedim(-1, 1), z, atol=1e-3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_block_keeps_shape_and_backpropagates(spatial_dims: int) -> None:
    block = ShiftedMLPBlock(spatial_dims, 10)
    x = random_input(spatial_dims, channels=10, size=8)
    assert block(x).shape == x.shape
    assert_grads_finite(block, x)


def test_block_is_residual() -> None:
    """With fc2 at zero the block is the identity (x + 0)."""
    block = ShiftedMLPBlock(2, 10)
    with torch.no_grad():
        block.mlp.fc2.weight.zero_()
        block.mlp.fc2.bias.zero_()
    x = torch.randn(2, 10, 8, 8)
    assert torch.equal(block(x), x)


def test_block_parameters_by_hand() -> None:
    """LN 2C + fc1 C^2+C + depthwise 3x3 9C+C + fc2 C^2+C (MLP ratio 1); 3D: a 3x3x3 depthwise kernel."""
    c = 160
    assert count_parameters(ShiftedMLPBlock(2, c)) == 2 * c + 2 * (c * c + c) + 10 * c == 53_440
    assert count_parameters(ShiftedMLPBlock(3, c)) == 53_440 + 18 * c
    assert count_parameters(ShiftedMLPBlock(2, 8, mlp_ratio=2.0)) == 16 + (8 * 16 + 16) + 160 + (16 * 8 + 8)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_overlap_patch_embed_halves_and_normalises(spatial_dims: int) -> None:
    embed = OverlapPatchEmbed(spatial_dims, 4, 12)
    x = random_input(spatial_dims, channels=4, size=8)
    out = embed(x)
    assert out.shape == (2, 12, *[4] * spatial_dims)
    # LayerNorm over the channels at every position (weight 1, bias 0 at initialisation)
    assert torch.allclose(out.mean(1), torch.zeros(()), atol=1e-5)
    assert torch.allclose(out.var(1, unbiased=False), torch.ones(()), atol=1e-3)
    assert count_parameters(embed) == 4 * 12 * 3**spatial_dims + 12 + 2 * 12
    assert embed(torch.randn(1, 4, *[7] * spatial_dims)).shape[2:] == (4,) * spatial_dims  # ceil(7 / 2)
