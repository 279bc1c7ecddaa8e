"""Wall time of ``medseg evaluate`` on 200 2D cases with all metrics (losses/metrics issue).

The ground truth is the synthetic polyp data set (``images/`` + ``masks/``, 256x256 PNG, given as the data
set root so that the report's overlays show the images); the predictions are perturbed masks written as
0/255 PNG: a random shift of up to 4 pixels, a random dilation or erosion of up to 3 pixels, a false
positive blob in one case of ten and an empty prediction in one case of fifty (so that the distance
metrics have NaN values to count). The command is run as a subprocess, as a user would run it (Python
start-up, reading, all 20 metrics, CSV, JSON and the HTML report with its figures), once per worker count.

    .venv/bin/python benchmarks/evaluate_speed.py [--cases 200] [--size 256] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.data import read_mask, write_mask, write_polyp_dataset
from medseg.engine.benchmark import markdown_table, write_benchmark_report
from medseg.metrics.case import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[1]


def perturbed(mask: np.ndarray, rng: np.random.Generator, index: int) -> np.ndarray:
    """A plausible wrong prediction of ``mask`` (see the module docstring)."""
    if index % 50 == 49:
        return np.zeros_like(mask)
    pred = np.roll(mask, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1)).astype(bool)
    steps = int(rng.integers(-3, 4))
    if steps > 0:
        pred = ndimage.binary_dilation(pred, iterations=steps)
    elif steps < 0:
        pred = ndimage.binary_erosion(pred, iterations=-steps)
    if index % 10 == 3:
        yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
        cy, cx = rng.integers(10, mask.shape[0] - 10), rng.integers(10, mask.shape[1] - 10)
        pred |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    return pred.astype(np.uint8)


def write_predictions(dataset: Path, out: Path, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    masks = sorted((dataset / "masks").glob("*.png"))
    for index, path in enumerate(masks):
        labels, _ = read_mask(path)
        write_mask(out / path.name, perturbed(labels[0], rng, index)[None] * np.uint8(255))
    return len(masks)


def timed_evaluate(pred: Path, gt: Path, out: Path, workers: int) -> tuple[float, list[str]]:
    command = [sys.executable, "-m", "medseg.cli", "evaluate", str(pred), str(gt), "--out", str(out),
               "--workers", str(workers), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=None, help="folder for the data (default: temporary)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file (default: benchmarks/results/"
                                                                "evaluate-speed-cpu-<machine>.md)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        size = (args.size, args.size)
        dataset = write_polyp_dataset(work / "polyps", n_cases=args.cases, size=size, seed=0)
        pred = work / "predictions"
        n = write_predictions(dataset, pred)
        rows, commands = [], []
        load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        for workers in (2, 1):
            seconds, command = timed_evaluate(pred, dataset, work / f"evaluation-{workers}", workers)
            summary_file = work / f"evaluation-{workers}" / "summary.json"
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
            nan = sum(stats["nan"] for stats in summary["metrics"].values())
            rows.append([f"{summary['cases']}", f"{args.size}x{args.size}", str(len(summary["metrics"])),
                         str(workers), f"{seconds:.1f}", f"{summary['cases'] / seconds:.1f}", str(nan),
                         f"{summary['metrics']['dice']['mean']:.3f}"])
            commands.append(shlex.join(["medseg", *command[3:]]).replace(str(work), "WORK"))
            print(f"workers {workers}: {seconds:.1f} s for {n} cases", file=sys.stderr)
    table = markdown_table(["cases", "size", "metrics", "workers", "wall time (s)", "cases/s",
                            "NaN values", "mean Dice"], rows, [True] * 8)
    notes = [
        f"date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; load average (1 min) at the "
        f"start: {load:.1f}",
        f"data: synthetic polyps (PNG, RGB images + 0/255 masks), predictions = perturbed masks (PNG); "
        f"metrics: all {len(METRIC_NAMES)} ({', '.join(METRIC_NAMES)})",
        "wall time of the whole command (Python start-up, reading, metrics, metrics.csv, summary.json, "
        "report.html with box plots and 10 overlays)",
        *(f"command: `{c}`" for c in commands),
        "produced by `.venv/bin/python benchmarks/evaluate_speed.py`",
    ]
    write_benchmark_report("evaluate-speed", "medseg evaluate: 2D speed", table, notes, out=args.out,
                           results_dir=ROOT / "benchmarks" / "results")


if __name__ == "__main__":
    main()
