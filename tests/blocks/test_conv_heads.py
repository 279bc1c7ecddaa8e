from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import random_input as _input
from medseg.blocks.conv import ConvNormAct, DepthwiseSeparableConv, DoubleConv
from medseg.blocks.heads import DeepSupervisionHeads, SegmentationHead
from medseg.models.registry import count_parameters

DIMS = [2, 3]




@pytest.mark.parametrize("spatial_dims", DIMS)
def test_conv_norm_act_structure_and_bias(spatial_dims: int) -> None:
    block = ConvNormAct(spatial_dims, 3, 5)
    assert list(dict(block.named_children())) == ["conv", "norm", "act"]
    assert block.conv.bias is None  # the norm's shift replaces it
    assert isinstance(block.norm, nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)
    y = block(_input(spatial_dims, 3))
    assert y.shape == (2, 5, *([8] * spatial_dims)) and (y >= 0).all()
    plain = ConvNormAct(spatial_dims, 3, 5, norm=None, act=None)
    assert plain.conv.bias is not None and isinstance(plain.norm, nn.Identity)
    assert ConvNormAct(spatial_dims, 3, 5, bias=True).conv.bias is not None


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_conv_norm_act_stride_dilation_dropout(spatial_dims: int) -> None:
    x = _input(spatial_dims, 3, size=9)
    assert ConvNormAct(spatial_dims, 3, 4, stride=2)(x).shape[2:] == (5,) * spatial_dims
    assert ConvNormAct(spatial_dims, 3, 4, dilation=3)(x).shape[2:] == (9,) * spatial_dims
    assert ConvNormAct(spatial_dims, 3, 4, padding="valid")(x).shape[2:] == (7,) * spatial_dims
    with_drop = ConvNormAct(spatial_dims, 3, 4, dropout=0.3)
    assert isinstance(with_drop.drop, nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d)
    assert not hasattr(ConvNormAct(spatial_dims, 3, 4), "drop")


def test_conv_norm_act_parameter_count_by_hand() -> None:
    assert count_parameters(ConvNormAct(2, 3, 8)) == 3 * 8 * 9 + 2 * 8
    assert count_parameters(ConvNormAct(3, 3, 8, norm=None)) == 3 * 8 * 27 + 8
    assert count_parameters(ConvNormAct(2, 3, 8, act="prelu")) == 3 * 8 * 9 + 2 * 8 + 8


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_double_conv(spatial_dims: int) -> None:
    block = DoubleConv(spatial_dims, 3, 8, mid_channels=5)
    assert block[0].conv.out_channels == 5 and block[1].conv.in_channels == 5
    x = _input(spatial_dims, 3).requires_grad_()
    y = block(x)
    assert y.shape == (2, 8, *([8] * spatial_dims))
    y.mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    valid = DoubleConv(spatial_dims, 3, 8, padding="valid", norm=None)
    assert valid(_input(spatial_dims, 3, size=10)).shape[2:] == (6,) * spatial_dims
    # U-Net's first level: 3x3 1 -> 64 and 64 -> 64, with biases, no BN.
    assert count_parameters(DoubleConv(2, 1, 64, norm=None)) == (9 * 64 + 64) + (64 * 64 * 9 + 64)


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_depthwise_separable_conv(spatial_dims: int) -> None:
    block = DepthwiseSeparableConv(spatial_dims, 4, 6, dilation=2)
    assert block.depthwise.conv.groups == 4
    assert block.depthwise.conv.dilation == (2,) * spatial_dims
    assert block.pointwise.conv.kernel_size == (1,) * spatial_dims
    assert isinstance(block.depthwise.act, nn.Identity)  # no activation between the two convs by default
    y = block(_input(spatial_dims, 4, size=7))
    assert y.shape == (2, 6, *([7] * spatial_dims))
    k = 3**spatial_dims
    assert count_parameters(block) == (4 * k + 2 * 4) + (4 * 6 + 2 * 6)
    no_depthwise_norm = DepthwiseSeparableConv(spatial_dims, 4, 6, norm_depthwise=False)
    assert count_parameters(no_depthwise_norm) == 4 * k + 4 + 36


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_segmentation_head(spatial_dims: int) -> None:
    head = SegmentationHead(spatial_dims, 8, 3, upsample=2, dropout=0.1)
    y = head(_input(spatial_dims, 8, size=4))
    assert y.shape == (2, 3, *([8] * spatial_dims))
    assert isinstance(head[0], nn.Dropout) and isinstance(head[-1], nn.Upsample)
    plain = SegmentationHead(spatial_dims, 8, 3)
    assert len(plain) == 1 and count_parameters(plain) == 8 * 3 + 3


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_deep_supervision_heads(spatial_dims: int) -> None:
    heads = DeepSupervisionHeads(spatial_dims, [8, 4], num_classes=2)
    features = [_input(spatial_dims, 8, size=4), _input(spatial_dims, 4, size=8)]
    outputs = heads(features)
    assert [tuple(o.shape[1:]) for o in outputs] == [(2,) + (4,) * spatial_dims, (2,) + (8,) * spatial_dims]
    resized = heads(features, output_size=[16] * spatial_dims)
    assert all(o.shape == (2, 2, *([16] * spatial_dims)) for o in resized)
    torch.testing.assert_close(resized[1], torch.nn.functional.interpolate(
        outputs[1], size=[16] * spatial_dims, mode="bilinear" if spatial_dims == 2 else "trilinear"))
    assert count_parameters(heads) == (8 * 2 + 2) + (4 * 2 + 2)
    with pytest.raises(ValueError):
        heads(features[:1])


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_fcn_head_is_torchvisions_auxiliary_head(spatial_dims: int) -> None:
    from medseg.blocks.heads import FCNHead

    head = FCNHead(spatial_dims, 16, 3)
    assert head[0].conv.kernel_size[0] == 3 and head[0].conv.out_channels == 4 and head[0].conv.bias is None
    assert isinstance(head[1], nn.Dropout) and head[1].p == 0.1
    y = head(_input(spatial_dims, 16))
    assert y.shape == (2, 3, *([8] * spatial_dims))
    # torchvision FCNHead(1024, 21): 3x3 1024 -> 256 (no bias), BN 256, 1x1 256 -> 21 with bias
    assert count_parameters(FCNHead(2, 1024, 21)) == 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21
