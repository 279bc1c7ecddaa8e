"""Tests of the Aligned Xception-65 encoder (medseg.encoders.xception)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import assert_encoder_grads_finite
from medseg.encoders import create_encoder, encoder_info
from medseg.errors import MedsegError

# Xception with the Xception-65 layout shrunk: 3 entry blocks, 2 middle, the 2 exit blocks.
SMALL_XCEPTION = [(8, (8, 8, 8), 2), (8, (12, 12, 12), 2), (12, (16, 16, 16), 2), (16, (16, 16, 16), 1),
                  (16, (16, 16, 16), 1), (16, (16, 20, 20), 2), (20, (24, 24, 32), 1)]


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
