"""UNeXt: exact parameter counts and GMACs of the three presets, in_channels, 3D shapes, fitting a blob."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from medseg.blocks.shifted_mlp import ShiftedMLPBlock
from medseg.engine.config import load_config
from medseg.errors import InputSizeError, MedsegError
from medseg.losses import build_loss
from medseg.models.registry import count_parameters, create_model, get_entry, model_info
from medseg.models.unext import UNeXt

SPEC_PARAMS = {"unext": 1_471_921, "unext_s": 253_561, "unext_paper": 1_580_961}
SPEC_GMACS_256 = {"unext": 0.562, "unext_s": 0.099}  # spec; unext_paper 1.176 is measured in the report
SMALL = (4, 8, 20, 24, 32)


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_preset_parameter_counts_match_the_spec(name: str) -> None:
    with torch.device("meta"):
        built = count_parameters(create_model(name, in_channels=3, num_classes=1))
        references = [count_parameters(create_model(name, **r.options)) for r in get_entry(name).references]
    assert built == SPEC_PARAMS[name]
    assert references == [r.params for r in get_entry(name).references] == [SPEC_PARAMS[name]]


@pytest.mark.parametrize("name", sorted(SPEC_GMACS_256))
def test_gmacs_at_256_match_the_spec(name: str) -> None:
    """Multiply-accumulates of the convolutions and linear layers (FlopCounterMode counts 2 per MAC)."""
    model = create_model(name, in_channels=3, num_classes=1).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 256, 256))
    assert counter.get_total_flops() / 2e9 == pytest.approx(SPEC_GMACS_256[name], abs=5e-4)  # 3 decimals


def test_registry_metadata() -> None:
    for name in SPEC_PARAMS:
        info = model_info(name)
        assert info["input_multiple"] == 32 and info["dims"] == [2, 3]
        assert info["default_loss"] == "dice_ce"


def test_in_channels_are_honoured() -> None:
    """Only the first 3x3 conv depends on the input channels: 16 filters x 9 weights per channel."""
    with torch.device("meta"):
        one = count_parameters(create_model("unext", in_channels=1, num_classes=1))
        four = count_parameters(create_model("unext", in_channels=4, num_classes=1))
    assert SPEC_PARAMS["unext"] - one == 2 * 16 * 9
    assert four - SPEC_PARAMS["unext"] == 16 * 9
    model = UNeXt(2, 5, 2, channels=SMALL).eval()
    assert model(torch.randn(1, 5, 32, 64)).shape == (1, 2, 32, 64)


def test_2d_structure_levels_and_token_blocks() -> None:
    """Three conv levels, two token levels, shifted blocks at c4 and c5 (encoder) and c4, c3 (decoder)."""
    model = UNeXt(2, 3, 1, channels=SMALL)
    blocks = [m for m in model.modules() if isinstance(m, ShiftedMLPBlock)]
    assert sorted(b.norm.normalized_shape[0] for b in blocks) == [20, 24, 24, 32]
    x = torch.randn(1, 3, 64, 64)
    shapes = []
    t = x
    for stage in (model.encoder1, model.encoder2, model.encoder3, model.encoder4, model.bottleneck):
        t = stage(t)
        shapes.append(tuple(t.shape[1:]))
    assert shapes == [(4, 32, 32), (8, 16, 16), (20, 8, 8), (24, 4, 4), (32, 2, 2)]


@pytest.mark.parametrize("size", [(32, 32, 32), (32, 64, 32)])
def test_3d_shapes(size: tuple[int, int, int]) -> None:
    model = UNeXt(3, 2, 3, channels=SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, *size))
    assert isinstance(out, Tensor)
    assert out.shape == (1, 3, *size)
    assert sum(isinstance(m, torch.nn.Conv3d) for m in model.modules()) > 0


def test_3d_parameters_by_hand_differ_only_in_kernels() -> None:
    """3D swaps 3x3 for 3x3x3 kernels: each 3x3 conv weight grows by 18/9 = 2x; 1x1 and Linear stay."""
    two, three = UNeXt(2, 2, 3, channels=SMALL), UNeXt(3, 2, 3, channels=SMALL)
    kernel3 = sum(p.numel() for n, p in two.named_parameters() if p.dim() == 4 and p.shape[-1] == 3)
    assert count_parameters(three) - count_parameters(two) == 2 * kernel3


def test_input_size_and_option_errors() -> None:
    model = UNeXt(2, 1, 1, channels=SMALL)
    with pytest.raises(InputSizeError, match="32 or 64"):
        model(torch.randn(1, 1, 48, 32))
    with pytest.raises(MedsegError, match="channels"):
        UNeXt(2, 1, 1, channels=(8, 16, 32))
    with pytest.raises(MedsegError, match="spatial_dims"):
        UNeXt(4, 1, 1)


def test_unext_s_fits_a_synthetic_blob() -> None:
    """0.5 BCE + Dice (the paper's loss) on a disk falls well below its start in 15 Adam steps."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mask = (((yy - 12) ** 2 + (xx - 18) ** 2) < 49).float()[None, None].repeat(2, 1, 1, 1)
    image = mask.repeat(1, 3, 1, 1) + 0.3 * torch.randn(2, 3, 32, 32)
    model = create_model("unext_s", in_channels=3, num_classes=1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn() -> Tensor:
        logits = model(image)
        prob = logits.sigmoid()
        overlap, total = (prob * mask).sum((1, 2, 3)), (prob + mask).sum((1, 2, 3))
        dice = 1 - (2 * overlap + 1e-5) / (total + 1e-5)
        return 0.5 * F.binary_cross_entropy_with_logits(logits, mask) + dice.mean()

    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_isic_preset_loss_is_the_official_bce_dice() -> None:
    """configs/unext-isic.yaml: 0.5 BCE + soft Dice per sample (smooth 1e-5), as the official BCEDiceLoss."""
    config = load_config(Path(__file__).parents[2] / "configs" / "unext-isic.yaml")
    assert config.model.name == "unext" and config.data.resize == (256, 256) and config.data.batch_size == 16
    assert config.optim.name == "adam" and config.optim.lr == 1e-3 and config.optim.weight_decay == 1e-4
    assert config.optim.lr * config.schedule.min_lr_factor == pytest.approx(1e-5)
    assert config.augmentation.rot90.enabled and config.augmentation.mirror.enabled
    assert not config.augmentation.rotation.enabled and not config.augmentation.scale.enabled
    loss = build_loss(config.loss.build_spec(config.data.label_mode, model_info("unext")["default_loss"]))
    logits = torch.randn(3, 1, 8, 8)
    target = (torch.rand(3, 1, 8, 8) > 0.6).float()
    prob, truth = logits.sigmoid().flatten(1), target.flatten(1)
    dice = 1 - (2 * (prob * truth).sum(1) + 1e-5) / (prob.sum(1) + truth.sum(1) + 1e-5)
    expected = 0.5 * F.binary_cross_entropy_with_logits(logits, target) + dice.mean()
    assert torch.allclose(loss(logits, target), expected, atol=1e-6)
