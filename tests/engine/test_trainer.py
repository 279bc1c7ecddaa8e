"""The trainer: outputs of a run, learning, exact resume (in-process and after SIGKILL), CLI errors."""

from __future__ import annotations

import csv
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

from medseg.cli import main
from medseg.data import write_polyp_dataset
from medseg.engine import trainer as trainer_module
from medseg.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
from medseg.engine.config import config_from_dict
from medseg.engine.trainer import train

NO_AUGMENTATION = {name: False for name in ("mirror", "rot90", "rotation", "scale", "shear", "elastic",
                                            "noise", "blur", "brightness", "contrast", "low_resolution",
                                            "gamma")}


def tiny_config(tmp: Path, run: str = "run", **train_options: Any) -> dict[str, Any]:
    """unet features 4 depth 2 on 8 synthetic 32x32 images, whole-image batches, no augmentation, CPU."""
    data = tmp / "data"
    write_polyp_dataset(data, n_cases=8, size=(32, 32))
    return {
        "run_dir": str(tmp / run),
        "data": {"root": str(data), "batch_size": 2, "num_workers": 0, "cache_dir": str(tmp / "cache")},
        "model": {"name": "unet", "options": {"features": 4, "depth": 2}},
        "loss": {"losses": [{"name": "dice"}, {"name": "bce"}]},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 3, "iterations_per_epoch": 2, "device": "cpu", "seed": 0, **train_options},
        "augmentation": dict(NO_AUGMENTATION),
    }


def losses(history: list[dict[str, Any]]) -> list[float]:
    return [row["train_loss"] for row in history]


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


def test_resume_matches_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"epochs": 3, "val_every": 2}
    full = train(config_from_dict(tiny_config(tmp_path, "full", **settings)), progress=False)

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
    resumed = train(config, resume=True, progress=False)
    assert resumed.epochs_run == 3 and len(resumed.history) == 3
    assert losses(resumed.history) == pytest.approx(losses(full.history), abs=1e-7, rel=0)
    assert resumed.best_score == pytest.approx(full.best_score, abs=1e-7)
    a = load_checkpoint(tmp_path / "full" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_at_the_first_epoch_end_past_it(tmp_path: Path) -> None:
    config = config_from_dict(tiny_config(tmp_path, epochs=5, max_minutes=1e-6))
    result = train(config, progress=False)
    assert result.epochs_run == 1 and len(result.history) == 1
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()


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
