"""The hippocampus presets of the medical zoo (issue 21) train: their model, with the preset's options, loss
and optimiser, lowers the loss on one fixed batch (the shared model test fits only small instances)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.engine.config import load_config
from medseg.engine.plan import build_optimizer
from medseg.losses import build_loss
from medseg.models.registry import create_model, model_info

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: HighResNet keeps full resolution in all its 20 layers: even one 16^3 batch takes seconds a step.
PRESETS = [pytest.param("highresnet3d-hippocampus", marks=pytest.mark.slow), "unetr-hippocampus",
           "residual-unet3d-hippocampus"]
STEPS = 4


@pytest.mark.parametrize("name", PRESETS)
def test_hippocampus_preset_lowers_its_loss_on_one_batch(name: str) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")
    num_classes = config.data.num_classes
    torch.manual_seed(0)
    model = create_model(config.model.name, in_channels=1, num_classes=num_classes, spatial_dims=3,
                         **config.model.options).train()
    loss_fn = build_loss(config.loss.build_spec(config.data.label_mode,
                                                model_info(config.model.name)["default_loss"]))
    optimizer = build_optimizer(config, model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 16, 16, 16, generator=generator)  # a multiple of 16 (UNETR) and of 8 (3 poolings)
    target = (x[:, 0] > 0.5).long() + (x[:, 0] > 1.2).long()  # classes 0-2 that the image determines
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[1:]) < losses[0], f"{name}: the loss did not decrease: {losses}"
