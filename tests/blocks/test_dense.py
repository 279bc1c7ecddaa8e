from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import random_input as _input
from medseg import layers
from medseg.blocks.dense import (
    DenseBlock,
    DenseLayer,
    InceptionBlock,
    NormActConv,
    TransitionDown,
    TransitionUp,
)
from medseg.models.registry import count_parameters

DIMS = [2, 3]




@pytest.mark.parametrize("spatial_dims", DIMS)
def test_norm_act_conv_is_pre_activation(spatial_dims: int) -> None:
    unit = NormActConv(spatial_dims, 4, 6).eval()
    x = _input(spatial_dims, 4)
    expected = unit.conv(torch.relu(unit.norm(x)))
    torch.testing.assert_close(unit(x), expected)
    assert list(dict(unit.named_children())) == ["norm", "act", "conv"]


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_dense_layer_returns_growth_rate_channels(spatial_dims: int) -> None:
    layer = DenseLayer(spatial_dims, 10, 4)
    assert isinstance(layer.bottleneck, nn.Identity)
    assert layer(_input(spatial_dims, 10)).shape == (2, 4, *([8] * spatial_dims))
    bottlenecked = DenseLayer(spatial_dims, 10, 4, bottleneck_channels=16)
    assert bottlenecked.bottleneck.conv.out_channels == 16
    assert bottlenecked.bottleneck.conv.kernel_size == (1,) * spatial_dims
    assert bottlenecked.conv.conv.in_channels == 16
    assert bottlenecked(_input(spatial_dims, 10)).shape[1] == 4


def test_dense_layer_parameter_counts_by_hand() -> None:
    # FC-DenseNet layer: BN(16) + 3x3 conv 16 -> 12 with bias.
    assert count_parameters(DenseLayer(2, 16, 12)) == 2 * 16 + 16 * 12 * 9 + 12
    # DenseNet-BC layer without biases: BN(16), 1x1 16 -> 48, BN(48), 3x3 48 -> 12.
    expected = 2 * 16 + 16 * 48 + 2 * 48 + 48 * 12 * 9
    assert count_parameters(DenseLayer(2, 16, 12, bottleneck_channels=48, bias=False)) == expected
    assert count_parameters(DenseLayer(3, 16, 12)) == 2 * 16 + 16 * 12 * 27 + 12


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_dense_block_concatenates_input_and_new_features(spatial_dims: int) -> None:
    block = DenseBlock(spatial_dims, 6, num_layers=3, growth_rate=4, dropout=0.2).eval()
    x = _input(spatial_dims, 6)
    y = block(x)
    assert block.out_channels == 6 + 3 * 4
    assert y.shape == (2, 18, *([8] * spatial_dims))
    torch.testing.assert_close(y[:, :6], x)
    # Layer i sees the input plus the i earlier outputs.
    assert [layer.conv.conv.in_channels for layer in block.layers] == [6, 10, 14]


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_dense_block_return_only_new(spatial_dims: int) -> None:
    full = DenseBlock(spatial_dims, 6, num_layers=3, growth_rate=4, bottleneck_factor=4).eval()
    only_new = DenseBlock(spatial_dims, 6, num_layers=3, growth_rate=4, bottleneck_factor=4,
                          return_only_new=True).eval()
    only_new.load_state_dict(full.state_dict())
    x = _input(spatial_dims, 6)
    assert only_new.out_channels == 12
    torch.testing.assert_close(only_new(x), full(x)[:, 6:])
    assert full.layers[0].bottleneck.conv.out_channels == 16


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_dense_block_gradients_flow(spatial_dims: int) -> None:
    block = DenseBlock(spatial_dims, 4, num_layers=2, growth_rate=3, bottleneck_factor=2, dropout=0.2)
    x = _input(spatial_dims, 4).requires_grad_()
    block(x).square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_dense_block_dropout_is_active_only_in_training() -> None:
    block = DenseBlock(2, 4, num_layers=1, growth_rate=8, dropout=0.5)
    x = _input(2, 4)
    torch.manual_seed(0)
    new = block.train()(x)[:, 4:]
    assert (new == 0).float().mean() > 0.3
    block.eval()
    torch.testing.assert_close(block(x), block(x))
    assert (block(x)[:, 4:] == 0).float().mean() < 0.3


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_inception_block_branches_and_channels(spatial_dims: int) -> None:
    block = InceptionBlock(spatial_dims, 8, branch1x1=3, branch3x3=(4, 5), branch5x5=(2, 6), pool_proj=7)
    block.eval()
    x = _input(spatial_dims, 8, size=7)
    y = block(x)
    assert block.out_channels == 3 + 5 + 6 + 7
    assert y.shape == (2, 21, *([7] * spatial_dims))
    torch.testing.assert_close(y[:, :3], block.branch1(x))
    torch.testing.assert_close(y[:, 8:14], block.branch3(x))
    # The factorised 5x5 branch: 1x1 then two 3x3 convs.
    kernels = [m.conv.kernel_size[0] for m in block.branch3]
    assert kernels == [1, 3, 3]
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_inception_block_parameter_count_by_hand() -> None:
    # GoogLeNet inception (3a) widths on 192 channels; convs without bias, each followed by BN.
    convs = 192 * 64 + (192 * 96 + 96 * 128 * 9) + (192 * 16 + 16 * 32 * 9 + 32 * 32 * 9) + 192 * 32
    bns = 2 * (64 + 96 + 128 + 16 + 32 + 32 + 32)
    block = InceptionBlock(2, 192)
    assert block.out_channels == 256
    assert count_parameters(block) == convs + bns


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_transition_down_is_bn_relu_1x1_dropout_pool(spatial_dims: int) -> None:
    down = TransitionDown(spatial_dims, 6, dropout=0.2).eval()
    # BN(6) + 1x1 conv 6 -> 6 with bias (Jégou et al. 2017, Table 1)
    assert count_parameters(down) == 2 * 6 + 6 * 6 + 6
    x = _input(spatial_dims, 6, size=9)
    expected = layers.max_pool(spatial_dims, 2)(down.unit.conv(torch.relu(down.unit.norm(x))))
    torch.testing.assert_close(down(x), expected)
    assert down(x).shape[2:] == (4,) * spatial_dims


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("skip_size", [8, 9])
def test_transition_up_crops_the_centre_and_concatenates_up_first(spatial_dims: int, skip_size: int) -> None:
    up = TransitionUp(spatial_dims, 5, 3)
    assert up.up.kernel_size == (3,) * spatial_dims and up.up.stride == (2,) * spatial_dims
    x, skip = _input(spatial_dims, 5, size=4), _input(spatial_dims, 2, size=skip_size)
    out = up(x, skip)
    assert out.shape == (2, 5, *[skip_size] * spatial_dims)
    full = up.up(x)  # unpadded: 2n + 1 = 9
    assert full.shape[2:] == (9,) * spatial_dims
    torch.testing.assert_close(out[:, :3], layers.center_crop(full, [skip_size] * spatial_dims))
    torch.testing.assert_close(out[:, 3:], skip)
