"""Tests of the VGG-16 encoders (medseg.encoders.vgg)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_grads_finite, random_input
from medseg.encoders import create_encoder
from medseg.errors import MedsegError

SMALL = {"widths": (4, 6, 8, 8, 8)}

# Config D (Simonyan & Zisserman 2015, Table 1) as timm's / torchvision's cfgs list it:
# 64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M. ``features`` holds one module per entry
# (conv, ReLU; conv, BN, ReLU with batch norm; 'M' a max-pool), which fixes the index of every conv.
CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def timm_vgg_keys(batch_norm: bool) -> list[str]:
    """The feature keys of timm's vgg16 / vgg16_bn, from the cfg walk of timm/models/vgg.py (_make_layers)."""
    keys, index = [], 0
    for entry in CFG_D:
        if entry == "M":
            index += 1
            continue
        keys += [f"features.{index}.weight", f"features.{index}.bias"]
        if batch_norm:
            keys += [f"features.{index + 1}.{s}" for s in
                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        index += 3 if batch_norm else 2
    return keys


def conv_params(widths: list[int], in_channels: int = 3, batch_norm: bool = False) -> int:
    """3x3 conv weights + bias (+ BN scale and shift) of a chain of convs."""
    total, previous = 0, in_channels
    for w in widths:
        total += previous * w * 9 + w + (2 * w if batch_norm else 0)
        previous = w
    return total


def test_timm_key_walk_matches_hand_list() -> None:
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16: features.{these}.weight
    weights = [k for k in timm_vgg_keys(False) if k.endswith("weight")]
    assert weights == [f"features.{i}.weight" for i in convs]
    bn_convs = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]  # vgg16_bn
    assert [f"features.{i}.weight" for i in bn_convs] == timm_vgg_keys(True)[::7]


@pytest.mark.parametrize(("name", "batch_norm"), [("vgg16", False), ("vgg16_bn", True)])
def test_state_dict_keys_match_timm(name: str, batch_norm: bool) -> None:
    with torch.device("meta"):
        encoder = create_encoder(name)
    keys = list(encoder.state_dict())
    assert keys == timm_vgg_keys(batch_norm)
    assert len(keys) == (91 if batch_norm else 26)
    assert encoder.first_conv == "features.0.weight"


@pytest.mark.parametrize(("name", "expected"), [("vgg16", 14_714_688), ("vgg16_bn", 14_723_136)])
def test_parameter_counts(name: str, expected: int) -> None:
    with torch.device("meta"):
        encoder = create_encoder(name)
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == expected
    chain = [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert conv_params(chain, batch_norm=name.endswith("bn")) == expected


def test_depth_four_stops_after_relu4_3() -> None:
    with torch.device("meta"):
        encoder = create_encoder("vgg16", depth=4)
    chain = [64] * 2 + [128] * 2 + [256] * 3 + [512] * 3
    assert sum(p.numel() for p in encoder.parameters()) == conv_params(chain) == 7_635_264
    assert list(encoder.state_dict()) == timm_vgg_keys(False)[:20]
    assert encoder.channels == [64, 128, 256, 512] and encoder.reductions == [1, 2, 4, 8]


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shapes_channels_reductions(name: str, spatial_dims: int) -> None:
    encoder = create_encoder(name, in_channels=2, spatial_dims=spatial_dims, **SMALL)
    size = 16
    features = encoder(random_input(spatial_dims, channels=2, size=size))
    assert encoder.channels == [4, 6, 8, 8, 8] and encoder.reductions == [1, 2, 4, 8, 16]
    assert encoder.input_multiple == 16
    for f, c, r in zip(features, encoder.channels, encoder.reductions, strict=True):
        assert f.shape == (2, c, *[size // r] * spatial_dims)
        assert f.min() >= 0  # every level is a ReLU output


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth_gives_that_many_levels(depth: int) -> None:
    encoder = create_encoder("vgg16", depth=depth, **SMALL)
    features = encoder(torch.randn(1, 3, 16, 16))
    assert len(features) == len(encoder.channels) == len(encoder.reductions) == depth
    assert features[-1].shape[-1] == 16 >> (depth - 1)


def test_levels_are_relus_before_each_max_pool() -> None:
    encoder = create_encoder("vgg16", depth=2, **SMALL).eval()
    x = torch.randn(1, 3, 8, 8)
    f = encoder.features
    relu1_2 = F.relu(F.conv2d(F.relu(F.conv2d(x, f[0].weight, f[0].bias, padding=1)), f[2].weight, f[2].bias,
                              padding=1))
    pooled = F.max_pool2d(relu1_2, 2)
    relu2_2 = F.relu(F.conv2d(F.relu(F.conv2d(pooled, f[5].weight, f[5].bias, padding=1)), f[7].weight,
                              f[7].bias, padding=1))
    out = encoder(x)
    assert torch.allclose(out[0], relu1_2, atol=1e-6) and torch.allclose(out[1], relu2_2, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_grads_finite(spatial_dims: int) -> None:
    encoder = create_encoder("vgg16_bn", spatial_dims=spatial_dims, in_channels=4, depth=3, **SMALL)

    class Last(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.encoder(x)[-1]

    assert_grads_finite(Last(), random_input(spatial_dims, size=8))


def test_bad_options() -> None:
    with pytest.raises(MedsegError, match="depth"):
        create_encoder("vgg16", depth=0)
    with pytest.raises(MedsegError, match="depth"):
        create_encoder("vgg16", depth=6)
    with pytest.raises(MedsegError, match="widths"):
        create_encoder("vgg16", widths=(4, 8))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_ceil_mode_keeps_the_odd_last_row(spatial_dims: int) -> None:
    size = 19
    x = torch.randn(1, 1, *[size] * spatial_dims)
    floor = create_encoder("vgg16", in_channels=1, spatial_dims=spatial_dims, **SMALL)
    ceil = create_encoder("vgg16", in_channels=1, spatial_dims=spatial_dims, ceil_mode=True, **SMALL)
    assert [f.shape[2] for f in floor(x)] == [19, 9, 4, 2, 1]
    assert [f.shape[2] for f in ceil(x)] == [19, 10, 5, 3, 2]  # ceil(19 / 2 ** i)
    assert ceil.ceil_mode and not floor.ceil_mode and ceil.convs == [2, 2, 3, 3, 3]


def test_vgg_output_stride_8_is_deeplabs_atrous_vgg() -> None:
    plain = create_encoder("vgg16", widths=(4, 6, 8, 8, 8))
    atrous = create_encoder("vgg16", widths=(4, 6, 8, 8, 8), output_stride=8)
    assert atrous.reductions == [1, 2, 4, 8, 8]
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == \
        [(k, v.shape) for k, v in atrous.state_dict().items()]
    pool4 = atrous.features[23]  # the max-pool before conv5_1 (index fixed by timm's layout)
    assert isinstance(pool4, torch.nn.MaxPool2d)
    assert (pool4.kernel_size, pool4.stride, pool4.padding) == (3, 1, 1)
    assert [atrous.features[i].dilation for i in (24, 26, 28)] == [(2, 2)] * 3
    assert atrous.features[21].dilation == (1, 1)
    features = atrous(torch.randn(1, 3, 32, 32))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 4]
    four = create_encoder("vgg16", widths=(4, 6, 8, 8, 8), output_stride=4)
    assert four.reductions == [1, 2, 4, 4, 4] and four.features[28].dilation == (4, 4)
    with pytest.raises(MedsegError, match="power of 2"):
        create_encoder("vgg16", output_stride=12)
