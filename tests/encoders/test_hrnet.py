"""Tests of the HRNet encoders (medseg.encoders.hrnet)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

from helpers import assert_encoder_grads_finite
from medseg.encoders import Encoder, HRNetEncoder, create_encoder, encoder_info, load_encoder_weights
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters

SMALL = {"width": 4, "stem_width": 8, "stage1_channels": 4}


@functools.cache
def full_size(name: str, spatial_dims: int = 2) -> Encoder:
    """A default-size encoder on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return create_encoder(name, spatial_dims=spatial_dims)


# Backbone = the spec's HRNetV2 total (19 classes) minus its head 1x1 (15C -> 15C, bias) + BN + 1x1 (-> 19).
def _head(c15: int) -> int:
    return c15 * c15 + c15 + 2 * c15 + c15 * 19 + 19


@pytest.mark.parametrize(("name", "total", "c"), [
    ("hrnet_w48", 65_859_379, 48), ("hrnet_w18", 9_641_119, 18),
    ("hrnet_w18_small", 1_540_819, 16), ("hrnet_w18_small_v2", 3_939_579, 18)])
def test_parameter_counts_match_the_spec(name: str, total: int, c: int) -> None:
    encoder = full_size(name)
    assert count_parameters(encoder) == total - _head(15 * c)
    assert encoder_info(name)["params"] == count_parameters(encoder)
    assert encoder.channels == [c, 2 * c, 4 * c, 8 * c] and encoder.reductions == [4, 8, 16, 32]


def test_topologies_of_the_configurations() -> None:
    modules = {name: [len(getattr(full_size(name), f"stage{s}")) for s in (2, 3, 4)]
               for name in ("hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w18", "hrnet_w48")}
    assert modules == {"hrnet_w18_small": [1, 1, 1], "hrnet_w18_small_v2": [1, 3, 2], "hrnet_w18": [1, 4, 3],
                       "hrnet_w48": [1, 4, 3]}
    small = full_size("hrnet_w18_small")
    assert len(small.layer1) == 1 and small.layer1[0].out_channels == 128  # one bottleneck of 32
    assert len(full_size("hrnet_w18_small_v2").stage4[0].branches[3]) == 2
    assert len(full_size("hrnet_w48").stage3[0].branches[0]) == 4
    assert full_size("hrnet_w32").channels == [32, 64, 128, 256]


def test_state_dict_keys_follow_the_official_names() -> None:
    # Written out from HRNet/HRNet-Semantic-Segmentation lib/models/seg_hrnet.py (timm uses the same names).
    keys = list(full_size("hrnet_w48").state_dict())
    assert keys[:4] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean"]
    expected = {
        "conv2.weight", "bn2.running_var", "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight", "layer1.3.bn3.bias", "transition1.0.0.weight",
        "transition1.0.1.running_mean", "transition1.1.0.0.weight", "transition1.1.0.1.weight",
        "transition2.2.0.0.weight", "transition3.3.0.0.weight", "stage2.0.branches.1.3.conv2.weight",
        "stage3.3.branches.2.0.bn1.weight", "stage3.0.fuse_layers.0.2.0.weight",
        "stage3.0.fuse_layers.0.2.1.running_var", "stage4.2.fuse_layers.3.0.2.0.weight",
        "stage4.2.fuse_layers.3.0.1.1.weight", "stage4.2.fuse_layers.0.3.1.bias"}
    assert expected <= set(keys)
    # unchanged widths pass through transitions 2 and 3: no parameters there
    assert not any(k.startswith(("transition2.0.", "transition2.1.", "transition3.2.")) for k in keys)
    assert not any(".fuse_layers.1.1." in k for k in keys)
    assert [k for k in keys if k.startswith("stage2.0.branches.0.0.")][:2] == [
        "stage2.0.branches.0.0.conv1.weight", "stage2.0.branches.0.0.bn1.weight"]


def test_3d_has_the_same_keys_with_cubic_kernels() -> None:
    two, three = full_size("hrnet_w18_small"), full_size("hrnet_w18_small", 3)
    assert list(two.state_dict()) == list(three.state_dict())
    assert tuple(three.conv1.weight.shape) == (64, 3, 3, 3, 3)


@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (45, 67)), (3, (13, 17, 11))])
def test_odd_sizes_give_ceil_halved_branches(spatial_dims: int, size: tuple[int, ...]) -> None:
    encoder = create_encoder("hrnet_w18_small", spatial_dims=spatial_dims, **SMALL)
    x = torch.randn(2, 3, *size)
    features = encoder(x)
    expected = []
    s = [math.ceil(math.ceil(n / 2) / 2) for n in size]  # the stem's two stride-2 convs
    for c in encoder.channels:
        expected.append((2, c, *s))
        s = [math.ceil(n / 2) for n in s]
    assert [tuple(f.shape) for f in features] == expected
    assert_encoder_grads_finite(encoder, x)


def test_width_and_single_output_options() -> None:
    encoder = create_encoder("hrnet_w18", width=8, stem_width=16)
    assert encoder.channels == [8, 16, 32, 64] and encoder.conv1.out_channels == 16
    v1 = create_encoder("hrnet_w18_small", multi_scale_output=False, **SMALL).eval()
    assert v1.channels == [4] and v1.reductions == [4]
    [only] = v1(torch.randn(1, 3, 32, 32))
    assert tuple(only.shape) == (1, 4, 8, 8)
    assert len(v1.stage4[0].fuse_layers) == 1


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(MedsegError, match="unknown HRNet config 'w99'"):
        HRNetEncoder(config="w99")
    with pytest.raises(MedsegError, match="fuse_upsample must be one of"):
        HRNetEncoder(config="w18_small", fuse_upsample="cubic", **SMALL)
    with pytest.raises(MedsegError, match="width must be >= 1"):
        HRNetEncoder(config="w18_small", width=0)


def test_loads_a_timm_style_file_with_its_classification_head(tmp_path: Path) -> None:
    source = create_encoder("hrnet_w18_small", **SMALL).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = dict(source.state_dict())
    heads = ("incre_modules.0.0.conv1.weight", "downsamp_modules.0.0.weight", "final_layer.0.weight",
             "classifier.weight")
    state.update({key: torch.zeros(3) for key in heads})
    path = tmp_path / "hrnet.pth"
    torch.save(state, path)
    target = create_encoder("hrnet_w18_small", weights=path, **SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(source(x), target(x), strict=True):
        torch.testing.assert_close(a, b)
    # the single-output (V1) trunk takes the same file: the coarse fuse outputs it lacks are dropped
    v1 = create_encoder("hrnet_w18_small", multi_scale_output=False, **SMALL).eval()
    report = load_encoder_weights(v1, path)
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(v1(x)[0], source(x)[0])
