"""Tests of MSNet and M2SNet (Zhao et al. 2021, 2023): wiring, parameter counts, sizes, options."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import medseg
from medseg import layers
from medseg.encoders.base import Encoder, get_encoder_entry
from medseg.errors import InputSizeError, MedsegError
from medseg.models.m2snet import M2SNet, MSNet
from medseg.models.registry import count_parameters

RES2NET_CHANNELS = [64, 256, 512, 1024, 2048]
RESNET_REDUCTIONS = [2, 4, 8, 16, 32]


class StandInEncoder(Encoder):
    """A tiny encoder with the given channels and reductions: one strided conv per level."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, channels: list[int] | None = None,
                 reductions: list[int] | None = None) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.channels = list(channels or [4, 6, 8, 10, 12])
        self.reductions = list(reductions or RESNET_REDUCTIONS)
        previous, scale, stages = in_channels, 1, []
        for width, reduction in zip(self.channels, self.reductions, strict=True):
            stride = reduction // scale
            kernel = max(stride, 1)
            stages.append(layers.conv(spatial_dims, previous, width, kernel, stride=stride, padding=0))
            previous, scale = width, reduction
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def has_encoder(name: str) -> bool:
    try:
        get_encoder_entry(name)
    except MedsegError:
        return False
    return True


def decoder_count(model_cls: type, channels: list[int]) -> int:
    with torch.device("meta"):
        model = model_cls(2, 3, 1, encoder=StandInEncoder(channels=channels))
    return count_parameters(model) - count_parameters(model.encoder)


def test_decoder_parameter_counts_match_the_official_code() -> None:
    assert decoder_count(MSNet, RES2NET_CHANNELS) == 4_022_977
    assert decoder_count(M2SNet, RES2NET_CHANNELS) == 4_023_233


@pytest.mark.skipif(not has_encoder("res2net50_v1b_26w_4s"), reason="Res2Net encoder not registered yet")
@pytest.mark.parametrize(("name", "total", "decoder"),
                         [("msnet", 27_692_329, 4_022_977), ("m2snet", 27_692_585, 4_023_233)])
def test_res2net_parameter_counts(name: str, total: int, decoder: int) -> None:
    with torch.device("meta"):
        model = medseg.create_model(name, in_channels=3, num_classes=1)
    assert count_parameters(model) == total
    assert count_parameters(model) - count_parameters(model.encoder) == decoder


@pytest.mark.parametrize("model_cls", [MSNet, M2SNet])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_logits_at_input_size(model_cls: type, spatial_dims: int) -> None:
    encoder = StandInEncoder(spatial_dims, in_channels=2)
    model = model_cls(spatial_dims, 2, 3, encoder=encoder, channels=4).eval()
    x = torch.randn(2, 2, *[32] * spatial_dims)
    with torch.no_grad():
        out = model(x)
    assert type(out) is Tensor and out.shape == (2, 3, *[32] * spatial_dims)
    out = model.train()(x)
    assert type(out) is Tensor  # one output, no deep supervision


def _pyramid_input_sizes(model: M2SNet, size: int) -> list[int]:
    seen: list[int] = []
    model.pyramid.register_forward_pre_hook(lambda m, args: seen.extend(f.shape[-1] for f in args[0]))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    return seen


def test_resnet_stem_is_max_pooled_to_quarter_resolution_like_the_official_x1() -> None:
    model = M2SNet(2, 3, 1, encoder=StandInEncoder(), channels=4)
    assert isinstance(model.stem_pool, nn.MaxPool2d)
    assert (model.stem_pool.kernel_size, model.stem_pool.stride, model.stem_pool.padding) == (3, 2, 1)
    assert _pyramid_input_sizes(model, 64) == [16, 16, 8, 4, 2]
    unpooled = M2SNet(2, 3, 1, encoder=StandInEncoder(), channels=4, pool_stem=False)
    assert unpooled.stem_pool is None
    assert _pyramid_input_sizes(unpooled, 64) == [32, 16, 8, 4, 2]


@pytest.mark.parametrize(("channels", "reductions", "sizes"),
                         [([4, 6, 8, 10], [4, 8, 16, 32], [16, 8, 4, 2]),           # PVT-like
                          ([4, 6, 8, 10, 10], [1, 2, 4, 8, 16], [64, 32, 16, 8, 4])])  # VGG-like
def test_other_layouts_are_not_pooled(channels: list[int], reductions: list[int], sizes: list[int]) -> None:
    model = M2SNet(2, 3, 1, encoder=StandInEncoder(channels=channels, reductions=reductions), channels=4)
    assert model.stem_pool is None
    assert _pyramid_input_sizes(model, 64) == sizes
    assert sum(len(level) for level in model.pyramid.levels) == len(channels) * (len(channels) - 1) // 2
    assert model.input_multiple == reductions[-1]


def test_finest_level_enters_the_pyramid_as_is_only_when_it_has_the_decoder_width() -> None:
    same = M2SNet(2, 3, 1, encoder=StandInEncoder(channels=[8, 6, 8, 10, 12]), channels=8)
    assert isinstance(same.reduce[0], nn.Identity)
    assert not any(isinstance(r, nn.Identity) for r in same.reduce[1:])  # x2 (8 channels) is still reduced
    other = M2SNet(2, 3, 1, encoder=StandInEncoder(channels=[4, 6, 8, 10, 12]), channels=8)
    assert not isinstance(other.reduce[0], nn.Identity)


def test_options_change_the_network() -> None:
    base = count_parameters(M2SNet(2, 3, 1, encoder=StandInEncoder(), channels=8))
    msnet = count_parameters(MSNet(2, 3, 1, encoder=StandInEncoder(), channels=8))
    unshared = count_parameters(M2SNet(2, 3, 1, encoder=StandInEncoder(), channels=8, shared_filters=False))
    three = count_parameters(M2SNet(2, 3, 1, encoder=StandInEncoder(), channels=8, filter_sizes=(3, 5, 7)))
    bn = 2 * 8
    assert base - msnet == 2 * bn
    assert unshared - base == 9 * 2 * bn
    assert three - base == bn


def test_input_size_and_option_errors() -> None:
    model = M2SNet(2, 3, 1, encoder=StandInEncoder(), channels=4)
    with pytest.raises(InputSizeError, match="multiple of 32"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(MedsegError, match="filter_sizes"):
        medseg.create_model("msnet", encoder=StandInEncoder(), filter_sizes=(3,))
    with pytest.raises(MedsegError, match="at least 3 levels"):
        M2SNet(2, 3, 1, encoder=StandInEncoder(channels=[4, 6], reductions=[2, 4]))


def test_registry_metadata() -> None:
    for name, params in (("msnet", 27_692_329), ("m2snet", 27_692_585)):
        info = medseg.model_info(name)
        assert info["dims"] == [2, 3] and info["input_multiple"] == 32
        assert info["references"][0]["params"] == params
        assert info["references"][0]["options"]["in_channels"] == 3
