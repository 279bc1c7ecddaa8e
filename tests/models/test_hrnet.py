"""Tests of HRNetV1/V2/V2p (medseg.models.hrnet)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import medseg
from medseg import layers
from medseg.errors import MedsegError
from medseg.models.hrnet import HRNet
from medseg.outputs import SegOutput

SMALL = {"config": "hrnet_w18_small", "width": 4, "stem_width": 8, "stage1_channels": 4}
MODELS = ["hrnet_v1", "hrnet_v2", "hrnet_v2p"]


def small(name: str, spatial_dims: int = 2, num_classes: int = 3, **options: object) -> HRNet:
    extra = {"pyramid_channels": 8} if name == "hrnet_v2p" else {}
    return medseg.create_model(name, in_channels=2, num_classes=num_classes, spatial_dims=spatial_dims,
                               **{**SMALL, **extra, **options})


def meta_count(name: str, **options: object) -> int:
    with torch.device("meta"):
        return medseg.count_parameters(medseg.create_model(name, **options))


@pytest.mark.parametrize(("config", "params"), [
    ("hrnet_w48", 65_859_379), ("hrnet_w18", 9_641_119), ("hrnet_w18_small", 1_540_819),
    ("hrnet_w18_small_v2", 3_939_579)])
def test_hrnet_v2_parameter_counts_are_exact(config: str, params: int) -> None:
    assert meta_count("hrnet_v2", in_channels=3, num_classes=19, config=config) == params


def test_v2_head_alone_and_registered_references() -> None:
    for config, head in (("hrnet_w48", 534_259), ("hrnet_w18", 78_859)):
        with torch.device("meta"):
            model = medseg.create_model("hrnet_v2", in_channels=3, num_classes=19, config=config)
        assert medseg.count_parameters(model.head) == head
    references = medseg.model_info("hrnet_v2")["references"]
    assert sorted(r["params"] for r in references) == [1_540_819, 3_939_579, 9_641_119, 65_859_379]
    assert medseg.model_info("hrnet")["name"] == "hrnet_v2"  # the default HRNet is V2
    # the default configuration is W48 (the paper's segmentation model)
    assert meta_count("hrnet_v2", in_channels=3, num_classes=19) == 65_859_379


def test_3d_w48_builds_with_the_same_keys() -> None:
    with torch.device("meta"):
        two = medseg.create_model("hrnet_v2", in_channels=1, num_classes=2)
        three = medseg.create_model("hrnet3d", in_channels=1, num_classes=2)
    assert three.spatial_dims == 3 and list(two.state_dict()) == list(three.state_dict())
    assert medseg.count_parameters(three) > 2.5 * medseg.count_parameters(two)  # 3x3 -> 3x3x3 kernels


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (37, 50)), (3, (11, 18, 13))])
def test_eval_logits_at_odd_input_sizes(name: str, spatial_dims: int, size: tuple[int, ...]) -> None:
    model = small(name, spatial_dims).eval()
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        out = model(x)
        coarse, fine = model.coarse_and_fine(x)
    assert type(out) is Tensor and tuple(out.shape) == (2, 3, *size)
    quarter = tuple(math.ceil(math.ceil(s / 2) / 2) for s in size)  # the stem's two stride-2 convs
    assert tuple(coarse.shape) == (2, 3, *quarter)
    assert tuple(fine.shape) == (2, model.fine_channels, *quarter)
    torch.testing.assert_close(out, layers.resize_to(coarse, list(size)))
    torch.testing.assert_close(coarse, model.head(fine))


def test_fine_channels_per_head() -> None:
    assert small("hrnet_v1").fine_channels == 4
    assert small("hrnet_v2").fine_channels == 4 * 15
    assert small("hrnet_v2p", pyramid_channels=12).fine_channels == 12
    with torch.device("meta"):
        assert medseg.create_model("hrnet_v2", num_classes=19).fine_channels == 720
    assert isinstance(small("hrnet_v2").fine_channels, int)


def test_v2_fine_map_is_the_upsampled_concatenation() -> None:
    model = small("hrnet_v2").eval()
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        features = model.encoder(x)
        _, fine = model.coarse_and_fine(x)
    expected = torch.cat([features[0], *[F.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False)
                                         for f in features[1:]]], dim=1)
    torch.testing.assert_close(fine, expected)


def test_v2p_pyramid_levels() -> None:
    model = small("hrnet_v2p", pyramid_levels=3).eval()
    levels = model.pyramid.pyramid(torch.randn(1, 60, 9, 13))
    assert [tuple(level.shape[2:]) for level in levels] == [(9, 13), (5, 7), (3, 4)]
    assert all(level.shape[1] == 8 for level in levels)


def test_v1_reads_only_the_finest_branch_and_uses_every_parameter() -> None:
    model = small("hrnet_v1").train()
    assert len(model.encoder.channels) == 1 and len(model.encoder.stage4[-1].fuse_layers) == 1
    x = torch.randn(2, 2, 32, 32)
    model(x).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_deep_supervision_gives_one_aux_map_per_branch(name: str) -> None:
    model = small(name, deep_supervision=True).train()
    x = torch.randn(2, 2, 33, 31)
    out = model(x)
    assert isinstance(out, SegOutput) and tuple(out.logits.shape) == (2, 3, 33, 31)
    assert len(out.aux) == 4 and all(tuple(a.shape) == (2, 3, 33, 31) for a in out.aux)
    with torch.no_grad():
        assert type(model.eval()(x)) is Tensor


@pytest.mark.slow
def test_loss_goes_down_on_a_small_batch() -> None:
    model = small("hrnet_v2", num_classes=2, deep_supervision=True).train()
    generator = torch.Generator().manual_seed(0)
    target = torch.zeros(4, 32, 32, dtype=torch.long)
    for i, (top, left) in enumerate([(2, 4), (10, 12), (16, 0), (6, 20)]):
        target[i, top:top + 12, left:left + 10] = 1  # one bright rectangle per image
    x = 0.3 * torch.randn(4, 2, 32, 32, generator=generator) + target[:, None].float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_of(out: SegOutput) -> Tensor:
        return sum(F.cross_entropy(m, target) for m in [out.logits, *out.aux])

    first = None
    for _ in range(10):
        optimizer.zero_grad()
        loss = loss_of(model(x))
        first = loss.item() if first is None else first
        loss.backward()
        optimizer.step()
    assert loss_of(model(x)).item() < 0.5 * first


def test_options_are_checked() -> None:
    with pytest.raises(MedsegError, match="pyramid_channels and pyramid_levels belong to the v2p head"):
        small("hrnet_v2", pyramid_channels=8)
    with pytest.raises(MedsegError, match="given by the model name"):
        small("hrnet_v2", head="v1")
    with pytest.raises(MedsegError, match="unknown HRNet config"):
        medseg.create_model("hrnet_v2", config="w17")


def test_encoder_weights_option_loads_the_backbone(tmp_path: Path) -> None:
    source = small("hrnet_v2")
    path = tmp_path / "backbone.pth"
    torch.save(source.encoder.state_dict(), path)
    loaded = small("hrnet_v2", encoder_weights=str(path))
    for (key, a), b in zip(source.encoder.state_dict().items(), loaded.encoder.state_dict().values(),
                           strict=True):
        assert torch.equal(a, b), key
