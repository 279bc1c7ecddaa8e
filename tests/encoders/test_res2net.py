"""Tests of the Res2Net-50 v1b 26w x 4s encoder (medseg.encoders.res2net)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_encoder_grads_finite, random_input
from medseg.encoders import Encoder, create_encoder
from medseg.encoders.res2net import Res2NetBottleneck
from medseg.errors import MedsegError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
SMALL = {"widths": (8, 8, 16, 16), "stem_width": 4, "depths": (1, 2, 1, 1), "base_width": 32}


@functools.cache
def full_size() -> Encoder:
    with torch.device("meta"):
        return create_encoder("res2net50_v1b_26w_4s")


def bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{s}" for s in BN]


def timm_res2net50d_keys() -> list[str]:
    """Keys of timm's ``res2net50d`` without ``fc`` (timm/models/resnet.py deep stem and downsample_avg,
    timm/models/res2net.py Bottle2neck; the same names as the official v1b model/res2net.py of
    MSNet-M2SNet): ``conv1`` = Sequential(conv, BN, ReLU, conv, BN, ReLU, conv) -> parameters at 0, 1, 3,
    4, 6; blocks conv1/bn1, convs.0-2/bns.0-2 (scale 4 -> 3 branches), conv3/bn3; shortcut
    Sequential(pool, conv, BN) -> downsample.1/.2 on each stage's first block."""
    keys = ["conv1.0.weight", *bn_keys("conv1.1"), "conv1.3.weight", *bn_keys("conv1.4"), "conv1.6.weight",
            *bn_keys("bn1")]
    for stage, depth in enumerate((3, 4, 6, 3), start=1):
        for block in range(depth):
            p = f"layer{stage}.{block}"
            keys += [f"{p}.conv1.weight", *bn_keys(f"{p}.bn1")]
            keys += [f"{p}.convs.{i}.weight" for i in range(3)]
            keys += [k for i in range(3) for k in bn_keys(f"{p}.bns.{i}")]
            keys += [f"{p}.conv3.weight", *bn_keys(f"{p}.bn3")]
            if block == 0:
                keys += [f"{p}.downsample.1.weight", *bn_keys(f"{p}.downsample.2")]
    return keys


def test_state_dict_keys_match_timm() -> None:
    encoder = full_size()
    keys = set(encoder.state_dict())
    expected = timm_res2net50d_keys()
    assert keys == set(expected)
    assert len(expected) == 522  # 18 stem + 16 blocks x 30 + 4 shortcuts x 6
    assert encoder.first_conv == "conv1.0.weight"


def test_layer1_block0_hand_listed() -> None:
    keys = [k for k in full_size().state_dict() if k.startswith("layer1.0.")]
    assert [k for k in keys if k.endswith("weight") and "running" not in k] == [
        "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.convs.0.weight", "layer1.0.convs.1.weight",
        "layer1.0.convs.2.weight", "layer1.0.bns.0.weight", "layer1.0.bns.1.weight", "layer1.0.bns.2.weight",
        "layer1.0.conv3.weight", "layer1.0.bn3.weight", "layer1.0.downsample.1.weight",
        "layer1.0.downsample.2.weight"]


def test_shapes_of_key_tensors() -> None:
    state = full_size().state_dict()
    assert state["conv1.0.weight"].shape == (32, 3, 3, 3)
    assert state["conv1.3.weight"].shape == (32, 32, 3, 3)
    assert state["conv1.6.weight"].shape == (64, 32, 3, 3)
    assert state["bn1.weight"].shape == (64,)
    # 26w x 4s: width = floor(64 * 26 / 64) = 26 per branch, 104 after conv1 in layer1
    assert state["layer1.0.conv1.weight"].shape == (104, 64, 1, 1)
    assert state["layer1.0.convs.2.weight"].shape == (26, 26, 3, 3)
    assert state["layer3.1.convs.0.weight"].shape == (104, 104, 3, 3)  # floor(256 * 26 / 64) = 104
    assert state["layer4.0.conv1.weight"].shape == (832, 1024, 1, 1)
    assert state["layer4.0.downsample.1.weight"].shape == (2048, 1024, 1, 1)


def test_parameter_count() -> None:
    assert sum(p.numel() for p in full_size().parameters() if p.requires_grad) == 23_669_352
    with torch.device("meta"):
        alias = create_encoder("res2net50d")
    assert sum(p.numel() for p in alias.parameters()) == 23_669_352


def test_parameter_count_by_hand_formula() -> None:
    """Independent count: stem + bottlenecks with width = floor(planes * 26 / 64), 3 branches."""
    def bn(c: int) -> int:
        return 2 * c

    total = 3 * 32 * 9 + bn(32) + 32 * 32 * 9 + bn(32) + 32 * 64 * 9 + bn(64)
    inplanes = 64
    for planes, depth in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        width = math.floor(planes * 26 / 64)
        for block in range(depth):
            total += inplanes * 4 * width + bn(4 * width) + 3 * (width * width * 9 + bn(width))
            total += 4 * width * 4 * planes + bn(4 * planes)
            if block == 0:
                total += inplanes * 4 * planes + bn(4 * planes)
            inplanes = 4 * planes
    assert total == 23_669_352


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_small(spatial_dims: int) -> None:
    encoder = create_encoder("res2net50d", in_channels=2, spatial_dims=spatial_dims, **SMALL)
    assert encoder.channels == [8, 32, 32, 64, 64] and encoder.reductions == [2, 4, 8, 16, 32]
    size = 32
    features = encoder(random_input(spatial_dims, channels=2, size=size))
    for f, c, r in zip(features, encoder.channels, encoder.reductions, strict=True):
        assert f.shape == (2, c, *[size // r] * spatial_dims)


def test_default_channels() -> None:
    assert full_size().channels == [64, 256, 512, 1024, 2048]


def test_stem_level_is_deep_stem_before_max_pool() -> None:
    encoder = create_encoder("res2net50d", **SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    c = encoder.conv1
    y = F.relu(c[1](F.conv2d(x, c[0].weight, stride=2, padding=1)))
    y = F.relu(c[4](F.conv2d(y, c[3].weight, padding=1)))
    y = F.relu(encoder.bn1(F.conv2d(y, c[6].weight, padding=1)))
    features = encoder(x)
    assert features[0].shape == (1, 8, 16, 16)
    assert torch.allclose(features[0], y, atol=1e-6)
    assert torch.allclose(features[1], encoder.layer1(F.max_pool2d(y, 3, 2, 1)), atol=1e-6)


def _reference_block(block: Res2NetBottleneck, x: torch.Tensor, stride: int,
                     stage_first: bool) -> torch.Tensor:
    """Eq. 1 of Gao et al. written out with functional ops (eval-mode BN)."""
    def bn(m: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias)

    w = block.width
    out = F.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight)))
    xs = [out[:, i * w:(i + 1) * w] for i in range(4)]
    ys = []
    for i in range(3):
        inp = xs[i] if (i == 0 or stage_first) else xs[i] + ys[-1]
        ys.append(F.relu(bn(block.bns[i], F.conv2d(inp, block.convs[i].weight, stride=stride, padding=1))))
    ys.append(F.avg_pool2d(xs[3], 3, stride, 1) if stage_first else xs[3])
    out = bn(block.bn3, F.conv2d(torch.cat(ys, 1), block.conv3.weight))
    if block.downsample is None:
        shortcut = x
    else:
        pooled = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else x
        shortcut = bn(block.downsample[2], F.conv2d(pooled, block.downsample[1].weight))
    return F.relu(out + shortcut)


@pytest.mark.parametrize(("in_channels", "stride", "stage_first"),
                         [(16, 1, False), (8, 1, True), (8, 2, True)])
def test_block_matches_equation(in_channels: int, stride: int, stage_first: bool) -> None:
    block = Res2NetBottleneck(2, in_channels, 4, stride, base_width=32, scale=4, stage_first=stage_first)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    block.eval()
    assert block.width == 2 and (block.downsample is None) == (in_channels == 16 and stride == 1)
    x = torch.randn(2, in_channels, 9, 9)
    assert torch.allclose(block(x), _reference_block(block, x, stride, stage_first), atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_odd_sizes_work_with_ceil_mode_shortcut(spatial_dims: int) -> None:
    # 36 -> 18 (stem) -> 9 (pool) -> 5 -> 3 -> 2: the shortcut's 2x2 average pool must round up as the
    # strided 3x3 convs do (ceil_mode), or the sum fails
    encoder = create_encoder("res2net50d", spatial_dims=spatial_dims, **SMALL).eval()
    size = 36 if spatial_dims == 2 else 20
    features = encoder(torch.randn(1, 3, *[size] * spatial_dims))
    assert features[-1].shape[2:] == tuple([math.ceil(size / 32)] * spatial_dims)


def test_scale_and_base_width_options() -> None:
    encoder = create_encoder("res2net50d", widths=(8, 8, 8, 8), stem_width=4, depths=(1, 1, 1, 1),
                             base_width=16, scale=2)
    block = encoder.layer1[0]
    assert block.width == 2 and len(block.convs) == 1 and block.conv1.out_channels == 4
    assert encoder(torch.randn(2, 3, 32, 32))[-1].shape == (2, 32, 1, 1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_grads_finite(spatial_dims: int) -> None:
    encoder = create_encoder("res2net50d", spatial_dims=spatial_dims, in_channels=4, **SMALL)

    assert_encoder_grads_finite(encoder, random_input(spatial_dims, size=32))


def test_bad_options() -> None:
    with pytest.raises(MedsegError, match="scale"):
        create_encoder("res2net50d", scale=0)
    with pytest.raises(MedsegError, match="base_width"):
        create_encoder("res2net50d", widths=(1, 1, 1, 1), base_width=26)
