"""Tests of the encoders' ``output_stride`` option (ResNet, VGG) and of Aligned Xception-65."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import assert_encoder_grads_finite
from medseg.encoders import create_encoder, encoder_info
from medseg.errors import MedsegError

SMALL_RESNET = {"widths": (4, 6, 8, 12), "stem_width": 8, "depths": (1, 2, 2, 2)}
# Xception with the Xception-65 layout shrunk: 3 entry blocks, 2 middle, the 2 exit blocks.
SMALL_XCEPTION = [(8, (8, 8, 8), 2), (8, (12, 12, 12), 2), (12, (16, 16, 16), 2), (16, (16, 16, 16), 1),
                  (16, (16, 16, 16), 1), (16, (16, 20, 20), 2), (20, (24, 24, 32), 1)]


def dilations(module: nn.Module) -> tuple[int, ...]:
    return tuple(module.dilation)[:1]


@pytest.mark.parametrize(("output_stride", "reductions"), [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]),
                                                           (8, [2, 4, 8, 8, 8])])
def test_resnet_output_stride_reductions_and_sizes(output_stride: int, reductions: list[int]) -> None:
    encoder = create_encoder("resnet50", output_stride=output_stride, **SMALL_RESNET)
    assert encoder.reductions == reductions and encoder.input_multiple == output_stride
    features = encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [64 // r for r in reductions]


def test_resnet_dilation_follows_torchvision() -> None:
    # torchvision replace_stride_with_dilation=[False, True, True]: the first block of a dilated stage keeps
    # the previous dilation (and has stride 1, as its shortcut), the others use the new one.
    bottleneck = create_encoder("resnet50", output_stride=8, **SMALL_RESNET)
    assert [dilations(b.conv2) for b in bottleneck.layer3] == [(1,), (2,)]
    assert [dilations(b.conv2) for b in bottleneck.layer4] == [(2,), (4,)]
    assert bottleneck.layer3[0].conv2.stride[0] == 1 and bottleneck.layer3[0].downsample[0].stride[0] == 1
    assert bottleneck.layer2[0].conv2.stride[0] == 2
    basic = create_encoder("resnet18", output_stride=16, **SMALL_RESNET)
    assert dilations(basic.layer4[0].conv1) == (1,) and dilations(basic.layer4[0].conv2) == (2,)
    assert dilations(basic.layer4[1].conv1) == (2,) and basic.layer4[0].conv1.stride[0] == 1
    assert dilations(basic.layer3[0].conv1) == (1,) and basic.layer3[0].conv1.stride[0] == 2


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_output_stride_keeps_the_keys_and_shapes(name: str) -> None:
    plain = create_encoder(name, **SMALL_RESNET).state_dict()
    dilated = create_encoder(name, output_stride=8, **SMALL_RESNET).state_dict()
    assert [(k, v.shape) for k, v in plain.items()] == [(k, v.shape) for k, v in dilated.items()]


def test_resnet_output_stride_in_3d_and_errors() -> None:
    encoder = create_encoder("resnet18", spatial_dims=3, output_stride=8, **SMALL_RESNET)
    features = encoder(torch.randn(1, 3, 16, 16, 16))
    assert features[-1].shape[2:] == (2, 2, 2)
    assert_encoder_grads_finite(encoder, torch.randn(2, 3, 16, 16, 16))
    with pytest.raises(MedsegError, match="output_stride must be one of"):
        create_encoder("resnet50", output_stride=4)
    with pytest.raises(MedsegError, match="unexpected keyword argument 'output_stride'"):
        create_encoder("res2net50_v1b_26w_4s", output_stride=8)


def test_vgg_output_stride_8_is_deeplabs_atrous_vgg() -> None:
    plain = create_encoder("vgg16", widths=(4, 6, 8, 8, 8))
    atrous = create_encoder("vgg16", widths=(4, 6, 8, 8, 8), output_stride=8)
    assert atrous.reductions == [1, 2, 4, 8, 8]
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == \
        [(k, v.shape) for k, v in atrous.state_dict().items()]
    pool4 = atrous.features[23]  # the max-pool before conv5_1 (index fixed by timm's layout)
    assert isinstance(pool4, nn.MaxPool2d) and (pool4.kernel_size, pool4.stride, pool4.padding) == (3, 1, 1)
    assert [atrous.features[i].dilation for i in (24, 26, 28)] == [(2, 2)] * 3
    assert atrous.features[21].dilation == (1, 1)
    features = atrous(torch.randn(1, 3, 32, 32))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 4]
    four = create_encoder("vgg16", widths=(4, 6, 8, 8, 8), output_stride=4)
    assert four.reductions == [1, 2, 4, 4, 4] and four.features[28].dilation == (4, 4)
    with pytest.raises(MedsegError, match="power of 2"):
        create_encoder("vgg16", output_stride=12)


# ------------------------------------------------------------------------------------------ Xception


def test_xception65_count_matches_timm() -> None:
    # timm's xception65 has 39.92M parameters with its 1000-class head (2048 * 1000 + 1000).
    with torch.device("meta"):
        encoder = create_encoder("xception65")
    count = sum(p.numel() for p in encoder.parameters())
    assert count == encoder_info("xception65")["params"] == 37_867_312
    assert abs(count + 2048 * 1000 + 1000 - 39_920_000) < 5_000


def test_xception65_keys_follow_timm() -> None:
    with torch.device("meta"):
        keys = list(create_encoder("xception65").state_dict())
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    # Written out from timm/models/xception_aligned.py: ConvNormAct (conv, bn), SeparableConv2d
    # (conv_dw, bn_dw, conv_pw, bn_pw), XceptionModule (shortcut, stack.conv1..3).
    assert keys[:12] == ["stem.0.conv.weight", *[f"stem.0.bn.{s}" for s in bn],
                         "stem.1.conv.weight", *[f"stem.1.bn.{s}" for s in bn]]
    assert "blocks.0.shortcut.conv.weight" in keys and "blocks.0.stack.conv3.conv_dw.weight" in keys
    assert "blocks.19.shortcut.bn.running_var" in keys and "blocks.20.stack.conv3.bn_pw.weight" in keys
    shortcuts = sorted({int(k.split(".")[1]) for k in keys if ".shortcut." in k})
    assert shortcuts == [0, 1, 2, 19]  # the middle flow adds identities, the last block has no skip
    assert max(int(k.split(".")[1]) for k in keys if k.startswith("blocks.")) == 20
    assert not any(k.endswith(".bias") and "conv" in k.split(".")[-2] for k in keys)  # convs without bias


@pytest.mark.parametrize(("output_stride", "reductions"), [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]),
                                                           (8, [2, 4, 8, 8, 8])])
def test_xception_levels_and_output_stride(output_stride: int, reductions: list[int]) -> None:
    encoder = create_encoder("xception65", blocks=SMALL_XCEPTION, output_stride=output_stride)
    assert encoder.channels == [8, 12, 16, 20, 32] and encoder.reductions == reductions
    features = encoder(torch.randn(2, 3, 64, 64))
    expected = [(c, 64 // r, 64 // r) for c, r in zip(encoder.channels, reductions, strict=True)]
    assert [tuple(f.shape[1:]) for f in features] == expected
    last = encoder.blocks[-1].stack.conv1.conv_dw
    assert last.dilation[0] == 32 // output_stride  # later strides became dilation


def test_xception_separable_convs_bn_eps_and_relus() -> None:
    encoder = create_encoder("xception65", blocks=SMALL_XCEPTION)
    conv = encoder.blocks[3].stack.conv1
    assert conv.conv_dw.groups == conv.conv_dw.in_channels and conv.conv_pw.kernel_size == (1, 1)
    assert conv.bn_dw.eps == 1e-3 and isinstance(conv.act_dw, nn.Identity)
    assert isinstance(encoder.blocks[-1].stack.conv1.act_dw, nn.ReLU)  # the last block: ReLU inside
    paper = create_encoder("xception65", blocks=SMALL_XCEPTION, depthwise_relu=True)
    assert isinstance(paper.blocks[3].stack.conv1.act_dw, nn.ReLU)
    assert sum(p.numel() for p in paper.parameters()) == sum(p.numel() for p in encoder.parameters())


def test_xception_one_channel_3d_and_gradients() -> None:
    encoder = create_encoder("xception65", in_channels=1, spatial_dims=3, blocks=SMALL_XCEPTION,
                             output_stride=16)
    features = encoder(torch.randn(2, 1, 16, 16, 16))
    assert features[-1].shape == (2, 32, 1, 1, 1)
    assert_encoder_grads_finite(encoder, torch.randn(2, 1, 16, 16, 16))
    with pytest.raises(MedsegError, match="output_stride"):
        create_encoder("xception65", output_stride=4)
