"""Cascade benchmark on MSD Task04 Hippocampus (issue 21): the two cascade presets against the single-stage
full-resolution U-Net, on the held-out split of ``benchmarks/hippocampus.py``.

Three runs under one budget (``--minutes`` of training each, the same batch, batches per epoch, seed and
split; the presets' model, loss, optimiser, schedule and augmentation):

1. ``configs/cascade-lowres-hippocampus.yaml``: stage 1 at 2 mm; predicted alone (its logits resampled to
   the 1 mm grid) it is the "stage 1 alone" row;
2. ``configs/cascade-fullres-hippocampus.yaml``: stage 2 at 1 mm with ``data.cascade_from`` the stage-1
   run; stage 1 first predicts every training and validation case (timed, the "stage-1 maps" column);
   ``medseg predict`` with its checkpoint runs both stages (the "cascade" row);
3. ``configs/unet3d-hippocampus.yaml``: the same U-Net at 1 mm without the cascade (the peer).

Every row is predicted without test-time mirroring and evaluated with ``medseg evaluate`` (Dice, HD95 and
ASSD per class). The section "Cascade" of ``benchmarks/results/hippocampus-cpu-intel-xeon.md`` is
replaced (or appended at the end) with the table, the machine, the command and the wall time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cascade_hippocampus.py [--minutes 4] [--batch-size 4]
        [--iterations-per-epoch 20] [--val-cases 10] [--test-cases 40] [--out /tmp/bench/cascade]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hippocampus import COLUMNS
from train_compare import ROOT, link_cases, metric_cell, split_cases

from medseg.data import load_dataset, write_splits
from medseg.engine import train
from medseg.engine.benchmark import machine_description, markdown_table
from medseg.engine.config import load_config
from medseg.engine.evaluate import evaluate_folders
from medseg.engine.predict import predict_paths
from medseg.fileio import write_text_atomically

SECTION = "## Cascade"
RESULTS = ROOT / "benchmarks" / "results" / "hippocampus-cpu-intel-xeon.md"


def _overrides(args: argparse.Namespace, out: Path, run: str, splits: Path) -> list[str]:
    return [f"run_dir={out / run}", f"data.root={args.data}", f"data.splits_file={splits}", "data.fold=0",
            f"data.cache_dir={out / run / 'cache'}", f"data.batch_size={args.batch_size}",
            "data.num_workers=0", "train.epochs=1000", f"train.max_minutes={args.minutes}",
            f"train.iterations_per_epoch={args.iterations_per_epoch}", "train.val_every=1",
            "train.val_metrics=[dice]", "train.device=cpu", "inference.mirror=false",
            "inference.postprocess.largest_component=false"]


def _evaluate(checkpoint: Path, images: Path, masks: Path, folder: Path) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    predict_paths([checkpoint], images, folder / "predictions", overlays=False, device="cpu", progress=True)
    seconds = time.perf_counter() - start
    summary = evaluate_folders(folder / "predictions", masks, out_dir=folder / "evaluation",
                               metrics=["dice", "hd95", "assd"], progress=False)
    return summary.data, seconds


def _train(preset: str, overrides: list[str]) -> tuple[Path, float, int, float]:
    """Train a preset; returns the checkpoint, the training minutes, the epochs and the wall seconds."""
    start = time.perf_counter()
    result = train(load_config(ROOT / "configs" / preset, overrides), progress=True)
    minutes = sum(float(row.get("time_s", 0.0)) for row in result.history) / 60.0
    return result.best_checkpoint or result.last_checkpoint, minutes, result.epochs_run, \
        time.perf_counter() - start


def _write_section(text: str) -> None:
    """Replace the ``## Cascade`` section of the results file (it runs to the end), or append it."""
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else ""
    if SECTION + "\n" in current:
        current = current[:current.index(SECTION + "\n")]
    write_text_atomically(RESULTS, current.rstrip("\n") + "\n\n" + text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes per run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iterations-per-epoch", type=int, default=20)
    parser.add_argument("--val-cases", type=int, default=10)
    parser.add_argument("--test-cases", type=int, default=40)
    parser.add_argument("--train-cases", type=int, default=None, help="at most this many (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path,
                        default=ROOT.parent / "shared" / "data" / "msd-task04-hippocampus")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench/cascade"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    dataset = load_dataset(args.data)
    split = split_cases(dataset.case_ids, args.test_cases, args.val_cases, args.train_cases, args.seed)
    splits = args.out / "splits.json"
    write_splits(splits, [{"train": split["train"], "val": split["val"]}])
    images, masks = link_cases([dataset.case(c) for c in split["test"]], args.out / "test")

    low_ckpt, low_min, low_epochs, _ = _train("cascade-lowres-hippocampus.yaml",
                                              _overrides(args, args.out, "lowres", splits))
    full_ckpt, full_min, full_epochs, full_wall = _train(
        "cascade-fullres-hippocampus.yaml",
        [*_overrides(args, args.out, "fullres", splits), f"data.cascade_from={args.out / 'lowres'}"])
    maps_s = full_wall - full_min * 60.0  # stage-1 maps + the stage-2 cache: the wall time outside epochs
    single_ckpt, single_min, single_epochs, _ = _train("unet3d-hippocampus.yaml",
                                                       _overrides(args, args.out, "single", splits))
    rows = []
    for name, ckpt, minutes, epochs in (("stage 1 alone (2 mm)", low_ckpt, low_min, low_epochs),
                                        ("cascade (stage 1 + stage 2)", full_ckpt, low_min + full_min,
                                         f"{low_epochs} + {full_epochs}"),
                                        ("unet3d-hippocampus (1 mm, one stage)", single_ckpt, single_min,
                                         single_epochs)):
        summary, seconds = _evaluate(ckpt, images, masks, args.out / f"eval-{len(rows)}")
        rows.append((name, minutes, epochs, seconds, summary))
    peer_seconds = rows[2][3]
    headers = ["model", "train (min)", "epochs", "predict (s/case)", "vs one stage",
               *(c.header for c in COLUMNS)]
    lines = [[name, f"{minutes:.1f}", str(epochs), f"{seconds / len(split['test']):.2f}",
              f"{seconds / peer_seconds:.2f}x", *(metric_cell(summary, c) for c in COLUMNS)]
             for name, minutes, epochs, seconds, summary in rows]
    table = markdown_table(headers, lines, [False, *[True] * (len(headers) - 1)])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cascade_hippocampus.py " + \
        " ".join(shlex.quote(a) for a in argv)
    notes = [
        f"machine: {machine_description()}, shared with other jobs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread; load average at the end {load} (1, 5, 15 min)",
        f"command: `{command.strip()}`",
        f"split (seed {args.seed}, as `benchmarks/hippocampus.py`): {len(split['train'])} training, "
        f"{len(split['val'])} validation (best checkpoint), {len(split['test'])} held-out test cases",
        f"budget per run: {args.minutes:g} min of training (stop at the first epoch end past it), batch "
        f"{args.batch_size}, {args.iterations_per_epoch} batches per epoch; the presets' patch, model, loss "
        "(Dice + CE, deep supervision), SGD and augmentation; no test-time mirroring, no postprocessing",
        f"stage-1 maps of the {len(split['train']) + len(split['val'])} training and validation cases and "
        f"the stage-2 cache: {maps_s / 60:.1f} min (not in the training minutes); the stage-1 maps are "
        "plain predictions of the stage-1 model (not cross-validated)",
        "predict: wall time of `medseg predict` per test case (the cascade runs both stages); vs one "
        "stage: that time over the single-stage U-Net's, measured in the same run",
        "metrics: mean over the test cases per class (`medseg evaluate`); HD95 and ASSD in mm",
        f"total wall time: {(time.perf_counter() - started) / 60:.1f} min",
    ]
    dice = [summary["metrics"].get("dice", {}).get("per_class", {}) for *_, summary in rows]
    if all(not any(v for v in per_class.values()) for per_class in dice):
        notes.append("no run predicted any foreground (Dice 0, no distances): the budget is too short for "
                     "these presets (SGD 0.01, momentum 0.99, deep supervision, 3 poolings); only the costs "
                     "(training and prediction times) are comparable here")
    _write_section(f"{SECTION}\n\nThe presets `cascade-lowres-hippocampus.yaml` and "
                   "`cascade-fullres-hippocampus.yaml` (`benchmarks/cascade_hippocampus.py`).\n\n"
                   + "\n".join(f"- {n}" for n in notes) + "\n\n" + table + "\n")
    print(json.dumps({"rows": [r[:4] for r in rows]}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
