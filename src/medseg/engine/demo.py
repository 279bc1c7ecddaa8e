"""``medseg demo``: the whole pipeline in a few CPU minutes on synthetic polyp-like 2D images.

Steps: write the synthetic data set (``DIR/data``), train a small U-Net (``DIR/run``: ``best.pt``,
``last.pt``, ``log.csv``, ``progress.png``) under a wall-clock budget, predict the validation cases with the
best checkpoint (``DIR/predictions``, overlays in ``DIR/predictions/overlays``) and evaluate them
(``DIR/evaluation``: ``summary.json``, ``metrics.csv``, ``report.html``, a copy of ``progress.png``).

The configuration is :data:`DEMO_CONFIG`, the same content as ``configs/unet-synthetic-2d.yaml`` (a test
checks that they agree), so ``medseg train configs/unet-synthetic-2d.yaml`` trains the same model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.data.datasets import read_splits
from medseg.data.synthetic import write_polyp_dataset
from medseg.engine.config import RunConfig, config_from_dict
from medseg.engine.trainer import train
from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

__all__ = ["DEMO_CONFIG", "DEMO_MINUTES", "DemoResult", "demo_config", "run_demo"]

DEMO_MINUTES = 3.0
"""The default training budget; data, prediction and evaluation take well under a minute more."""

DEMO_CONFIG: dict[str, Any] = {
    "name": "unet-synthetic-2d",
    "run_dir": "runs/unet-synthetic-2d",
    "data": {
        "root": "runs/data/synthetic-polyps-128",
        "synthetic": {"kind": "polyp", "n_cases": 200, "size": [128, 128], "seed": 0},
        "patch_size": None,
        "resize": [64, 64],
        "normalization": "rgb",
        "label_mode": "binary",
        "class_names": ["polyp"],
        "val_fraction": 0.2,
        "batch_size": 8,
        "num_workers": 0,
    },
    "model": {"name": "unet", "spatial_dims": 2, "options": {"features": 8, "depth": 3}},
    "loss": {"losses": [{"name": "dice", "weight": 1.0}, {"name": "bce", "weight": 1.0}]},
    "optim": {"name": "adamw", "lr": 3.0e-3, "weight_decay": 1.0e-4},
    "schedule": {"name": "poly", "power": 0.9, "warmup_iterations": 10},
    "train": {"epochs": 15, "iterations_per_epoch": None, "val_every": 1, "val_metrics": ["dice"],
              "grad_clip": 12.0, "amp": "auto", "seed": 0, "device": "auto"},
    "augmentation": {"mirror": {"p": 0.5}, "rotation": False, "scale": False, "noise": False, "blur": False,
                     "low_resolution": False, "gamma": False},
    "inference": {"mode": "whole", "mirror": True, "threshold": 0.5,
                  "postprocess": {"largest_component": False, "fill_holes": True}},
}
"""The demo's run configuration (``configs/unet-synthetic-2d.yaml`` holds the same content)."""


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def demo_config(out: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """:data:`DEMO_CONFIG` with its data in ``out/data``, its run in ``out/run``, the CPU as device, and
    ``overrides`` (nested dicts, e.g. tiny sizes for tests) merged in."""
    data = _merge(copy.deepcopy(DEMO_CONFIG), {"run_dir": str(Path(out) / "run"),
                                               "data": {"root": str(Path(out) / "data")},
                                               "train": {"device": "cpu"}})
    return config_from_dict(_merge(data, overrides or {}))


def _free_cores() -> int:
    """Cores not busy with other processes (1-minute load average), at least 1."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


@contextlib.contextmanager
def _cpu_threads() -> Iterator[int]:
    """Use only the free cores for torch's intra-op threads: on a loaded machine OpenMP threads wait on
    each other (measured: a 64x64 U-Net step 6x slower with 2 threads than with 1 at load 7 on 2 cores)."""
    previous = torch.get_num_threads()
    threads = min(previous, _free_cores())
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


@dataclass
class DemoResult:
    """Where the demo wrote everything, and how well it did."""

    out: Path
    run_dir: Path
    checkpoint: Path
    progress_plot: Path
    predictions: Path
    report: Path
    summary: Path
    dice: float
    epochs: int
    seconds: float

    def lines(self) -> list[str]:
        """The lines the command prints."""
        return [f"run directory:   {self.run_dir} ({self.epochs} epochs)",
                f"best checkpoint: {self.checkpoint}",
                f"training curves: {self.progress_plot}",
                f"predictions:     {self.predictions} (overlays in {self.predictions / 'overlays'})",
                f"evaluation:      {self.report} ({self.summary.name} beside it)",
                f"validation Dice: {self.dice:.4f}  (total time {self.seconds:.0f} s)"]


def _copy_cases(data_root: Path, case_ids: list[str], target: Path) -> None:
    """Copy the images and masks of ``case_ids`` into ``target/images`` and ``target/masks``."""
    for folder in ("images", "masks"):
        (target / folder).mkdir(parents=True, exist_ok=True)
        for case_id in case_ids:
            shutil.copy2(data_root / folder / f"{case_id}.png", target / folder / f"{case_id}.png")


def _fresh(path: Path) -> Path:
    """Remove a previous demo's output folder ``path`` (the demo owns ``DIR``'s sub-folders)."""
    if path.exists():
        shutil.rmtree(path)
    return path


def run_demo(out: str | Path = "runs/demo", minutes: float | None = None,
             overrides: Mapping[str, Any] | None = None, progress: bool = True) -> DemoResult:
    """Run the demo into ``out`` (see the module docstring) within ``minutes`` of training.

    ``overrides`` change the configuration (nested dicts; tests use tiny sizes). Returns the paths and
    the mean validation Dice of the evaluation.
    """
    from medseg.engine.evaluate import evaluate_folders
    from medseg.engine.predict import predict_paths

    start = time.monotonic()
    out = Path(out)
    budget = minutes if minutes is not None else DEMO_MINUTES
    config = demo_config(out, _merge({"train": {"max_minutes": budget}}, overrides or {}))
    synthetic = config.data.synthetic
    assert synthetic is not None and config.data.root is not None
    data_root = write_polyp_dataset(config.data.root, synthetic.n_cases, tuple(synthetic.size),
                                    synthetic.seed)
    _fresh(config.resolved_run_dir())
    with _cpu_threads() as threads:
        logger.info("training on the CPU with %d thread(s) for at most %.1f minutes", threads, budget)
        result = train(config, progress=progress)
        if result.best_checkpoint is None:
            raise MedsegError(f"training in {result.run_dir} produced no best checkpoint")
        val_ids = list(read_splits(result.run_dir / "splits.json")[0]["val"])
        val_root = _fresh(out / "validation")
        _copy_cases(data_root, val_ids, val_root)
        predictions = _fresh(out / "predictions")
        predict_paths([result.best_checkpoint], val_root / "images", predictions, device="cpu",
                      progress=progress)
        evaluation = _fresh(out / "evaluation")
        evaluate_folders(predictions, val_root, out_dir=evaluation, metrics=["dice", "iou", "hd95"],
                         progress=progress, workers=1)
    plot = result.run_dir / "progress.png"
    if plot.is_file():
        shutil.copy2(plot, evaluation / "progress.png")
    summary_path = evaluation / "summary.json"
    dice = json.loads(summary_path.read_text(encoding="utf-8"))["metrics"]["dice"]["mean"]
    return DemoResult(out=out, run_dir=result.run_dir, checkpoint=result.best_checkpoint, progress_plot=plot,
                      predictions=predictions, report=evaluation / "report.html", summary=summary_path,
                      dice=float(dice) if dice is not None else float("nan"), epochs=result.epochs_run,
                      seconds=time.monotonic() - start)
