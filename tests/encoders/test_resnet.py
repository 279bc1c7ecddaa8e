"""Tests of the ResNet-18/34/50 encoders (medseg.encoders.resnet)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_encoder_grads_finite, random_input
from medseg.encoders import Encoder, create_encoder
from medseg.errors import MedsegError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
SMALL = {"widths": (4, 4, 8, 8), "stem_width": 8, "depths": (1, 2, 1, 1)}


@functools.cache
def full_size(name: str) -> Encoder:
    """A default-size encoder on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return create_encoder(name)


def bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{s}" for s in BN]


def timm_resnet_keys(depths: tuple[int, ...], bottleneck: bool) -> list[str]:
    """The state-dict keys of timm's ResNet without ``fc``, from timm/models/resnet.py: ``conv1``/``bn1``
    stem; ``layerN.M`` blocks (BasicBlock conv1/bn1/conv2/bn2, Bottleneck also conv3/bn3, all convs
    without bias); ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN) on each stage's first block when
    the stride or channel count changes (layer1.0 of ResNet-18/34 has none)."""
    keys = ["conv1.weight", *bn_keys("bn1")]
    convs = 3 if bottleneck else 2
    for stage, depth in enumerate(depths, start=1):
        for block in range(depth):
            p = f"layer{stage}.{block}"
            for i in range(1, convs + 1):
                keys += [f"{p}.conv{i}.weight", *bn_keys(f"{p}.bn{i}")]
            if block == 0 and (stage > 1 or bottleneck):
                keys += [f"{p}.downsample.0.weight", *bn_keys(f"{p}.downsample.1")]
    return keys


def test_resnet34_stem_and_first_blocks_hand_listed() -> None:
    # Written out from timm's ResNet/BasicBlock attribute names (timm/models/resnet.py).
    keys = list(full_size("resnet34").state_dict())
    stem = ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
            "bn1.num_batches_tracked"]
    layer1_0 = ["layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias",
                "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var", "layer1.0.bn1.num_batches_tracked",
                "layer1.0.conv2.weight", "layer1.0.bn2.weight", "layer1.0.bn2.bias",
                "layer1.0.bn2.running_mean", "layer1.0.bn2.running_var", "layer1.0.bn2.num_batches_tracked"]
    assert keys[:18] == stem + layer1_0
    assert [k for k in keys if k.startswith("layer2.0.downsample")] == [
        "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer2.0.downsample.1.bias",
        "layer2.0.downsample.1.running_mean", "layer2.0.downsample.1.running_var",
        "layer2.0.downsample.1.num_batches_tracked"]
    assert len(keys) == 216  # 6 stem + 16 blocks x 12 + 3 shortcuts x 6
    assert not any(k.startswith("layer1.0.downsample") for k in keys)


@pytest.mark.parametrize(("name", "depths", "bottleneck", "count"), [
    ("resnet18", (2, 2, 2, 2), False, 120), ("resnet34", (3, 4, 6, 3), False, 216),
    ("resnet50", (3, 4, 6, 3), True, 318)])
def test_state_dict_keys_match_timm(name: str, depths: tuple[int, ...], bottleneck: bool, count: int) -> None:
    encoder = full_size(name)
    keys = list(encoder.state_dict())
    assert keys == timm_resnet_keys(depths, bottleneck)
    assert len(keys) == count
    assert encoder.first_conv == "conv1.weight"


def test_resnet50_shapes_of_key_tensors() -> None:
    state = full_size("resnet50").state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # the stride sits on the 3x3 (v1.5)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["layer3.0.downsample.0.weight"].shape == (1024, 512, 1, 1)


@pytest.mark.parametrize(("name", "expected"), [("resnet18", 11_176_512), ("resnet34", 21_284_672),
                                                ("resnet50", 23_508_032)])
def test_parameter_counts(name: str, expected: int) -> None:
    encoder = full_size(name)
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize(("name", "channels"), [("resnet18", [64, 64, 128, 256, 512]),
                                                ("resnet34", [64, 64, 128, 256, 512]),
                                                ("resnet50", [64, 256, 512, 1024, 2048])])
def test_default_channels(name: str, channels: list[int]) -> None:
    encoder = full_size(name)
    assert encoder.channels == channels and encoder.reductions == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_small(name: str, spatial_dims: int) -> None:
    encoder = create_encoder(name, in_channels=1, spatial_dims=spatial_dims, **SMALL)
    expansion = 4 if name == "resnet50" else 1
    assert encoder.channels == [8, 4 * expansion, 4 * expansion, 8 * expansion, 8 * expansion]
    size = 32
    features = encoder(random_input(spatial_dims, channels=1, size=size))
    assert len(features) == 5
    for f, c, r in zip(features, encoder.channels, encoder.reductions, strict=True):
        assert f.shape == (2, c, *[size // r] * spatial_dims)


def test_stem_level_is_taken_before_the_max_pool() -> None:
    encoder = create_encoder("resnet34", **SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    stem = F.relu(encoder.bn1(F.conv2d(x, encoder.conv1.weight, stride=2, padding=3)))
    features = encoder(x)
    assert torch.allclose(features[0], stem, atol=1e-6)
    assert torch.allclose(features[1], encoder.layer1(F.max_pool2d(stem, 3, 2, 1)), atol=1e-6)


def test_3d_uses_cubic_kernels() -> None:
    encoder = create_encoder("resnet50", spatial_dims=3, **SMALL)
    assert encoder.conv1.weight.shape == (8, 3, 7, 7, 7)
    assert isinstance(encoder.maxpool, torch.nn.MaxPool3d)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_grads_finite(spatial_dims: int) -> None:
    encoder = create_encoder("resnet50", spatial_dims=spatial_dims, in_channels=4, **SMALL)

    assert_encoder_grads_finite(encoder, random_input(spatial_dims, size=32))


def test_bad_options() -> None:
    with pytest.raises(MedsegError, match="widths"):
        create_encoder("resnet18", widths=(4, 8))
    with pytest.raises(MedsegError, match="positive"):
        create_encoder("resnet18", depths=(1, 0, 1, 1))
