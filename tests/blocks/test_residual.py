from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import random_input as _input
from medseg.blocks.residual import BottleneckBlock, ResidualBlock
from medseg.models.registry import count_parameters

DIMS = [2, 3]




@pytest.mark.parametrize("spatial_dims", DIMS)
def test_basic_block_identity_shortcut_when_shapes_agree(spatial_dims: int) -> None:
    block = ResidualBlock(spatial_dims, 8, 8)
    assert block.downsample is None
    x = _input(spatial_dims, 8)
    y = block(x)
    assert y.shape == x.shape
    assert (y >= 0).all()  # activation after the sum


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("block_cls", [ResidualBlock, BottleneckBlock])
def test_projection_shortcut_and_stride_two_halves_size(spatial_dims: int, block_cls: type) -> None:
    block = block_cls(spatial_dims, 8, 16, stride=2)
    conv, norm = block.downsample[0], block.downsample[1]
    expected_conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    expected_norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    assert isinstance(conv, expected_conv) and isinstance(norm, expected_norm)
    assert conv.kernel_size == (1,) * spatial_dims and conv.stride == (2,) * spatial_dims
    assert conv.bias is None
    x = _input(spatial_dims, 8, size=9)
    y = block(x)
    assert y.shape == (2, block.out_channels, *([5] * spatial_dims))


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_channel_change_alone_needs_projection(spatial_dims: int) -> None:
    assert ResidualBlock(spatial_dims, 8, 16).downsample is not None
    assert BottleneckBlock(spatial_dims, 8, 4).downsample is not None  # 8 -> 16 channels
    assert BottleneckBlock(spatial_dims, 16, 4).downsample is None  # 16 -> 16 channels


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("block_cls", [ResidualBlock, BottleneckBlock])
def test_gradients_flow(spatial_dims: int, block_cls: type) -> None:
    block = block_cls(spatial_dims, 8, 8, stride=2)
    x = _input(spatial_dims, 8).requires_grad_()
    block(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, param in block.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_zero_init_last_makes_block_act_of_shortcut(spatial_dims: int) -> None:
    block = ResidualBlock(spatial_dims, 8, 8, zero_init_last=True).eval()
    x = _input(spatial_dims, 8)
    torch.testing.assert_close(block(x), torch.relu(x))
    bottleneck = BottleneckBlock(spatial_dims, 16, 4, zero_init_last=True).eval()
    x = _input(spatial_dims, 16)
    torch.testing.assert_close(bottleneck(x), torch.relu(x))


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_dilation_keeps_size_and_sets_the_convs(spatial_dims: int) -> None:
    block = ResidualBlock(spatial_dims, 8, 8, dilation=2, first_dilation=1)
    assert block.conv1.dilation == (1,) * spatial_dims
    assert block.conv2.dilation == (2,) * spatial_dims
    x = _input(spatial_dims, 8, size=7)
    assert block(x).shape == x.shape
    bottleneck = BottleneckBlock(spatial_dims, 16, 4, dilation=4)
    assert bottleneck.conv2.dilation == (4,) * spatial_dims
    assert bottleneck(_input(spatial_dims, 16, size=7)).shape == (2, 16, *([7] * spatial_dims))


def test_timm_state_dict_names() -> None:
    basic = set(ResidualBlock(2, 64, 128, stride=2).state_dict())
    bn = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    expected = {"conv1.weight", "conv2.weight", "downsample.0.weight"}
    expected |= {f"{n}.{k}" for n in ("bn1", "bn2", "downsample.1") for k in bn}
    assert basic == expected
    bottleneck = set(BottleneckBlock(2, 64, 64).state_dict())
    assert bottleneck == expected | {"conv3.weight"} | {f"bn3.{k}" for k in bn}


def test_parameter_counts_by_hand() -> None:
    # ResNet-18 layer1.0: two 3x3 convs 64->64 without bias, two BNs.
    assert count_parameters(ResidualBlock(2, 64, 64)) == 2 * 64 * 64 * 9 + 2 * 2 * 64
    # ResNet-50 layer1.0: 1x1 64->64, 3x3 64->64, 1x1 64->256, projection 64->256, four BNs.
    expected = 64 * 64 + 64 * 64 * 9 + 64 * 256 + 64 * 256 + 2 * (64 + 64 + 256 + 256)
    assert count_parameters(BottleneckBlock(2, 64, 64)) == expected == 75_008
    assert count_parameters(ResidualBlock(3, 8, 8)) == 2 * 8 * 8 * 27 + 2 * 2 * 8


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_resnext_groups_and_width(spatial_dims: int) -> None:
    block = BottleneckBlock(spatial_dims, 32, 16, groups=4, base_width=16)  # width = 16 * 16/64 * 4 = 16
    assert block.conv2.groups == 4 and block.conv2.in_channels == 16
    assert block.out_channels == 64
    assert block(_input(spatial_dims, 32, size=6)).shape == (2, 64, *([6] * spatial_dims))


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_group_norm_and_no_norm_options(spatial_dims: int) -> None:
    block = ResidualBlock(spatial_dims, 8, 16, norm="group", act="leaky_relu", num_groups=4)
    assert isinstance(block.bn1, nn.GroupNorm) and block.bn1.num_groups == 4
    assert isinstance(block.act1, nn.LeakyReLU)
    plain = ResidualBlock(spatial_dims, 8, 8, norm=None)
    assert isinstance(plain.bn1, nn.Identity) and plain.conv1.bias is not None
    x = _input(spatial_dims, 8, size=4)
    assert block(x).shape[1] == 16 and plain(x).shape == x.shape
