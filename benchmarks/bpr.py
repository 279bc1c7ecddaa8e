"""BPR benchmark (Tang et al. 2021, the "BPR" issue): boundary patch refinement on top of coarse masks,
metrics before and after, under a short CPU budget.

- **polyp** (Kvasir-SEG): a seeded subset resized to ``--size``²; the coarse source is a U-Net
  (features 16, depth 4) trained for ``--unet-minutes`` at ``--coarse-size``² and predicted back at
  ``--size``² (blocky, under-resolved boundaries); BPR patches from its predictions on the training images,
  the refiner (``configs/bpr-polyp.yaml``: HRNetV2 W18-Small-v2 + mask stem, SGD 0.01 poly) trained for
  ``--bpr-minutes`` on ``--input-size``² inputs; held-out test images: Dice, HD95 and NSD (τ = 2 px)
  before and after.
- **nuclei** (DSB2018 stage 1): the coarse masks are **simulated from the ground truth**, as a Mask R-CNN
  28x28 mask pasted back would look: each instance down-sampled by ``--nuclei-factor``, up-sampled
  bilinearly and thresholded, then eroded or dilated by one pixel at random (seeded); instance maps
  without overlaps. Instance metrics (DSB score, AJI, PQ) and the boundary F-score (1 px) before and after.

    .venv/bin/python benchmarks/bpr.py --out /tmp/bench/bpr [--device cpu] [--unet-minutes 4]
        [--bpr-minutes 6] [--tasks polyp nuclei]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medseg.data.io import case_id, read_image, read_mask, write_image, write_mask  # noqa: E402
from medseg.engine.config import config_from_dict, load_config  # noqa: E402
from medseg.engine.predict import predict_paths  # noqa: E402
from medseg.engine.refine import prepare_patches, refine_paths  # noqa: E402
from medseg.engine.trainer import train  # noqa: E402
from medseg.fileio import write_text_atomically  # noqa: E402
from medseg.metrics.instance import InstanceEvaluation  # noqa: E402
from medseg.metrics.overlap import dice  # noqa: E402
from medseg.metrics.surface import distance_metrics  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def subset(files: list[Path], n_train: int, n_test: int, seed: int) -> tuple[list[Path], list[Path]]:
    files = sorted(files)
    random.Random(seed).shuffle(files)
    return files[:n_train], files[n_train:n_train + n_test]


def write_resized_polyps(images: list[Path], out: Path, size: int) -> None:
    for path in images:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        mask = Image.open(DATA / "kvasir-seg" / "masks" / path.name).convert("L").resize((size, size),
                                                                                        Image.NEAREST)
        write_image(out / "images" / f"{path.stem}.png", np.moveaxis(np.asarray(image), -1, 0))
        write_mask(out / "masks" / f"{path.stem}.png", (np.asarray(mask) > 127).astype(np.uint8)[None])


def bpr_config(patches: Path, run: Path, args: argparse.Namespace, preset: str) -> Any:
    overrides = [f"data.root={patches}", f"data.splits_file={patches / 'splits.json'}",
                 f"data.resize=[{args.input_size},{args.input_size}]", "data.num_workers=0",
                 f"data.cache_dir={run / 'cache'}", f"run_dir={run}", f"train.device={args.device}",
                 f"train.max_minutes={args.bpr_minutes}", "train.epochs=1000",
                 "train.iterations_per_epoch=50", "train.early_stopping_patience=1000"]
    return load_config(ROOT / "configs" / preset, overrides)


def boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label map with another label in their 3x3 neighbourhood (foreground side only)."""
    grown = ndimage.maximum_filter(labels, 3) != ndimage.minimum_filter(labels, 3)
    return grown & (labels > 0)


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = 1.0) -> float:
    bp, bg = boundary(pred), boundary(gt)
    if not bp.any() or not bg.any():
        return float(bp.any() == bg.any())
    to_gt = ndimage.distance_transform_edt(~bg)
    to_pred = ndimage.distance_transform_edt(~bp)
    precision = float(np.mean(to_gt[bp] <= tolerance))
    recall = float(np.mean(to_pred[bg] <= tolerance))
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def polyp(args: argparse.Namespace, out: Path) -> tuple[list[str], list[str]]:
    start = time.time()
    train_files, test_files = subset(list((DATA / "kvasir-seg" / "images").glob("*.jpg")), args.train_cases,
                                     args.test_cases, args.seed)
    write_resized_polyps(train_files, out / "kvasir" / "train", args.size)
    write_resized_polyps(test_files, out / "kvasir" / "test", args.size)
    unet = config_from_dict({
        "run_dir": str(out / "unet"),
        "data": {"root": str(out / "kvasir" / "train"), "layout": "paired", "resize": [args.coarse_size] * 2,
                 "normalization": "rgb", "label_mode": "binary", "batch_size": 8, "num_workers": 0,
                 "cache_dir": str(out / "unet" / "cache")},
        "model": {"name": "unet", "options": {"features": 16, "depth": 4}},
        "loss": {"losses": [{"name": "dice"}, {"name": "bce"}]},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
        "train": {"epochs": 1000, "iterations_per_epoch": 50, "max_minutes": args.unet_minutes,
                  "device": args.device, "seed": args.seed},
        "inference": {"mode": "whole", "mirror": False},
    })
    unet_result = train(unet, progress=False)
    for split in ("train", "test"):
        predict_paths([unet_result.best_checkpoint], out / "kvasir" / split / "images",
                      out / "coarse" / split, overlays=False, device=args.device, progress=False,
                      overwrite=True)
    summary = prepare_patches(out / "coarse" / "train", out / "kvasir" / "train", out / "patches",
                              patch_size=args.patch_size, progress=False)
    bpr_result = train(bpr_config(out / "patches", out / "bpr", args, "bpr-polyp.yaml"), progress=False)
    refine_start = time.time()
    refine_paths(bpr_result.best_checkpoint, out / "kvasir" / "test" / "images", out / "coarse" / "test",
                 out / "refined", patch_size=args.patch_size, device=args.device, progress=False)
    refine_seconds = time.time() - refine_start
    rows = {"coarse (U-Net)": {"dice": [], "hd95": [], "nsd": []}, "BPR-refined": {"dice": [], "hd95": [],
                                                                                 "nsd": []}}
    for mask_path in sorted((out / "kvasir" / "test" / "masks").iterdir()):
        gt = read_mask(mask_path)[0][0] > 0
        for name, folder in (("coarse (U-Net)", out / "coarse" / "test"), ("BPR-refined", out / "refined")):
            pred = read_mask(folder / mask_path.name)[0][0] > 0
            distances = distance_metrics(pred, gt, tolerance=2.0)
            rows[name]["dice"].append(dice(pred, gt))
            rows[name]["hd95"].append(distances["hd95"])
            rows[name]["nsd"].append(distances["nsd"])
    table = ["| masks | Dice | HD95 (px) | NSD (2 px) |", "|---|---:|---:|---:|"]
    for name, values in rows.items():
        table.append(f"| {name} | {mean(values['dice']):.4f} | {mean(values['hd95']):.2f} | "
                     f"{mean(values['nsd']):.4f} |")
    notes = [
        f"data: Kvasir-SEG, seeded subset (seed {args.seed}) of {len(train_files)} training and "
        f"{len(test_files)} held-out test images, resized to {args.size}x{args.size} (images bilinear, masks "
        "nearest); metrics at that size",
        "coarse source: U-Net (features 16, depth 4, Dice + BCE, AdamW 1e-3) trained "
        f"{unet_result.epochs_run} epochs of 50 batches of 8 ({args.unet_minutes} min limit) at "
        f"{args.coarse_size}x{args.coarse_size}, "
        f"predicted and resized back to {args.size}x{args.size} (no TTA, no postprocessing)",
        f"BPR training data: {summary.patches} patches of {args.patch_size}x{args.patch_size} from "
        f"{summary.objects - summary.dropped} coarse training masks ({summary.dropped} dropped at IoU < "
        "0.5), NMS IoU 0.25; split by source image",
        "refiner: configs/bpr-polyp.yaml (HRNetV2 W18-Small-v2 + mask stem, 3.94M parameters, from "
        f"scratch) with inputs resized to {args.input_size}x{args.input_size} (the preset: 128), trained "
        f"{bpr_result.epochs_run} epochs of 50 batches ({args.bpr_minutes} min limit); best checkpoint by "
        "validation Dice of the patches",
        f"refinement: NMS IoU 0.55, patch {args.patch_size}; {refine_seconds:.0f} s for {len(test_files)} "
        f"test images; task wall time {(time.time() - start) / 60:.1f} min",
    ]
    return table, notes


def simulated_coarse(gt: np.ndarray, factor: int, rng: np.random.Generator) -> np.ndarray:
    """Each instance down-sampled by ``factor``, up-sampled bilinearly (> 0.5), then eroded or dilated by
    one pixel at random; written without overlaps (first come keeps the pixel)."""
    out = np.zeros_like(gt)
    for value in np.unique(gt[gt != 0]).tolist():
        obj = (gt == value).astype(np.float32)
        small = torch.nn.functional.interpolate(torch.from_numpy(obj)[None, None], scale_factor=1 / factor,
                                                mode="area")
        back = torch.nn.functional.interpolate(small, size=obj.shape, mode="bilinear", align_corners=False)
        mask = back[0, 0].numpy() > 0.5
        mask = ndimage.binary_dilation(mask) if rng.random() < 0.5 else ndimage.binary_erosion(mask)
        out[mask & (out == 0)] = value
    return out


def nuclei(args: argparse.Namespace, out: Path) -> tuple[list[str], list[str]]:
    start = time.time()
    root = DATA / "dsb2018-nuclei"
    files = [p for p in (root / "images").glob("*.png")]
    train_files, test_files = subset(files, args.nuclei_train, args.nuclei_test, args.seed)
    rng = np.random.default_rng(args.seed)
    for split, chosen in (("train", train_files), ("test", test_files)):
        for path in chosen:
            image, _ = read_image(path)
            gt = read_mask(root / "masks" / path.name)[0][0]
            write_image(out / "dsb" / split / "images" / path.name, image[:3])
            write_mask(out / "dsb" / split / "masks" / path.name, gt[None])
            coarse = simulated_coarse(gt, args.nuclei_factor, rng)
            write_mask(out / "coarse" / split / path.name, coarse[None])
    summary = prepare_patches(out / "coarse" / "train", out / "dsb" / "train", out / "patches",
                              instances=True, patch_size=args.nuclei_patch_size, progress=False)
    bpr_result = train(bpr_config(out / "patches", out / "bpr", args, "bpr-nuclei.yaml"), progress=False)
    refine_start = time.time()
    refine_paths(bpr_result.best_checkpoint, out / "dsb" / "test" / "images", out / "coarse" / "test",
                 out / "refined", patch_size=args.nuclei_patch_size, device=args.device, progress=False)
    refine_seconds = time.time() - refine_start
    evaluations = {"coarse (simulated)": InstanceEvaluation(), "BPR-refined": InstanceEvaluation()}
    bf: dict[str, list[float]] = {name: [] for name in evaluations}
    for mask_path in sorted((out / "dsb" / "test" / "masks").iterdir()):
        gt = read_mask(mask_path)[0][0]
        for name, folder in (("coarse (simulated)", out / "coarse" / "test"),
                             ("BPR-refined", out / "refined")):
            pred = read_mask(folder / mask_path.name)[0][0]
            evaluations[name].add(case_id(mask_path), pred, gt)
            bf[name].append(boundary_f(pred, gt))
    table = ["| masks | DSB score | AJI | PQ | boundary F (1 px) |", "|---|---:|---:|---:|---:|"]
    for name, evaluation in evaluations.items():
        m = evaluation.summary()["mean"]
        table.append(f"| {name} | {m['dsb']:.4f} | {m['aji']:.4f} | {m['pq']:.4f} | "
                     f"{mean(bf[name]):.4f} |")
    notes = [
        f"data: DSB2018 stage-1 training set, seeded subset of {len(train_files)} training and "
        f"{len(test_files)} test images at their own sizes (first 3 channels)",
        "coarse source: **simulated from the ground truth** (no instance model in this tree): each "
        f"instance area-down-sampled by {args.nuclei_factor}, bilinearly up-sampled (> 0.5), then eroded or "
        "dilated by 1 px at random (seeded)",
        f"BPR training data: {summary.patches} patches of {args.nuclei_patch_size}x{args.nuclei_patch_size} "
        f"from {summary.objects - summary.dropped} coarse instances ({summary.dropped} dropped at IoU < 0.5 "
        "to their best ground-truth instance), NMS IoU 0.25",
        f"refiner: configs/bpr-nuclei.yaml with inputs {args.input_size}x{args.input_size}, trained "
        f"{bpr_result.epochs_run} epochs of 50 batches ({args.bpr_minutes} min limit)",
        f"refinement: every instance in turn, NMS IoU 0.55; {refine_seconds:.0f} s for {len(test_files)} "
        f"images; task wall time {(time.time() - start) / 60:.1f} min",
    ]
    return table, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", choices=("polyp", "nuclei"), default=["polyp", "nuclei"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--coarse-size", type=int, default=64)
    parser.add_argument("--train-cases", type=int, default=300)
    parser.add_argument("--test-cases", type=int, default=60)
    parser.add_argument("--unet-minutes", type=float, default=4)
    parser.add_argument("--bpr-minutes", type=float, default=6)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--nuclei-train", type=int, default=150)
    parser.add_argument("--nuclei-test", type=int, default=40)
    parser.add_argument("--nuclei-factor", type=int, default=6)
    parser.add_argument("--nuclei-patch-size", type=int, default=32)
    parser.add_argument("--results", type=Path, default=None, help="the Markdown file (default: "
                        "benchmarks/results/bpr-<device>-<machine>.md)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, load_before = time.time(), os.getloadavg()
    sections = []
    for task in args.tasks:
        table, notes = (polyp if task == "polyp" else nuclei)(args, args.out / task)
        sections.append((task, table, notes))
    from medseg.engine.benchmark import machine_description, machine_slug

    lines = ["# BPR: boundary patch refinement on coarse masks, before and after", "",
             f"- machine: {machine_description(args.device)}",
             "- command: `.venv/bin/python benchmarks/bpr.py " + " ".join(sys.argv[1:]) + "`",
             f"- total wall time: {(time.time() - started) / 60:.1f} min; 1 torch thread; load average "
             f"(1 min) {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
             "(2 cores shared with other agents' jobs)", ""]
    for task, table, notes in sections:
        lines += [f"## {task}", "", *[f"- {n}" for n in notes], "", *table, ""]
    name = f"bpr-{torch.device(args.device).type}-{machine_slug(args.device)}.md"
    results = args.results or ROOT / "benchmarks" / "results" / name
    write_text_atomically(results, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
