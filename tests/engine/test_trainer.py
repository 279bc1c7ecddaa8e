"""The trainer: outputs of a run, learning, exact resume (in-process and after SIGKILL), CLI errors."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from helpers import tiny_config
from medseg.cli import main
from medseg.engine import plan as plan_module
from medseg.engine import trainer as trainer_module
from medseg.engine.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from medseg.engine.config import config_from_dict
from medseg.engine.schedules import BudgetClock
from medseg.engine.trainer import train
from medseg.engine.validation import BestMetric
from medseg.errors import MedsegError


def losses(history: list[dict[str, Any]]) -> list[float]:
    return [row["train_loss"] for row in history]


def crash_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]) -> Any:
    """Train ``tmp_path/split`` with ``settings``, crash after the first epoch's checkpoint, then resume."""
    original = trainer_module.Trainer.end_epoch

    def crash_after_first(self: trainer_module.Trainer, row: dict[str, Any]) -> bool:
        stop = original(self, row)
        if self.epoch == 1:
            raise KeyboardInterrupt("simulated crash after the first checkpoint")
        return stop

    config = config_from_dict(tiny_config(tmp_path, "split", **settings))
    monkeypatch.setattr(trainer_module.Trainer, "end_epoch", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "end_epoch", original)
    return train(config, resume=True, progress=False)


def test_run_writes_everything_and_learns(tmp_path: Path) -> None:
    config = config_from_dict(tiny_config(tmp_path, epochs=4, grad_accumulation=2))
    result = train(config, progress=False)
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "log.csv", "progress.png", "config.yaml", "splits.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "log.csv").open(encoding="utf-8")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert {"train_loss", "val_dice", "lr", "time_s"} <= set(rows[0])
    assert result.epochs_run == 4 and result.best_score == max(float(r["val_dice"]) for r in rows)
    assert losses(result.history)[-1] < losses(result.history)[0]
    # the learning rate decays (poly) and is logged per epoch
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["model"]["name"] == "unet" and ckpt["model"]["spatial_dims"] == 2
    assert ckpt["model"]["in_channels"] == 3 and ckpt["preprocessing"]["normalization"] == "rgb"
    assert ckpt["training"]["epoch"] == 4 and ckpt["training"]["global_step"] == 4 * 2  # 3 batches: 2 steps
    assert load_checkpoint(run / "best.pt")["training"] is None
    model = build_model_from_checkpoint(run / "best.pt")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["epochs"] == 4


def test_iterations_per_epoch_cuts_a_whole_image_pass_short(tmp_path: Path) -> None:
    config = config_from_dict(tiny_config(tmp_path, epochs=2, iterations_per_epoch=1))
    train(config, progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["training"]["global_step"] == 2  # not 2 x 3 batches


def test_resume_matches_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"epochs": 3, "val_every": 2}
    full = train(config_from_dict(tiny_config(tmp_path, "full", **settings)), progress=False)

    resumed = crash_then_resume(tmp_path, monkeypatch, settings)
    assert resumed.epochs_run == 3 and len(resumed.history) == 3
    assert losses(resumed.history) == pytest.approx(losses(full.history), abs=1e-7, rel=0)
    assert resumed.best_score == pytest.approx(full.best_score, abs=1e-7)
    a = load_checkpoint(tmp_path / "full" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_spent_time_budget_stops_after_the_first_optimiser_step(tmp_path: Path) -> None:
    config = config_from_dict(tiny_config(tmp_path, epochs=5, max_minutes=1e-6))
    result = train(config, progress=False)
    assert result.epochs_run == 1 and len(result.history) == 1
    assert "val_dice" in result.history[0]  # the cut epoch is still validated
    assert load_checkpoint(result.last_checkpoint)["training"]["global_step"] == 1
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()


class FakeSeconds:
    """A clock that advances ``step`` seconds per reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_time_budget_cuts_the_epoch_and_ends_the_poly_schedule(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BudgetClock, "now", staticmethod(FakeSeconds(1.0)))  # 1 s per reading
    config = config_from_dict(tiny_config(tmp_path, epochs=20, max_minutes=5.5 / 60))
    result = train(config, progress=False)
    training = load_checkpoint(result.last_checkpoint)["training"]
    steps_per_epoch = 3  # 6 training images, batch 2 (see tiny_config)
    # readings: 1 s per step, 1 s at each epoch end; epoch 1: 3 steps (3 s), its end (4 s); epoch 2 is cut
    # after its second step (6 s >= 5.5 s)
    assert training["global_step"] == 5 and result.epochs_run == 2
    assert training["global_step"] < 20 * steps_per_epoch
    assert training["extra"]["budget_seconds_used"] == pytest.approx(7.0)  # the final epoch end
    assert training["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-6)  # poly at its end
    lrs = [row["lr"] for row in result.history]
    # epoch 2 starts with the rate set at step 3 (3 of 5.5 s): the poly factor of step round(3/5.5 * 60) of
    # the 60 planned, not of step 3
    step = round(3 / 5.5 * 20 * steps_per_epoch)
    assert lrs[0] == pytest.approx(0.01) and lrs[1] == pytest.approx(0.01 * (1 - step / 60) ** 0.9, rel=1e-6)
    assert all("val_dice" in row for row in result.history)


def test_sigkill_mid_run_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    data = tiny_config(tmp_path, epochs=4, val_every=4)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(data))
    command = [sys.executable, "-m", "medseg.cli", "train", str(config_file), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "run" / "last.pt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if last.is_file() and load_checkpoint(last)["training"]["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(last)["training"]["epoch"]  # never corrupt
    assert 1 <= killed_at < 4
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(last)["training"]["epoch"] == 4
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open(encoding="utf-8")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 5))


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    assert main(["train", str(config_file), "train.epoch=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medseg: error:") and "train.epoch" in err and "\n" not in err
    assert main(["train", str(config_file), "data.root=" + str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing" in err and "\n" not in err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert main(["train", str(config_file), "train.device=cuda"]) == (0 if torch.cuda.is_available() else 2)


# ------------------------------------------------------------------ multi-scale, encoder weights, EMA


def test_multi_scale_draws_rounded_sizes_per_batch_seeded_by_epoch() -> None:
    factors = plan_module.MultiScale([0.75, 1.25], multiple=8, seed=0)
    factors.set_epoch(0)
    assert {tuple(factors.size((32, 32))) for _ in range(40)} == {(24, 24), (40, 40)}
    absolute = plan_module.MultiScale([13, 3], multiple=8, seed=0)
    assert {tuple(absolute.size((32, 16))) for _ in range(40)} == {(16, 16), (8, 8)}  # round(13/8)=2, min 8
    draws = []
    for epoch in (0, 0, 1):
        scale = plan_module.MultiScale([16, 24], multiple=8, seed=3)
        scale.set_epoch(epoch)
        draws.append([scale.size((32, 32))[0] for _ in range(30)])
    assert draws[0] == draws[1] and draws[0] != draws[2]
    image = torch.rand(2, 3, 32, 32)
    label = torch.zeros(2, 1, 32, 32)
    label[:, :, 8:24, 8:24] = 1
    out_image, out_label = absolute(image, label)
    assert out_image.shape[2:] == out_label.shape[2:] and out_image.shape[2] in (8, 16)
    assert set(out_label.unique().tolist()) <= {0.0, 1.0} and out_label.dtype == label.dtype


def test_multi_scale_training_sees_the_drawn_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    original = plan_module.MultiScale.__call__

    def record(self: Any, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = original(self, image, label)
        seen.append(tuple(image.shape[2:]))
        return image, label

    monkeypatch.setattr(plan_module.MultiScale, "__call__", record)
    config = config_from_dict(tiny_config(tmp_path, epochs=1, multi_scale=[0.5, 0.75]))
    result = train(config, progress=False)
    assert result.epochs_run == 1 and len(seen) == 3  # 6 training images in batches of 2
    assert set(seen) <= {(16, 16), (24, 24)}  # factors of the 32x32 batches (multiples of unet's 4)


def encoder_weight_file(tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    from medseg.encoders import create_encoder

    torch.manual_seed(5)
    state = create_encoder("resnet18", widths=(8, 16, 32, 64), stem_width=8).state_dict()
    state["fc.weight"] = torch.zeros(10, 64)  # a classifier key: ignored
    path = tmp / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_encoder_weights_are_loaded_before_training_and_not_on_resume(tmp_path: Path) -> None:
    path, state = encoder_weight_file(tmp_path)
    data = tiny_config(tmp_path, epochs=1, iterations_per_epoch=1)
    data["model"] = {"name": "m2snet", "encoder_weights": str(path),
                     "options": {"encoder": "resnet18", "channels": 8,
                                 "encoder_options": {"widths": [8, 16, 32, 64], "stem_width": 8}}}
    data["optim"] = {"name": "adam", "lr": 1e-9}  # the weights stay where the file put them
    train(config_from_dict(data), progress=False)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    weights = [k for k in state if k.endswith(".weight") and "bn" not in k and not k.startswith("fc.")]
    assert weights and all(torch.allclose(saved[f"encoder.{k}"], state[k], atol=1e-6) for k in weights)
    path.unlink()  # a resume takes the weights from last.pt, not from the (now missing) file
    data["train"]["epochs"] = 2
    assert train(config_from_dict(data), resume=True, progress=False).epochs_run == 2


def test_encoder_weights_need_a_model_with_an_encoder(tmp_path: Path) -> None:
    path, _ = encoder_weight_file(tmp_path)
    data = tiny_config(tmp_path)
    data["model"]["encoder_weights"] = str(path)
    with pytest.raises(MedsegError, match=r"^model\.encoder_weights: model UNet has no registered encoder"):
        train(config_from_dict(data), progress=False)


def test_model_ema_by_hand() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema = plan_module.ModelEMA(model, decay=0.75)
    with torch.no_grad():
        model[0].weight.fill_(6.0)
        model[1].running_mean.fill_(4.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    assert ema.module[0].weight.item() == pytest.approx(0.75 * 2 + 0.25 * 6)
    assert ema.module[1].running_mean.item() == pytest.approx(0.25 * 4)
    assert ema.module[1].num_batches_tracked.item() == 7  # integer buffers are copied
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_best_metric_tracks_improvement_direction_nan_and_staleness() -> None:
    higher = BestMetric("dice", lower_is_better=False)
    seen = [higher.update(row) for row in ({"val_dice": math.nan}, {"val_dice": 0.4}, {"train_loss": 1.0},
                                           {"val_dice": 0.3}, {"val_dice": 0.4}, {"val_dice": 0.5})]
    assert seen == [False, True, False, False, False, True] and higher.score == 0.5 and higher.stale == 0
    lower = BestMetric("hd95", lower_is_better=True, score=3.0)
    assert lower.update({"val_hd95": 2.0}) and not lower.update({"val_hd95": 2.5}) and lower.stale == 1
    config = config_from_dict({"data": {"root": "x"}, "model": {"name": "unet"},
                               "train": {"best_metric": "hd95", "val_metrics": ["hd95"]}})
    assert BestMetric.of(config) == BestMetric("hd95", lower_is_better=True)


def test_planning_names_stay_importable_from_the_trainer() -> None:
    for name in ("DataPlan", "ModelEMA", "MultiScale", "build_optimizer", "build_preprocessor",
                 "load_encoder_file", "load_init_file", "prepare_data", "seed_everything"):
        assert getattr(trainer_module, name) is getattr(plan_module, name), name
    assert {"TrainResult", "train", "prepare_data"} <= set(trainer_module.__all__)


def test_ema_weights_are_saved_and_resume_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"epochs": 3, "val_every": 1, "ema_decay": 0.5}
    full = train(config_from_dict(tiny_config(tmp_path, "full", **settings)), progress=False)
    ckpt = load_checkpoint(tmp_path / "full" / "last.pt")
    trained = ckpt["training"]["extra"]["model_state"]
    assert any(not torch.equal(ckpt["state_dict"][k], trained[k]) for k in trained)  # the average differs

    resumed = crash_then_resume(tmp_path, monkeypatch, settings)
    assert losses(resumed.history) == pytest.approx(losses(full.history), abs=1e-7, rel=0)
    assert [r["val_dice"] for r in resumed.history] == pytest.approx([r["val_dice"] for r in full.history])
    other = load_checkpoint(tmp_path / "split" / "last.pt")
    assert all(torch.equal(ckpt["state_dict"][k], other["state_dict"][k]) for k in trained)


def test_save_every_keeps_atomic_epoch_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []

    def recording_save(path: Path, state: dict[str, Any]) -> Path:
        written.append(Path(path).name)
        return save_checkpoint(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", recording_save)  # the atomic writer
    train(config_from_dict(tiny_config(tmp_path, epochs=5, save_every=2, iterations_per_epoch=1)),
          progress=False)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("epoch_*.pt")) == ["epoch_0002.pt", "epoch_0004.pt"]
    assert {"epoch_0002.pt", "epoch_0004.pt"} <= set(written) and not list(run.glob(".*.tmp"))
    second, fourth = load_checkpoint(run / "epoch_0002.pt"), load_checkpoint(run / "epoch_0004.pt")
    assert (second["training"]["epoch"], fourth["training"]["epoch"]) == (2, 4)
    weights = second["state_dict"]
    assert not all(torch.equal(weights[k], fourth["state_dict"][k]) for k in weights)
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == 5


def multiclass_config(tmp: Path, run: str, classes: int) -> dict[str, Any]:
    data = tiny_config(tmp, run, epochs=1, iterations_per_epoch=1)
    data["data"].update(label_mode="multiclass", num_classes=classes)
    data["loss"] = {"losses": [{"name": "dice"}, {"name": "ce"}]}
    return data


def test_init_from_fine_tunes_another_class_count_only_with_the_skip_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source_path = train(config_from_dict(multiclass_config(tmp_path, "source", 2)),
                        progress=False).best_checkpoint
    source = load_checkpoint(source_path)["state_dict"]
    data = multiclass_config(tmp_path, "target", 3)
    data["model"]["init_from"] = str(source_path)
    message = (r"^model\.init_from: checkpoint \S*best\.pt \(saved from model 'unet', in_channels 3, "
               r"num_classes 2, 2D\): .*2 shape mismatches \(file vs model: head\.0\.weight "
               r"\(2, 4, 1, 1\) vs \(3, 4, 1, 1\)")
    with pytest.raises(MedsegError, match=message):
        train(config_from_dict(data), progress=False)

    started: dict[str, torch.Tensor] = {}
    original = plan_module.load_init_file

    def snapshot(model: torch.nn.Module, path: str, skip: bool) -> None:
        original(model, path, skip)
        started.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(plan_module, "load_init_file", snapshot)
    data["model"]["init_skip_mismatched"] = True
    result = train(config_from_dict(data), progress=False)
    assert result.epochs_run == 1 and load_checkpoint(result.last_checkpoint)["model"]["num_classes"] == 3
    body = [k for k in source if not k.startswith("head.")]
    assert len(body) == len(source) - 2 and all(torch.equal(started[k], source[k]) for k in body)
    assert started["head.0.weight"].shape == (3, 4, 1, 1)
    source_path.unlink()  # a resume takes the weights from last.pt, not from init_from
    data["train"]["epochs"] = 2
    assert train(config_from_dict(data), resume=True, progress=False).epochs_run == 2
    assert len(started) == len(source)  # the snapshot was taken once: not on resume
