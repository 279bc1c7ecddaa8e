"""BPR benchmark (Tang et al. 2021, the "BPR" issue): boundary patch refinement on top of coarse masks,
metrics before and after, under a short CPU budget.

- **polyp** (Kvasir-SEG): a seeded subset resized to ``--size``²; the coarse source is a U-Net
  (features 16, depth 4) trained for ``--unet-minutes`` at ``--coarse-size``² and predicted back at
  ``--size``² (blocky, under-resolved boundaries); BPR patches from its predictions on the training images,
  the refiner (``configs/bpr-polyp.yaml``: HRNetV2 W18-Small-v2 + mask stem, SGD 0.01 poly) trained for
  ``--bpr-minutes`` on ``--input-size``² inputs; held-out test images: Dice, HD95 and NSD (τ = 2 px)
  before and after.
- **nuclei** (DSB2018 stage 1): BPR on top of the two instance models of ``benchmarks/nuclei.py`` (its
  configs and functions, imported): Mask R-CNN (``--maskrcnn-minutes``) and U-Net + watershed
  (``--unet-watershed-minutes``), trained on a seeded split (``train_compare.split_cases``; ``--nuclei-test``
  held-out images). Both predict ``--nuclei-patch-images`` *training* images; BPR patches
  (``prepare_patches``, the ``medseg refine prepare`` function; coarse instances with IoU < 0.5 to the
  ground truth dropped) of both sources train one refiner (``configs/bpr-nuclei.yaml``,
  ``--nuclei-bpr-minutes``, ``--input-size``² inputs). Both predict the held-out images, which the refiner
  refines (``refine_paths``, the ``medseg refine`` function). Before and after, per source: DSB score,
  AJI, PQ, AP@0.5, boundary F-score (1 px) and HD95 (mean over matched instance pairs). The source
  ``simulated`` (``--nuclei-sources``; coarse masks simulated from the ground truth, as Mask R-CNN's 28x28
  masks pasted back would look) needs no model.

    .venv/bin/python benchmarks/bpr.py --out /tmp/bench/bpr [--task polyp|nuclei|all] [--device cpu]
        [--unet-minutes 4] [--bpr-minutes 6] [--maskrcnn-minutes 8] [--unet-watershed-minutes 5]
        [--nuclei-bpr-minutes 8] [--nuclei-sources maskrcnn unet+watershed simulated]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import nuclei as nuclei_benchmark  # noqa: E402
from train_compare import link_cases, split_cases  # noqa: E402

from medseg.data import load_dataset  # noqa: E402
from medseg.data.datasets import train_val_split, write_splits  # noqa: E402
from medseg.data.geometry import DataError  # noqa: E402
from medseg.data.io import case_id, read_mask, write_image, write_mask  # noqa: E402
from medseg.engine.config import config_from_dict, load_config  # noqa: E402
from medseg.engine.predict import predict_paths  # noqa: E402
from medseg.engine.refine import PATCHES_FILE, PrepareSummary, prepare_patches, refine_paths  # noqa: E402
from medseg.engine.trainer import train  # noqa: E402
from medseg.errors import MedsegError  # noqa: E402
from medseg.fileio import write_text_atomically  # noqa: E402
from medseg.metrics.instance import InstanceEvaluation, instance_overlap, matches_above  # noqa: E402
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


def bpr_config(patches: Path, run: Path, args: argparse.Namespace, preset: str, minutes: float,
               iterations: int = 50) -> Any:
    overrides = [f"data.root={patches}", f"data.splits_file={patches / 'splits.json'}",
                 f"data.resize=[{args.input_size},{args.input_size}]", "data.num_workers=0",
                 f"data.cache_dir={run / 'cache'}", f"run_dir={run}", f"train.device={args.device}",
                 f"train.max_minutes={minutes}", "train.epochs=1000",
                 f"train.iterations_per_epoch={iterations}", "train.early_stopping_patience=1000"]
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
    bpr_result = train(bpr_config(out / "patches", out / "bpr", args, "bpr-polyp.yaml", args.bpr_minutes),
                       progress=False)
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


def matched_hd95(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    """HD95 (px) of every matched pair (IoU > 0.5, the PQ / DSB matching) of two instance label maps, each
    pair measured in its joint bounding box."""
    overlap = instance_overlap(pred, gt)
    values = []
    for k in matches_above(overlap, 0.5).tolist():
        a = pred == overlap.pred_ids[overlap.pred_index[k]]
        b = gt == overlap.gt_ids[overlap.gt_index[k]]
        box = ndimage.find_objects((a | b).astype(np.uint8))[0]
        values.append(distance_metrics(a[box], b[box])["hd95"])
    return values


def instance_scores(folder: Path, case: str) -> dict[int, float] | None:
    """The detection scores of ``folder/{case}_instances.json`` (Mask R-CNN's sidecar), else None."""
    sidecar = folder / f"{case}_instances.json"
    if not sidecar.is_file():
        return None
    return {int(k): float(v) for k, v in json.loads(sidecar.read_text())["scores"].items()}


def nuclei_row(predictions: Path, masks: Path, scores_from: Path) -> dict[str, float]:
    """DSB score, AJI, PQ (means over images), AP@0.5 (pooled; scores from ``scores_from``), boundary F
    (1 px, mean over images) and HD95 (mean over the matched instances of all images)."""
    evaluation = InstanceEvaluation()
    bf: list[float] = []
    hd95: list[float] = []
    for mask_path in sorted(masks.glob("*.png")):
        gt = read_mask(mask_path)[0][0]
        pred = read_mask(predictions / mask_path.name)[0][0]
        case = case_id(mask_path)
        scores = instance_scores(scores_from, case)
        if scores is not None:  # ids of the map only (a refined instance may have vanished)
            scores = {i: scores.get(i, 0.0) for i in np.unique(pred[pred > 0]).tolist()}
        evaluation.add(case, pred, gt, scores)
        bf.append(boundary_f(pred, gt))
        hd95 += matched_hd95(pred, gt)
    summary = evaluation.summary()
    return {**{k: summary["mean"][k] for k in ("dsb", "aji", "pq")}, "ap50": summary["ap"]["ap50"],
            "bf": mean(bf), "hd95": mean(hd95), "matched": float(len(hd95))}


def coarse_args(args: argparse.Namespace, minutes: float) -> argparse.Namespace:
    """The settings of ``benchmarks/nuclei.py`` (its parser's defaults) with this benchmark's budget."""
    return nuclei_benchmark.parser().parse_args([
        "--data", str(args.nuclei_data), "--minutes", str(minutes), "--patch", str(args.nuclei_coarse_patch),
        "--batch-size", str(args.nuclei_batch_size), "--iterations-per-epoch", str(args.nuclei_iterations),
        "--seed", str(args.seed)])


def score_filtered(source: Path, out: Path, min_score: float) -> None:
    """Copies of the instance maps of ``source`` without the detections scoring below ``min_score``
    (scores from the ``{case}_instances.json`` sidecars, which are copied with the kept ids only)."""
    for path in sorted(source.glob("*.png")):
        labels, geometry = read_mask(path)
        scores = instance_scores(source, case_id(path)) or {}
        kept = {i: v for i, v in scores.items() if v >= min_score}
        labels = np.where(np.isin(labels, list(kept)), labels, 0).astype(labels.dtype)
        write_mask(out / path.name, labels, geometry)
        write_text_atomically(out / f"{case_id(path)}_instances.json",
                              json.dumps({"scores": {str(i): v for i, v in kept.items()}}) + "\n")


def reusable(run_dir: Path, folders: dict[str, Path], coarse: Path) -> Path | None:
    """The checkpoint of a finished run in ``run_dir`` whose predictions of every image of ``folders`` are
    in ``coarse/<split>`` (``--reuse``), else None."""
    checkpoint = next((c for c in (run_dir / "best.pt", run_dir / "last.pt") if c.is_file()), None)
    done = all((coarse / split / f"{case_id(image)}.png").is_file()
               for split, images in folders.items() for image in images.iterdir())
    return checkpoint if done else None


def coarse_predictions(source: str, args: argparse.Namespace, out: Path, splits: Path,
                       folders: dict[str, Path]) -> dict[str, Any]:
    """Train ``source`` (``maskrcnn`` or ``unet+watershed``, the configs of ``benchmarks/nuclei.py``) and
    predict the ``folders`` (``{"train": images, "test": images}``) into ``out/coarse/<source>/<split>``;
    ``simulated`` writes :func:`simulated_coarse` maps of the ground truth instead. Mask R-CNN's
    detections scoring below ``--maskrcnn-min-score`` are then dropped (``<source>-score<t>``). Returns
    ``{"coarse": the folder of the splits, "epochs", "minutes", "predict_minutes", "reused"}``."""
    tag = source.replace("+", "-")
    coarse = out / "coarse" / tag
    if source == "simulated":
        rng = np.random.default_rng(args.seed)
        for split, images in folders.items():
            for image in sorted(images.iterdir()):
                gt = read_mask(images.parent / "masks" / image.name)[0][0]
                write_mask(coarse / split / image.name, simulated_coarse(gt, args.nuclei_factor, rng)[None])
        return {"coarse": coarse, "epochs": 0, "minutes": 0.0}
    minutes = args.maskrcnn_minutes if source == "maskrcnn" else args.unet_watershed_minutes
    config = config_from_dict(nuclei_benchmark.run_config(source, coarse_args(args, minutes), out, splits))
    checkpoint = reusable(config.resolved_run_dir(), folders, coarse) if args.reuse else None
    run: dict[str, Any] = {"coarse": coarse, "minutes": minutes, "reused": checkpoint is not None}
    if checkpoint is None:
        result = train(config, progress=False)
        checkpoint = result.best_checkpoint or result.last_checkpoint
        started = time.time()
        for split, images in folders.items():
            predict_paths([checkpoint], images, coarse / split, overlays=False, device=args.device,
                          progress=False, instances_json=source == "maskrcnn", overwrite=True)
        run["predict_minutes"] = (time.time() - started) / 60
    log = config.resolved_run_dir() / "log.csv"
    run["epochs"] = len(log.read_text().splitlines()) - 1
    if source == "maskrcnn" and args.maskrcnn_min_score > 0:
        run["coarse"] = out / "coarse" / f"{tag}-score{args.maskrcnn_min_score:g}"
        for split in folders:
            score_filtered(coarse / split, run["coarse"] / split, args.maskrcnn_min_score)
    return run


def merged_patches(coarse_of: dict[str, Path], out: Path, train_images: Path, args: argparse.Namespace
                   ) -> dict[str, PrepareSummary | None]:
    """BPR patches of every source's coarse training predictions in one folder ``out/patches``.

    Each source's patches are made by :func:`prepare_patches` under case ids ``<source>_<image>`` (a
    source whose coarse instances all fall below IoU 0.5 gives none: ``None``); the folders are merged by
    symbolic links, and the train / validation split is redrawn by source *image*, so that the patches of
    one image (from any source) never sit on both sides."""
    summaries: dict[str, PrepareSummary | None] = {}
    merged = out / "patches"
    for source, coarse_folder in coarse_of.items():
        tag = source.replace("+", "-")
        data, coarse = out / "patch-data" / tag, out / "patch-coarse" / tag
        for sub in ("images", "masks"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        coarse.mkdir(parents=True, exist_ok=True)
        for image in sorted(train_images.iterdir()):
            name = f"{tag}_{image.name}"
            (data / "images" / name).symlink_to(image.resolve())
            (data / "masks" / name).symlink_to((train_images.parent / "masks" / image.name).resolve())
            (coarse / name).symlink_to((coarse_folder / "train" / image.name).resolve())
        try:
            summaries[source] = prepare_patches(coarse, data, out / "patches-by-source" / tag, instances=True,
                                                patch_size=args.nuclei_patch_size, progress=False)
        except DataError as exc:
            print(f"bpr: no patches from {source}: {exc}", file=sys.stderr)
            summaries[source] = None
            continue
        for sub in ("images", "masks"):
            (merged / sub).mkdir(parents=True, exist_ok=True)
            for path in sorted((summaries[source].out / sub).iterdir()):
                (merged / sub / path.name).symlink_to(path.resolve())
    image_of: dict[str, str] = {}  # patch id -> its source image
    for summary in summaries.values():
        if summary is not None:
            records = json.loads((summary.out / PATCHES_FILE).read_text())["patches"]
            image_of.update({r["id"]: r["case"].split("_", 1)[1] for r in records})
    if not image_of:
        raise MedsegError("bpr: no source gave a coarse instance with IoU >= 0.5; nothing to train on")
    ids = sorted(image_of)
    split = train_val_split(sorted(set(image_of.values())), 0.2, args.seed)
    val = set(split["val"])
    write_splits(merged / "splits.json", [{"train": [i for i in ids if image_of[i] not in val],
                                           "val": [i for i in ids if image_of[i] in val]}])
    return summaries


NUCLEI_COLUMNS = (("DSB score", "dsb", 4), ("AJI", "aji", 4), ("PQ", "pq", 4), ("AP@0.5", "ap50", 4),
                  ("boundary F (1 px)", "bf", 4), ("HD95 (px)", "hd95", 2), ("matched", "matched", 0))


def nuclei(args: argparse.Namespace, out: Path) -> tuple[list[str], list[str]]:
    start = time.time()
    sources = list(args.nuclei_sources)
    dataset = load_dataset(args.nuclei_data)
    split = split_cases([c.case_id for c in dataset.cases], args.nuclei_test, args.nuclei_val,
                        args.nuclei_train, args.seed)
    splits = out / "splits.json"
    write_splits(splits, [{"train": split["train"], "val": split["val"]}])
    patch_source = sorted(random.Random(args.seed).sample(split["train"], min(args.nuclei_patch_images,
                                                                            len(split["train"]))))
    train_images, _ = link_cases([dataset.case(c) for c in patch_source], out / "patch-source")
    test_images, test_masks = link_cases([dataset.case(c) for c in split["test"]], out / "test")
    runs = {s: coarse_predictions(s, args, out, splits, {"train": train_images, "test": test_images})
            for s in sources}
    for derived in ("patch-data", "patch-coarse", "patches-by-source", "patches", "bpr", "refined"):
        shutil.rmtree(out / derived, ignore_errors=True)  # of an earlier run in --out
    summaries = merged_patches({s: r["coarse"] for s, r in runs.items()}, out, train_images, args)
    bpr_result = train(bpr_config(out / "patches", out / "bpr", args, "bpr-nuclei.yaml",
                                  args.nuclei_bpr_minutes, args.nuclei_bpr_iterations), progress=False)
    rows: list[tuple[str, dict[str, float]]] = []
    refine_seconds = {}
    for source in sources:
        tag = source.replace("+", "-")
        coarse = runs[source]["coarse"] / "test"
        refine_start = time.time()
        refine_paths(bpr_result.best_checkpoint or bpr_result.last_checkpoint, test_images, coarse,
                     out / "refined" / tag, patch_size=args.nuclei_patch_size, device=args.device,
                     progress=False)
        refine_seconds[source] = time.time() - refine_start
        rows.append((f"{source}: coarse", nuclei_row(coarse, test_masks, coarse)))
        rows.append((f"{source}: BPR-refined", nuclei_row(out / "refined" / tag, test_masks, coarse)))
    table = ["| masks | " + " | ".join(h for h, _, _ in NUCLEI_COLUMNS) + " |",
             "|---|" + "---:|" * len(NUCLEI_COLUMNS)]
    for name, values in rows:
        table.append(f"| {name} | " + " | ".join(f"{values[k]:.{d}f}" for _, k, d in NUCLEI_COLUMNS) + " |")
    patch_notes = []
    for source, summary in summaries.items():
        patch_notes.append(f"{source}: no patch (every coarse instance below IoU 0.5)" if summary is None else
                           f"{source}: {summary.patches} patches from {summary.objects - summary.dropped} "
                           f"of {summary.objects} coarse instances ({summary.dropped} dropped)")
    model_notes = []
    for source, run in runs.items():
        if source == "simulated":
            model_notes.append(f"simulated: the ground truth area-down-sampled by {args.nuclei_factor}, "
                               "bilinearly up-sampled (> 0.5), eroded or dilated by 1 px at random (seeded)")
        else:
            predicted = ("predictions reused from an earlier run (--reuse)" if run["reused"] else
                         f"prediction of {len(patch_source)} + {len(split['test'])} images "
                         f"{run['predict_minutes']:.1f} min")
            model_notes.append(f"{source}: {run['epochs']} epochs in its {run['minutes']:g} min limit, "
                               + predicted)
    if "maskrcnn" in runs and args.maskrcnn_min_score > 0:
        model_notes.append(f"Mask R-CNN detections scoring below {args.maskrcnn_min_score:g} dropped from "
                           "its instance maps (before and after refinement alike)")
    notes = [
        f"data: DSB2018 stage-1 ({len(dataset.cases)} images), seeded split (seed {args.seed}, "
        f"`train_compare.split_cases`): {len(split['train'])} training, {len(split['val'])} validation "
        f"(coarse models' best checkpoint), {len(split['test'])} held-out test images at their own sizes",
        "coarse sources, trained from scratch with the settings of `benchmarks/nuclei.py` (Mask R-CNN "
        "ResNet-18 + FPN at reduced width; U-Net 32x4 + watershed on the distance transform) on "
        f"{args.nuclei_coarse_patch}x{args.nuclei_coarse_patch} patches, batch {args.nuclei_batch_size}, "
        f"epochs of {args.nuclei_iterations} batches: " + "; ".join(model_notes),
        f"BPR training data: {args.nuclei_patch_size}x{args.nuclei_patch_size} boundary patches (NMS IoU "
        f"0.25) of the coarse predictions on {len(patch_source)} *training* images (seeded sample), coarse "
        "instances with IoU < 0.5 to their best ground-truth instance dropped: " + "; ".join(patch_notes)
        + "; one refiner on the patches of all sources, validation split by source image",
        f"refiner: configs/bpr-nuclei.yaml with inputs {args.input_size}x{args.input_size} (the preset: "
        f"128), trained {bpr_result.epochs_run} epochs of {args.nuclei_bpr_iterations} batches "
        f"({args.nuclei_bpr_minutes:g} min limit); best checkpoint by validation Dice of the patches",
        "refinement (`refine_paths`, the `medseg refine` path): every instance in turn, NMS IoU 0.55; "
        + "; ".join(f"{s} {t:.0f} s" for s, t in refine_seconds.items())
        + f" for {len(split['test'])} test images",
        "metrics on the held-out images at the source size: DSB score (mean over IoU 0.5-0.95), AJI, PQ and "
        "boundary F (1 px, label-map boundaries) are means over images; AP@0.5 is pooled over the images "
        "(COCO; Mask R-CNN's detection scores kept for its refined instances, U-Net + watershed instances "
        "all score 1); HD95 is the mean over all **matched instance pairs** (IoU > 0.5) of all images, "
        "'matched' their number (the pairs differ before and after, so HD95 compares different sets)",
        f"task wall time {(time.time() - start) / 60:.1f} min",
    ]
    return table, notes


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", choices=("polyp", "nuclei", "all"), default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=int, default=64, help="refiner input side (the presets: 128)")
    polyp_args = parser.add_argument_group("polyp")
    polyp_args.add_argument("--size", type=int, default=256)
    polyp_args.add_argument("--coarse-size", type=int, default=64)
    polyp_args.add_argument("--train-cases", type=int, default=300)
    polyp_args.add_argument("--test-cases", type=int, default=60)
    polyp_args.add_argument("--unet-minutes", type=float, default=4)
    polyp_args.add_argument("--bpr-minutes", type=float, default=6)
    polyp_args.add_argument("--patch-size", type=int, default=32)
    nuclei_args = parser.add_argument_group("nuclei")
    nuclei_args.add_argument("--nuclei-data", type=Path, default=DATA / "dsb2018-nuclei")
    nuclei_args.add_argument("--nuclei-sources", nargs="+", default=["maskrcnn", "unet+watershed"],
                             choices=("maskrcnn", "unet+watershed", "simulated"))
    nuclei_args.add_argument("--nuclei-test", type=int, default=20, help="held-out test images")
    nuclei_args.add_argument("--nuclei-val", type=int, default=4, help="validation images (coarse models)")
    nuclei_args.add_argument("--nuclei-train", type=int, default=None, help="training images (default: rest)")
    nuclei_args.add_argument("--nuclei-patch-images", type=int, default=24,
                             help="training images whose coarse predictions give the BPR patches")
    nuclei_args.add_argument("--maskrcnn-minutes", type=float, default=8)
    nuclei_args.add_argument("--maskrcnn-min-score", type=float, default=0.3,
                             help="drop Mask R-CNN detections scoring below (0: keep all)")
    nuclei_args.add_argument("--reuse", action="store_true",
                             help="reuse trained coarse models whose predictions are all in --out")
    nuclei_args.add_argument("--unet-watershed-minutes", type=float, default=5)
    nuclei_args.add_argument("--nuclei-coarse-patch", type=int, default=256)
    nuclei_args.add_argument("--nuclei-batch-size", type=int, default=2)
    nuclei_args.add_argument("--nuclei-iterations", type=int, default=25, help="batches per coarse epoch")
    nuclei_args.add_argument("--nuclei-bpr-minutes", type=float, default=8)
    nuclei_args.add_argument("--nuclei-bpr-iterations", type=int, default=50,
                             help="batches per refiner epoch")
    nuclei_args.add_argument("--nuclei-factor", type=int, default=6, help="simulated source: down-sampling")
    nuclei_args.add_argument("--nuclei-patch-size", type=int, default=32)
    parser.add_argument("--results", type=Path, default=None, help="the Markdown file (default: "
                        "benchmarks/results/bpr-<device>-<machine>.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    torch.set_num_threads(1)
    started, load_before = time.time(), os.getloadavg()
    sections = []
    for task in ("polyp", "nuclei") if args.task == "all" else (args.task,):
        try:
            table, notes = (polyp if task == "polyp" else nuclei)(args, args.out / task)
        except MedsegError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        sections.append((task, table, notes))
    from medseg.engine.benchmark import machine_description, machine_slug

    lines = ["# BPR: boundary patch refinement on coarse masks, before and after", "",
             f"- machine: {machine_description(args.device)}",
             "- command: `.venv/bin/python benchmarks/bpr.py " + " ".join(argv) + "`",
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
