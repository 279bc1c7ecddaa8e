"""Model-specific tests of Attention U-Net (Oktay et al. 2018); the shared model test covers the rest."""

from __future__ import annotations

import pytest
import torch

from medseg.blocks.attention_gate import AttentionGate
from medseg.errors import InputSizeError, MedsegError
from medseg.models.registry import count_parameters, create_model, model_info
from medseg.outputs import SegOutput

SMALL = (4, 8, 8, 16, 16)
OFFICIAL_COUNTS = {"multi": 6_473_322, "single": 6_214_151, "none": 5_888_004}


def _small(spatial_dims: int = 2, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("attention_unet", in_channels=1, num_classes=3, spatial_dims=spatial_dims,
                        features=options.pop("features", SMALL), **options)


@pytest.mark.parametrize("gate", ["multi", "single", "none"])
def test_official_ct_parameter_counts(gate: str) -> None:
    model = create_model("attention_unet", in_channels=1, num_classes=4, spatial_dims=3,
                         features=(16, 32, 64, 128, 256), gate=gate, deep_supervision=True)
    assert count_parameters(model) == OFFICIAL_COUNTS[gate]
    if gate == "single":  # the defaults are the official single-gate CT configuration
        default = create_model("attention_unet", in_channels=1, num_classes=4, spatial_dims=3)
        assert count_parameters(default) == OFFICIAL_COUNTS[gate]


def test_registry_records_the_three_official_configurations() -> None:
    references = {r["options"]["gate"]: r["params"] for r in model_info("attention_unet")["references"]}
    assert references == OFFICIAL_COUNTS


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_outputs_in_train_mode(spatial_dims: int) -> None:
    model = _small(spatial_dims)
    x = torch.randn(2, 1, *([16] * spatial_dims))
    out = model.train()(x)
    assert isinstance(out, SegOutput)
    assert out.logits.shape == (2, 3, *x.shape[2:])
    assert len(out.aux) == len(SMALL) - 1
    assert all(a.shape == out.logits.shape for a in out.aux)
    # the final logits are the 1x1 fusion of the deep-supervision maps, finest first
    torch.testing.assert_close(out.logits, model.fuse(torch.cat(out.aux, dim=1)))
    model.eval()
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3, *x.shape[2:])


def test_without_deep_supervision_train_mode_returns_a_tensor() -> None:
    model = _small(deep_supervision=False).train()
    out = model(torch.randn(2, 1, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 16, 16)
    assert not hasattr(model, "heads")


@pytest.mark.parametrize(("gate", "gates"), [("none", 0), ("single", 3), ("multi", 6)])
def test_gates_sit_on_every_skip_but_the_finest(gate: str, gates: int) -> None:
    model = _small(gate=gate)
    assert sum(isinstance(m, AttentionGate) for m in model.modules()) == gates
    assert (model.gating is None) == (gate == "none")


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(("gate", "per_skip"), [("single", 1), ("multi", 2)])
def test_attention_maps_cover_the_gated_skips(spatial_dims: int, gate: str, per_skip: int) -> None:
    model = _small(spatial_dims, gate=gate).eval()
    x = torch.randn(1, 1, *([16] * spatial_dims))
    maps = model.attention_maps(x)
    # gated skips at 1/8, 1/4 and 1/2 of the input, coarsest first
    assert [m.shape for m in maps] == [(1, per_skip, *([s] * spatial_dims)) for s in (2, 4, 8)]
    assert all(m.min() > 0 and m.max() < 1 for m in maps)


def test_no_gate_has_no_attention_maps() -> None:
    assert _small(gate="none").eval().attention_maps(torch.randn(1, 1, 16, 16)) == []


def test_gates_change_the_prediction() -> None:
    gated, plain = _small(gate="single").eval(), _small(gate="none").eval()
    x = torch.randn(1, 1, 16, 16)
    # the encoders start from the same weights (same seed, same construction order)
    torch.testing.assert_close(gated.encoder[0](x), plain.encoder[0](x))
    assert not torch.allclose(gated(x), plain(x))


@pytest.mark.parametrize("options", [{"features": (4, 8, 16)}, {"features": 4, "depth": 2}])
def test_depth_follows_features(options: dict) -> None:
    model = _small(**options)
    assert model.input_multiple == 4
    assert [block[1].conv.out_channels for block in model.encoder] == [4, 8, 16]
    assert model(torch.randn(1, 1, 12, 12)).logits.shape == (1, 3, 12, 12)
    with pytest.raises(InputSizeError):
        model(torch.randn(1, 1, 10, 12))


def test_bad_options_raise() -> None:
    with pytest.raises(MedsegError):
        _small(gate="double")
    with pytest.raises(MedsegError):
        _small(features=(8,))
