"""U-Net v2 (Peng et al. 2023) and its ablations: spec numbers, decoder equations, 2D/3D shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import medseg
from medseg.encoders import create_encoder, load_encoder_weights
from medseg.encoders.base import Encoder
from medseg.errors import MedsegError
from medseg.models.unet_v2 import UNetV2, UpsampledLevels
from medseg.outputs import SegOutput

SMALL_PVT = {"embed_dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


class StandIn(Encoder):
    """A tiny encoder: strided convs, levels at 1/2 .. 1/2^n."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, widths: tuple[int, ...] = (3, 5, 7),
                 first: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims = spatial_dims
        self.channels = list(widths)
        self.reductions = [first * 2**i for i in range(len(widths))]
        ins = [in_channels, *widths[:-1]]
        self.stages = nn.ModuleList(conv(i, o, 3, stride=first if k == 0 else 2, padding=1)
                                    for k, (i, o) in enumerate(zip(ins, widths, strict=True)))

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_parameter_counts_of_the_spec() -> None:
    with torch.device("meta"):
        model = medseg.create_model("unet_v2", in_channels=3, num_classes=1)
        no_sc = medseg.create_model("unet_v2_no_sc", in_channels=3, num_classes=1)
    assert count(model) == 25_128_652
    assert count(model.encoder) == 24_849_856
    assert [count(u) for u in model.up] == [16_384] * 3
    assert [count(h) for h in model.heads.heads] == [32 * 1 + 1] * 4
    assert [count(s) for s in model.skips.infusion] == [36_992] * 4
    assert count(model) - count(no_sc) == 48_128 + 4 * 98


def test_heads_scale_with_classes() -> None:
    with torch.device("meta"):
        model = medseg.create_model("unet_v2", in_channels=3, num_classes=3)
    assert [count(h) for h in model.heads.heads] == [32 * 3 + 3] * 4


def test_decoder_follows_the_equations() -> None:
    torch.manual_seed(0)
    model = UNetV2(2, 2, 3, encoder=StandIn(first=4), channels=4).eval()
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        infused = model.skips(model.encoder(x))
        y = infused[2]
        y = F.conv_transpose2d(y, model.up[1].weight, stride=2, padding=1) + infused[1]
        y = F.conv_transpose2d(y, model.up[0].weight, stride=2, padding=1) + infused[0]
        head = model.heads.heads[0]
        expected = F.interpolate(F.conv2d(y, head.weight, head.bias), scale_factor=4, mode="bilinear")
        torch.testing.assert_close(model(x), expected)


def test_small_pvt_outputs_full_and_half_resolution() -> None:
    model = medseg.create_model("unet_v2", in_channels=3, num_classes=1, encoder="pvt_v2_b0",
                                encoder_options=SMALL_PVT, channels=8)
    x = torch.randn(1, 3, 64, 64)
    out = model.train()(x)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (1, 1, 64, 64)
    assert [tuple(a.shape) for a in out.aux] == [(1, 1, 32, 32)]
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 1, 64, 64)
    plain = medseg.create_model("unet_v2", in_channels=3, num_classes=1, encoder="pvt_v2_b0",
                                encoder_options=SMALL_PVT, channels=8, deep_supervision=False)
    assert type(plain.train()(x)) is Tensor


def test_supervised_levels() -> None:
    model = UNetV2(2, 2, 2, encoder=StandIn(), channels=4, supervised_levels=3).train()
    out = model(torch.randn(1, 2, 32, 32))
    assert [a.shape[-1] for a in out.aux] == [16, 8]
    with pytest.raises(MedsegError, match="supervised_levels"):
        UNetV2(2, 2, 2, encoder=StandIn(), supervised_levels=4)


def test_3d_variant_shapes_with_a_stand_in_encoder() -> None:
    model = UNetV2(3, 2, 3, encoder=StandIn(3), channels=4).train()
    out = model(torch.randn(2, 2, 16, 16, 16))
    assert out.logits.shape == (2, 3, 16, 16, 16)
    assert out.aux[0].shape == (2, 3, 8, 8, 8)


def test_default_encoder_depends_on_spatial_dims() -> None:
    with torch.device("meta"):
        two = medseg.create_model("unet_v2", in_channels=1, num_classes=1, spatial_dims=2)
        three = medseg.create_model("unet_v2", in_channels=1, num_classes=1, spatial_dims=3)
    assert two.encoder.channels == [64, 128, 320, 512]
    assert three.encoder.channels == [64, 64, 128, 256, 512]
    assert three.encoder.spatial_dims == 3 and three.input_multiple == 32


def test_no_sc_has_no_attention() -> None:
    model = medseg.create_model("unet_v2_no_sc", in_channels=2, num_classes=1, encoder=StandIn())
    assert all(isinstance(a, nn.Identity) for a in model.skips.attention)


def test_non_halving_encoder_is_refused() -> None:
    encoder = StandIn()
    encoder.reductions = [2, 4, 16]
    with pytest.raises(MedsegError, match="halve"):
        UNetV2(2, 2, 1, encoder=encoder)


def test_upsampled_levels_pyramid() -> None:
    pyramid = UpsampledLevels(StandIn(first=4), (6, 4))
    assert pyramid.channels == [4, 6, 3, 5, 7] and pyramid.reductions == [1, 2, 4, 8, 16]
    features = pyramid(torch.randn(1, 2, 32, 32))
    assert [tuple(f.shape[1:]) for f in features] == [(4, 32, 32), (6, 16, 16), (3, 8, 8), (5, 4, 4),
                                                      (7, 2, 2)]
    with pytest.raises(MedsegError, match="fine_levels"):
        UpsampledLevels(StandIn(first=2), (6, 4))


def test_pretrained_pvt_file_loads_into_the_ablation_pyramid(tmp_path) -> None:  # noqa: ANN001
    # a plain PVT weight file fits the wrapped encoder: only the added fine levels are not in it
    pvt = create_encoder("pvt_v2_b0", in_channels=3, **SMALL_PVT)
    path = tmp_path / "pvt.pth"
    torch.save(pvt.state_dict(), path)
    model = medseg.create_model("unet_pvt", in_channels=3, num_classes=1, encoder="pvt_v2_b0",
                                encoder_options=SMALL_PVT, fine_levels=(8, 4))
    report = load_encoder_weights(model.encoder, path)
    assert report.loaded == len(pvt.state_dict()) and not report.missing
    torch.testing.assert_close(model.encoder.encoder.state_dict()["patch_embed.proj.weight"],
                               pvt.state_dict()["patch_embed.proj.weight"])


def test_pvt_ablations_use_the_official_pyramid() -> None:
    with torch.device("meta"):
        unet = medseg.create_model("unet_pvt", in_channels=3, num_classes=1)
        unetpp = medseg.create_model("unetpp_pvt", in_channels=3, num_classes=1)
    assert unet.encoder.channels == [32, 64, 64, 128, 320, 512]
    assert unetpp.encoder.channels == [32, 64, 64, 128, 320, 512]
    # the two added 1x1 convs of the official code: 64 -> 64 and 64 -> 32 with bias
    assert count(unet.encoder.fine) == 64 * 64 + 64 + 64 * 32 + 32
