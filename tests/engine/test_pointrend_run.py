"""``model.pointrend`` in a run: config validation, training with the point loss, checkpoint -> predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_config
from medseg.data.io import read_mask
from medseg.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
from medseg.engine.config import ConfigError, config_from_dict, load_config
from medseg.engine.predict import predict_paths
from medseg.engine.trainer import train
from medseg.losses import PointRendLoss
from medseg.models.pointrend import PointRend, wrap_pointrend
from medseg.models.registry import create_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_config_switch_validates_its_keys(tmp_path: Path) -> None:
    settings = tiny_config(tmp_path)
    settings["model"]["pointrend"] = {}
    config = config_from_dict(settings)
    assert config.model.pointrend is not None and config.model.pointrend.subdivision_points == 8192
    assert config.model.pointrend.model_options("binary")["mode"] == "binary"
    settings["model"]["pointrend"] = {"pionts": 10}
    with pytest.raises(ConfigError, match="model.pointrend.pionts"):
        config_from_dict(settings)
    settings["model"]["pointrend"] = {"importance": 1.5}
    with pytest.raises(ConfigError, match="model.pointrend.importance"):
        config_from_dict(settings)


def test_unet_preset_builds_the_wrapped_model() -> None:
    config = load_config(CONFIGS / "unet-pointrend-polyp.yaml")
    options = config.model.pointrend.model_options(config.data.label_mode)
    unet = create_model("unet", in_channels=3, num_classes=1, **config.model.options)
    model = wrap_pointrend(unet, options, num_classes=1).eval()
    assert model.backbone.fine_channels == 128 and model.subdivision_points == 8192
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.slow
def test_wrapped_run_trains_and_its_checkpoint_predicts(tmp_path: Path) -> None:
    settings = tiny_config(tmp_path, epochs=3)
    settings["model"]["pointrend"] = {"points": 64, "subdivision_points": 128, "point_loss_weight": 0.5}
    result = train(config_from_dict(settings), progress=False)
    history = [row["train_loss"] for row in result.history]
    assert history[-1] < history[0]
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["model"]["pointrend"] == {"points": 64, "oversample": 3.0, "importance": 0.75,
                                          "subdivision_points": 128, "steps": None, "every_layer": False,
                                          "mode": "binary"}
    assert any(key.startswith("point_head.") for key in ckpt["state_dict"])
    model = build_model_from_checkpoint(result.last_checkpoint)
    assert isinstance(model, PointRend) and not model.training and model.subdivision_points == 128
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 1, 32, 32)
    image = sorted((tmp_path / "data" / "images").iterdir())[0]
    written = predict_paths([result.last_checkpoint], image, tmp_path / "pred.png", progress=False,
                            overlays=False)
    mask, _ = read_mask(written[0])
    assert mask.shape[1:] == (32, 32) and set(np.unique(mask)) <= {0, 1}


def test_trainer_wraps_the_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.engine import trainer as trainer_module

    seen = {}
    original = trainer_module.Trainer.__init__

    def spy(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        seen["loss"], seen["model"] = self.loss_fn, self.model
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "__init__", spy)
    settings = tiny_config(tmp_path, epochs=1)
    settings["model"]["pointrend"] = {"point_loss_weight": 0.25}
    with pytest.raises(KeyboardInterrupt):
        train(config_from_dict(settings), progress=False)
    assert isinstance(seen["model"], PointRend)
    assert isinstance(seen["loss"], PointRendLoss) and seen["loss"].weight == 0.25
