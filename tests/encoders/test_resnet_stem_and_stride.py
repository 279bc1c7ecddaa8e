"""The ResNet encoder's ``deep_stem`` and ``output_stride`` options; the ``resnet50s``/``resnet101s`` encoders
(hszhao/semseg's PSPNet ResNets)."""

from __future__ import annotations

import pytest
import torch

from helpers import random_input
from medseg.encoders import create_encoder, load_encoder_weights
from medseg.encoders.resnet import stage_strides
from medseg.errors import MedsegError

SMALL = {"widths": (4, 4, 8, 8), "stem_width": 8, "depths": (1, 2, 2, 2)}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize(("output_stride", "expected"), [
    (32, [(1, 1), (2, 1), (2, 1), (2, 1)]),
    (16, [(1, 1), (2, 1), (2, 1), (1, 2)]),
    (8, [(1, 1), (2, 1), (1, 2), (1, 4)]),
])
def test_stage_strides_follow_torchvision(output_stride: int, expected: list[tuple[int, int]]) -> None:
    assert stage_strides(output_stride) == expected


def test_bad_output_stride_raises() -> None:
    with pytest.raises(MedsegError, match="output_stride must be one of"):
        create_encoder("resnet18", output_stride=4)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize(("spatial_dims", "output_stride", "reductions"), [
    (2, 8, [2, 4, 8, 8, 8]), (2, 16, [2, 4, 8, 16, 16]), (3, 8, [2, 4, 8, 8, 8])])
def test_dilated_levels_keep_the_resolution(name: str, spatial_dims: int, output_stride: int,
                                            reductions: list[int]) -> None:
    encoder = create_encoder(name, spatial_dims=spatial_dims, output_stride=output_stride, **SMALL)
    assert encoder.reductions == reductions and encoder.input_multiple == output_stride
    size = 32
    features = encoder(random_input(spatial_dims, channels=3, size=size))
    for feature, reduction in zip(features, reductions, strict=True):
        assert tuple(feature.shape[2:]) == (size // reduction,) * spatial_dims


def test_output_stride_8_dilates_layer3_by_2_and_layer4_by_4() -> None:
    encoder = create_encoder("resnet50", output_stride=8, **SMALL)
    # the first block keeps the previous dilation in its (formerly strided) 3x3, the others take the new one
    assert (encoder.layer3[0].conv2.stride, encoder.layer3[0].conv2.dilation) == ((1, 1), (1, 1))
    assert encoder.layer3[1].conv2.dilation == (2, 2) and encoder.layer3[1].conv2.padding == (2, 2)
    assert encoder.layer4[0].conv2.dilation == (2, 2) and encoder.layer4[1].conv2.dilation == (4, 4)
    assert encoder.layer3[0].downsample[0].stride == (1, 1)
    assert encoder.layer2[0].conv2.stride == (2, 2)
    assert encoder.dilations == [1, 1, 1, 2, 4]


def test_output_stride_changes_no_weight() -> None:
    # widening stages, as every real ResNet (equal widths at stride 1 would drop a projection, as in timm)
    options = {**SMALL, "widths": (4, 8, 16, 32)}
    plain = create_encoder("resnet34", **options)
    dilated = create_encoder("resnet34", output_stride=8, **options)
    assert {k: v.shape for k, v in plain.state_dict().items()} == \
        {k: v.shape for k, v in dilated.state_dict().items()}
    dilated.load_state_dict(plain.state_dict())
    plain.eval(), dilated.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # identical up to layer2 (no dilation yet), different after
        a, b = plain(x), dilated(x)
    torch.testing.assert_close(a[2], b[2])
    assert a[3].shape != b[3].shape


def test_deep_stem_keys_follow_timm() -> None:
    with torch.device("meta"):
        encoder = create_encoder("resnet50s")
    keys = list(encoder.state_dict())
    # timm ResNet with stem_type='deep': conv1 = Sequential(conv, bn, act, conv, bn, act, conv), then bn1
    stem = ["conv1.0.weight", *[f"conv1.1.{s}" for s in BN], "conv1.3.weight", *[f"conv1.4.{s}" for s in BN],
            "conv1.6.weight", *[f"bn1.{s}" for s in BN]]
    assert keys[:len(stem)] == stem
    assert keys[len(stem)] == "layer1.0.conv1.weight"
    assert encoder.first_conv == "conv1.0.weight"
    state = encoder.state_dict()
    assert state["conv1.0.weight"].shape == (64, 3, 3, 3)
    assert state["conv1.3.weight"].shape == (64, 64, 3, 3)
    assert state["conv1.6.weight"].shape == (128, 64, 3, 3)
    assert state["layer1.0.conv1.weight"].shape == (64, 128, 1, 1)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 128, 1, 1)
    assert encoder.channels == [128, 256, 512, 1024, 2048]


@pytest.mark.parametrize(("name", "expected"), [("resnet50s", 23_631_808), ("resnet101s", 42_623_936)])
def test_deep_stem_parameter_counts(name: str, expected: int) -> None:
    # hszhao/semseg's resnet50/101 (deep_base=True) without fc: the plain count - 7x7 stem + 3x3 stem + the
    # wider layer1 input (128): 23,508,032 - 9,536 + 112,832 + 4,096 + 16,384 for ResNet-50
    with torch.device("meta"):
        encoder = create_encoder(name)
    assert sum(p.numel() for p in encoder.parameters()) == expected


def test_deep_stem_shapes_3d() -> None:
    encoder = create_encoder("resnet18", spatial_dims=3, deep_stem=True, **SMALL)
    assert encoder.conv1[0].weight.shape == (8, 3, 3, 3, 3)
    assert encoder.channels[0] == 16
    features = encoder(random_input(3, channels=3, size=16))
    assert features[0].shape == (2, 16, 8, 8, 8)


def test_hszhao_layout_loads_into_the_deep_stem(tmp_path) -> None:
    source = create_encoder("resnet50", deep_stem=True, **SMALL)
    renames = {"conv1.0": "conv1", "conv1.1": "bn1", "conv1.3": "conv2", "conv1.4": "bn2", "conv1.6": "conv3",
               "bn1": "bn3"}
    official = {}
    for key, value in source.state_dict().items():
        head = next((h for h in renames if key.startswith(h + ".")), None)
        official[renames[head] + key[len(head):] if head else key] = value
    official["fc.weight"] = torch.zeros(10, 32)
    assert "conv2.weight" in official and "conv1.0.weight" not in official
    path = tmp_path / "resnet50_v2.pth"
    torch.save(official, path)
    target = create_encoder("resnet50", deep_stem=True, **SMALL)
    report = load_encoder_weights(target, path)
    assert report.classifier == ["fc.weight"] and not report.missing
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)
