"""Adversarial training (``train.adversarial``, Luc et al. 2016): the maps D sees, the game, the log, the
segmenter's gradient, exact resume of both players, config errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import tiny_config
from medseg.config_types import ConfigError
from medseg.engine import trainer as trainer_module
from medseg.engine.adversarial import AdversarialConfig, Adversary, DiscriminatorConfig
from medseg.engine.checkpoint import load_checkpoint
from medseg.engine.config import config_from_dict
from medseg.engine.distributed import DistributedContext
from medseg.engine.trainer import train
from medseg.errors import MedsegError
from medseg.models.registry import create_model

SMALL_D = {"discriminator": {"options": {"features": 4}}}


def adversary(mode: str, classes: int, dims: int = 2, **settings: Any) -> Adversary:
    config = AdversarialConfig(discriminator=DiscriminatorConfig(options={"features": 4}), **settings)
    return Adversary(config, spatial_dims=dims, image_channels=1, num_classes=classes, label_mode=mode,
                     seed=0, device=torch.device("cpu"), ctx=DistributedContext())


def adversarial_config(tmp: Path, run: str = "run", **adversarial: Any) -> dict[str, Any]:
    return tiny_config(tmp, run, epochs=3, iterations_per_epoch=2, adversarial={**SMALL_D, **adversarial})


def read_log(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def discriminator_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["training"]["extra"]["adversarial"]["discriminator"]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return not all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ the maps


def test_maps_per_label_mode() -> None:
    logits = torch.randn(2, 3, 8, 8)
    multiclass = adversary("multiclass", 3)
    probs = multiclass.probabilities(logits, logits.shape[2:])
    assert torch.allclose(probs.sum(1), torch.ones(2, 8, 8))
    classes = torch.randint(0, 3, (2, 1, 8, 8))
    onehot = multiclass.target_map(classes)
    assert onehot.shape == (2, 3, 8, 8) and torch.equal(onehot.argmax(1), classes[:, 0])
    assert torch.equal(onehot.sum(1), torch.ones(2, 8, 8))
    multilabel = adversary("multilabel", 3)
    assert torch.allclose(multilabel.probabilities(logits, logits.shape[2:]), logits.sigmoid())
    masks = torch.rand(2, 3, 8, 8) > 0.5
    assert torch.equal(multilabel.target_map(masks), masks.float())
    binary = adversary("binary", 1)
    small = torch.randn(2, 1, 4, 4)  # a coarser map is resized to the image
    assert binary.probabilities(small, torch.Size([8, 8])).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(("mode", "classes", "dims"), [("binary", 1, 2), ("multiclass", 3, 3),
                                                       ("multilabel", 2, 3), ("multiclass", 4, 2)])
def test_discriminator_learns_to_tell_truth_from_prediction(mode: str, classes: int, dims: int) -> None:
    torch.manual_seed(0)
    player = adversary(mode, classes, dims, lr=1e-3)
    image = torch.randn(2, 1, *[16] * dims)
    label = (torch.randint(0, classes, (2, 1, *[16] * dims)) if mode == "multiclass"
             else torch.rand(2, classes, *[16] * dims) > 0.5)
    fake = player.probabilities(torch.randn(2, classes, *[16] * dims) * 0.1, image.shape[2:])
    losses = [player.discriminator_step(image, fake, label).item() for _ in range(20)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1


def test_segmenter_term_trains_the_segmenter_only() -> None:
    torch.manual_seed(0)
    player = adversary("binary", 1, weight=1.0)
    net = create_model("unet", in_channels=1, num_classes=1, spatial_dims=2, features=4, depth=2)
    image, label = torch.randn(2, 1, 16, 16), torch.rand(2, 1, 16, 16) > 0.5
    before = {k: v.clone() for k, v in player.discriminator.state_dict().items()}
    zero = torch.zeros(())
    objective = player.objective(0, image, net(image), label, zero)
    after = player.discriminator.state_dict()
    assert differs(before, after)  # one D step happened
    objective.backward()
    assert all(p.grad is None for p in player.discriminator.parameters())  # no gradient into D
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert sum(p.grad.abs().sum() for p in net.parameters()) > 0
    assert player.objective(-1, image, net(image), label, zero) is zero  # before start_epoch: untouched
    log = player.epoch_log()
    assert set(log) == {"d_loss", "adv_loss"} and player.epoch_log() == {}  # reset after reading


# ------------------------------------------------------------------------------------------ in the trainer


def test_both_players_losses_move_and_are_logged(tmp_path: Path) -> None:
    result = train(config_from_dict(adversarial_config(tmp_path, lr=1e-3, weight=1.0)), progress=False)
    rows = read_log(tmp_path / "run")
    assert len(rows) == 3
    for key in ("d_loss", "adv_loss"):
        values = [float(r[key]) for r in rows]
        assert all(math.isfinite(v) and v > 0 for v in values)
        assert len(set(values)) == 3, (key, values)  # they change from epoch to epoch
    assert [r["d_loss"] for r in result.history] == [float(r["d_loss"]) for r in rows]
    fresh = adversary("binary", 1).discriminator.state_dict()  # the same seed: D's initial weights
    assert differs(fresh, discriminator_weights(tmp_path / "run" / "last.pt"))


def test_multiclass_run_logs_the_discriminator(tmp_path: Path) -> None:
    data = adversarial_config(tmp_path, start_epoch=1)
    data["train"].update(epochs=2, iterations_per_epoch=1)
    data["data"].update(label_mode="multiclass", num_classes=2)
    data["loss"] = {"losses": [{"name": "ce"}]}
    rows = read_log(train(config_from_dict(data), progress=False).run_dir)
    assert rows[0]["d_loss"] == "" and math.isfinite(float(rows[1]["d_loss"]))  # off before start_epoch


def test_segmenter_gradient_includes_the_adversarial_term(tmp_path: Path) -> None:
    runs = {}
    for name, weight in (("w0", 0.0), ("w1", 1.0)):
        data = adversarial_config(tmp_path, name, weight=weight, start_epoch=1)
        data["train"].update(epochs=2, save_every=1)
        runs[name] = train(config_from_dict(data), progress=False).run_dir
    plain = tiny_config(tmp_path, "plain", epochs=2, iterations_per_epoch=2, save_every=1)
    runs["plain"] = train(config_from_dict(plain), progress=False).run_dir
    first = {k: load_checkpoint(run / "epoch_0001.pt")["state_dict"] for k, run in runs.items()}
    final = {k: load_checkpoint(run / "last.pt")["state_dict"] for k, run in runs.items()}
    assert_same_tensors(first["w0"], first["w1"])  # before start_epoch the weight does not matter
    assert differs(final["w0"], final["w1"])  # after it, lambda 1 changes the segmenter's updates
    assert_same_tensors(final["w0"], final["plain"])  # lambda 0 is plain training, to the bit
    assert_same_tensors(first["w0"], first["plain"])  # and building D drew nothing from the global RNG


def test_resume_restores_both_players_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"lr": 1e-3, "weight": 0.5, "start_epoch": 1}
    full_config = adversarial_config(tmp_path, "full", **settings)
    full_config["train"]["iterations_per_epoch"] = 1
    full = train(config_from_dict(full_config), progress=False)
    original = trainer_module.Trainer.end_epoch

    def crash_after_second(self: trainer_module.Trainer, row: dict[str, Any]) -> bool:
        stop = original(self, row)
        if self.epoch == 2:
            raise KeyboardInterrupt("simulated crash after the second checkpoint")
        return stop

    split_config = adversarial_config(tmp_path, "split", **settings)
    split_config["train"]["iterations_per_epoch"] = 1
    config = config_from_dict(split_config)
    monkeypatch.setattr(trainer_module.Trainer, "end_epoch", crash_after_second)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "end_epoch", original)
    resumed = train(config, resume=True, progress=False)
    assert resumed.epochs_run == 3
    a, b = load_checkpoint(full.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert_same_tensors(a["state_dict"], b["state_dict"])
    adv_a, adv_b = a["training"]["extra"]["adversarial"], b["training"]["extra"]["adversarial"]
    assert_same_tensors(adv_a["discriminator"], adv_b["discriminator"])
    for index, state in adv_a["optimizer"]["state"].items():
        assert_same_tensors(state, adv_b["optimizer"]["state"][index])
    keys = ("train_loss", "d_loss", "adv_loss")
    assert [[r.get(k) for k in keys] for r in resumed.history] == [[r.get(k) for k in keys]
                                                                   for r in full.history]


def test_resuming_a_plain_run_in_adversarial_mode_is_refused(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tiny_config(tmp_path, epochs=2, iterations_per_epoch=1)
    original = trainer_module.Trainer.end_epoch

    def crash(self: trainer_module.Trainer, row: dict[str, Any]) -> bool:
        original(self, row)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.Trainer, "end_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config_from_dict(plain), progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "end_epoch", original)
    plain["train"]["adversarial"] = SMALL_D
    with pytest.raises(MedsegError, match=r"last\.pt was written without the adversarial mode"):
        train(config_from_dict(plain), resume=True, progress=False)


# ------------------------------------------------------------------------------------------ config


def test_config_defaults_and_errors(tmp_path: Path) -> None:
    config = config_from_dict({"train": {"adversarial": {}}}).train.adversarial
    assert (config.discriminator.name, config.weight, config.start_epoch, config.optimiser) == \
        ("luc", 0.1, 0, "adam")
    with pytest.raises(ConfigError, match="train.adversarial.start_epoch: 5 is not before the end"):
        config_from_dict({"train": {"epochs": 5, "adversarial": {"start_epoch": 5}}})
    with pytest.raises(ConfigError, match="train.adversarial.discriminator.options: unknown"):
        config_from_dict({"train": {"adversarial": {"discriminator": {"options": {"depth": 2}}}}})
    with pytest.raises(ConfigError, match="train.adversarial.weight"):
        config_from_dict({"train": {"adversarial": {"weight": -1}}})
    with pytest.raises(ConfigError, match="train.adversarial.discriminator.name"):
        config_from_dict({"train": {"adversarial": {"discriminator": {"name": "patchgan"}}}})
