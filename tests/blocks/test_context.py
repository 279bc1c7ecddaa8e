from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_grads_finite
from medseg.blocks.context import (
    ASPP,
    DenseASPP,
    DenseAtrousConv,
    PyramidPooling,
    ResidualMultiKernelPooling,
)
from medseg.blocks.conv import DepthwiseSeparableConv
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters

DIMS = [2, 3]
ODD_SIZES = {2: (17, 13), 3: (9, 7, 11)}


def _odd_input(spatial_dims: int, channels: int) -> torch.Tensor:
    return torch.randn(2, channels, *ODD_SIZES[spatial_dims])



@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("separable", [False, True])
def test_aspp_keeps_odd_sizes(spatial_dims: int, separable: bool) -> None:
    block = ASPP(spatial_dims, 6, out_channels=5, rates=(1, 2, 3), separable=separable)
    x = _odd_input(spatial_dims, 6)
    y = block(x)
    assert block.out_channels == 5
    assert y.shape == (2, 5, *ODD_SIZES[spatial_dims])
    assert_grads_finite(block, x)


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_aspp_branch_rates_and_image_pooling(spatial_dims: int) -> None:
    block = ASPP(spatial_dims, 4, out_channels=3, dropout=0.0).eval()
    dilations = [branch.conv.dilation[0] for branch in block.branches]
    assert dilations == [1, 6, 12, 18]
    assert block.branches[0].conv.kernel_size == (1,) * spatial_dims
    separable = ASPP(spatial_dims, 4, out_channels=3, separable=True)
    assert all(isinstance(b, DepthwiseSeparableConv) for b in separable.branches[1:])
    assert [b.depthwise.conv.dilation[0] for b in separable.branches[1:]] == [6, 12, 18]
    # The image-pooling branch gives one value per channel before it is up-sampled.
    x = _odd_input(spatial_dims, 4)
    pooled = block.image_pool(x)
    assert pooled.shape == (2, 3, *([1] * spatial_dims))


def test_aspp_parameter_count_by_hand() -> None:
    c_in, c = 2048, 256
    bn = 2 * c
    branches = (c_in * c + bn) + 3 * (c_in * c * 9 + bn) + (c_in * c + bn)
    project = 5 * c * c + bn
    assert count_parameters(ASPP(2, c_in)) == branches + project == 15_535_104
    # Separable atrous branches: depthwise 3x3 + BN, pointwise 1x1 + BN.
    separable = (8 * 4 + 8) + 3 * ((8 * 9 + 2 * 8) + (8 * 4 + 8)) + (8 * 4 + 8) + (5 * 4 * 4 + 8)
    assert count_parameters(ASPP(2, 8, 4, separable=True)) == separable


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_dense_aspp_channels_and_order(spatial_dims: int) -> None:
    block = DenseASPP(spatial_dims, 6, bottleneck_channels=8, growth_rate=4, rates=(1, 2, 3)).eval()
    x = _odd_input(spatial_dims, 6)
    y = block(x)
    assert block.out_channels == 6 + 3 * 4
    assert y.shape == (2, 18, *ODD_SIZES[spatial_dims])
    torch.testing.assert_close(y[:, -6:], x)  # new features are stacked in front of the input
    torch.testing.assert_close(y[:, -10:-6], block.layers[0](x))
    assert [layer.conv.conv.dilation[0] for layer in block.layers] == [1, 2, 3]
    assert [layer.bottleneck.conv.in_channels for layer in block.layers] == [6, 10, 14]
    assert_grads_finite(block.train(), x)


def test_dense_aspp_defaults_and_parameter_count_by_hand() -> None:
    block = DenseASPP(2, 32)
    dilations = [layer.conv.conv.dilation[0] for layer in block.layers]
    assert dilations == [3, 6, 12, 18, 24]
    assert block.out_channels == 32 + 5 * 64
    expected = 0
    for i in range(5):
        c_in = 32 + 64 * i
        expected += 2 * c_in + (c_in * 128 + 128) + 2 * 128 + (128 * 64 * 9 + 64)
    assert count_parameters(block) == expected


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_pyramid_pooling_keeps_odd_sizes_and_input(spatial_dims: int) -> None:
    block = PyramidPooling(spatial_dims, 8).eval()
    x = _odd_input(spatial_dims, 8)
    y = block(x)
    assert block.out_channels == 16
    assert y.shape == (2, 16, *ODD_SIZES[spatial_dims])
    torch.testing.assert_close(y[:, :8], x)
    # The bin-1 branch is one value per channel, spread over the whole map.
    bin1 = y[:, 8:10].flatten(2)
    torch.testing.assert_close(bin1, bin1[..., :1].expand_as(bin1))
    assert_grads_finite(block.train(), x)


def test_pyramid_pooling_upsamples_with_align_corners() -> None:
    block = PyramidPooling(2, 4, bins=(2,), norm=None, act=None).eval()
    x = torch.randn(1, 4, 9, 9)
    stage = block.stages[0](x)
    expected = F.interpolate(stage, size=(9, 9), mode="bilinear", align_corners=True)
    torch.testing.assert_close(block(x)[:, 4:], expected)
    torch.testing.assert_close(block(x)[:, 4:, 0, 0], stage[:, :, 0, 0])  # corners are kept exactly


def test_pyramid_pooling_parameter_count_by_hand() -> None:
    # PSPNet on ResNet-50: 2048 channels, four bins to 512 each (1x1 conv without bias + BN).
    assert count_parameters(PyramidPooling(2, 2048)) == 4 * (2048 * 512 + 2 * 512) == 4_198_400
    assert PyramidPooling(2, 2048).out_channels == 4096


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_dense_atrous_conv_with_zeroed_convs_is_the_identity(spatial_dims: int) -> None:
    block = DenseAtrousConv(spatial_dims, 4)
    x = _odd_input(spatial_dims, 4)
    with torch.no_grad():
        for param in block.parameters():
            param.zero_()
    # Every branch is ReLU(0) = 0 and the official block applies no activation after the sum.
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_dense_atrous_conv_cascade(spatial_dims: int) -> None:
    block = DenseAtrousConv(spatial_dims, 4)
    assert [c.dilation[0] for c in (block.dilate1, block.dilate2, block.dilate3)] == [1, 3, 5]
    assert all(c.bias.abs().sum() == 0 for c in (block.dilate1, block.dilate2, block.dilate3, block.conv1x1))
    x = _odd_input(spatial_dims, 4)
    d1, d3, d5, c = block.dilate1, block.dilate2, block.dilate3, block.conv1x1
    expected = x + d1(x).relu() + c(d3(x)).relu() + c(d3(d1(x))).relu() + c(d5(d3(d1(x)))).relu()
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, expected)
    assert_grads_finite(block, x)


def test_dense_atrous_conv_parameter_count_by_hand() -> None:
    # CE-Net's DAC on 512 channels: three 3x3 convs and one 1x1 conv, all with bias, shared by the branches.
    assert count_parameters(DenseAtrousConv(2, 512)) == 3 * (512 * 512 * 9 + 512) + 512 * 512 + 512
    assert count_parameters(DenseAtrousConv(3, 4)) == 3 * (4 * 4 * 27 + 4) + 4 * 4 + 4


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_rmp_appends_the_input_after_four_maps(spatial_dims: int) -> None:
    block = ResidualMultiKernelPooling(spatial_dims, 5)
    x = _odd_input(spatial_dims, 5)
    y = block(x)
    assert block.out_channels == 9
    assert y.shape == (2, 9, *ODD_SIZES[spatial_dims])
    torch.testing.assert_close(y[:, 4:], x)
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.bias.fill_(0.25)
    torch.testing.assert_close(block(x)[:, :4], torch.full_like(y[:, :4], 0.25))
    assert_grads_finite(block, x)


def test_rmp_level_maps_are_pooled_convolved_and_upsampled() -> None:
    block = ResidualMultiKernelPooling(2, 3)
    x = torch.randn(1, 3, 12, 12)
    level = block.conv(F.max_pool2d(x, 3, 3))
    expected = F.interpolate(level, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(block(x)[:, 1:2], expected)
    assert count_parameters(ResidualMultiKernelPooling(2, 512)) == 512 + 1  # one shared 1x1 conv


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_rmp_rejects_maps_smaller_than_the_largest_kernel(spatial_dims: int) -> None:
    block = ResidualMultiKernelPooling(spatial_dims, 2)
    with pytest.raises(MedsegError):
        block(torch.randn(1, 2, *([5] * spatial_dims)))


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_summed_aspp_is_the_sum_of_its_atrous_branches(spatial_dims: int) -> None:
    from medseg.blocks.context import SummedASPP

    block = SummedASPP(spatial_dims, 6, 3, rates=(1, 2, 3))
    assert [b.dilation[0] for b in block.branches] == [1, 2, 3]
    assert all(b.kernel_size[0] == 3 and b.bias is not None for b in block.branches)
    x = _odd_input(spatial_dims, 6)
    y = block(x)
    assert y.shape == (2, 3, *ODD_SIZES[spatial_dims])
    torch.testing.assert_close(y, sum(b(x) for b in block.branches))
    assert_grads_finite(block, x)
    vgg = SummedASPP(spatial_dims, 6, 3, rates=(1, 2), hidden_channels=5)
    # fc6 3x3 (6 -> 5), fc7 1x1 (5 -> 5), fc8 1x1 (5 -> 3), all with bias, per branch
    assert count_parameters(vgg) == 2 * (6 * 5 * 3 ** spatial_dims + 5 + 5 * 5 + 5 + 5 * 3 + 3)
    with pytest.raises(MedsegError, match="at least one rate"):
        SummedASPP(spatial_dims, 6, 3, rates=())
