"""``medseg demo``: the pipeline end to end at toy sizes (the Dice target is measured, not tested)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medseg.cli import main
from medseg.data.io import read_mask
from medseg.engine import trainer as trainer_module
from medseg.engine.demo import DEMO_CONFIG, demo_config, run_demo

CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "unet-synthetic-2d.yaml"
TINY = {"data": {"synthetic": {"n_cases": 8, "size": [32, 32]}, "resize": None, "batch_size": 4,
                 "val_fraction": 0.25},
        "model": {"options": {"features": 4, "depth": 2}},
        "train": {"epochs": 3}}


def test_embedded_config_equals_the_yaml_preset() -> None:
    with CONFIG_FILE.open(encoding="utf-8") as file:
        assert yaml.safe_load(file) == DEMO_CONFIG


def test_demo_config_puts_everything_under_out(tmp_path: Path) -> None:
    config = demo_config(tmp_path, {"train": {"epochs": 2}})
    assert config.data.root == str(tmp_path / "data")
    assert config.resolved_run_dir() == tmp_path / "run"
    assert config.train.device == "cpu" and config.train.epochs == 2
    assert config.model.options == DEMO_CONFIG["model"]["options"]


def test_demo_pipeline_writes_predictions_and_report(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", minutes=0.2, overrides=TINY, progress=False)
    out = tmp_path / "demo"
    assert result.checkpoint.is_file() and result.checkpoint.parent == out / "run"
    for path in (out / "evaluation" / "summary.json", out / "evaluation" / "report.html",
                 out / "evaluation" / "progress.png", out / "run" / "progress.png"):
        assert path.is_file(), path
    val_ids = json.loads((out / "run" / "splits.json").read_text(encoding="utf-8"))[0]["val"]
    predicted = sorted(p.stem for p in (out / "predictions").glob("*.png"))
    assert predicted == sorted(val_ids) and len(val_ids) == 2
    assert read_mask(out / "predictions" / f"{val_ids[0]}.png")[0].shape == (1, 32, 32)
    assert (out / "predictions" / "overlays" / f"{val_ids[0]}.png").is_file()
    summary = json.loads((out / "evaluation" / "summary.json").read_text(encoding="utf-8"))
    assert summary["cases"] == 2 and summary["metrics"]["dice"]["mean"] == pytest.approx(result.dice)
    assert trainer_module.Trainer.__name__ == "Trainer"  # the time budget is undone
    assert any("validation Dice" in line for line in result.lines())


def test_time_budget_stops_training_after_an_epoch(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", minutes=1e-6, overrides=TINY, progress=False)
    assert result.epochs == 1 and result.checkpoint.is_file()


def test_demo_help_and_bad_minutes(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert main(["demo", "--minutes", "-1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
