"""Nuclei instance segmentation benchmark on DSB 2018 (issue "Instance segmentation", item 7): Mask R-CNN
against the semantic-to-instance baseline (a binary U-Net + watershed on the distance transform), each
trained under the same CPU time budget, evaluated on a fixed held-out set with the instance metrics.

The same for both: the seeded split of the 564 images (``train_compare.split_cases``: the first
``--test-cases`` of the shuffled ids are held out, the next ``--val-cases`` select the best checkpoint),
``--patch``² training patches at the source pixel size (RGB normalisation), batch ``--batch-size``, AdamW
(lr ``--lr``) with cosine decay, ``--minutes`` of training (``train.max_minutes``: stop at the first epoch
end past it), one torch thread, data loading in the training process, training from scratch; prediction
on whole held-out images, no test-time augmentation.

- ``maskrcnn``: Mask R-CNN with a ResNet-18 + FPN backbone at reduced width (stage widths 32-256 instead of
  64-512, FPN 64 channels, box head 256, mask head 64) so that it trains on a CPU; anchors 8-128 px; its
  scores go to ``{case}_instances.json`` for AP.
- ``unet+watershed``: U-Net (32 features, 4 levels) on the foreground (``data.binarize_labels``), Dice +
  BCE, sliding windows of the patch, then :func:`medseg.engine.watershed.watershed_instances` (markers
  ``--min-distance`` px apart, instances below 10 px removed); every instance scores 1 (AP then ranks
  ties by id, so its AP is only indicative).

Metrics (``medseg evaluate --instance``): COCO AP / AP50 / AP75 pooled over the held-out images, mean
DSB 2018 score, AJI, PQ and object Dice per image, and pixel Dice of the foreground (pred > 0 vs truth >
0, mean over images). The report goes to ``benchmarks/results/nuclei-<device>-<machine>.md``.

    .venv/bin/python benchmarks/nuclei.py [--minutes 3] [--test-cases 50] [--val-cases 8] [--patch 256]
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

import numpy as np
import torch
from train_compare import ROOT, link_cases, split_cases

from medseg.data import load_dataset, read_mask, write_splits
from medseg.engine import train
from medseg.engine.benchmark import markdown_table, write_benchmark_report
from medseg.engine.config import config_from_dict
from medseg.engine.evaluate_instances import evaluate_instance_folders
from medseg.engine.predict import load_models, predict_paths
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.models.registry import count_parameters

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dsb2018-nuclei"
MASK_RCNN_OPTIONS = {
    "encoder": "resnet18", "encoder_options": {"widths": [32, 64, 128, 256], "stem_width": 32},
    "fpn_channels": 64, "representation_size": 256, "mask_head_channels": 64, "min_size": None,
    "max_size": None, "anchor_sizes": [[8], [16], [32], [64], [128]], "rpn_post_nms_top_n": [1000, 1000],
    "box_detections_per_image": 400,
}
UNET_OPTIONS = {"features": 32, "depth": 4}
COLUMNS = (("AP", "ap"), ("AP50", "ap50"), ("AP75", "ap75"), ("DSB", "dsb"), ("AJI", "aji"), ("PQ", "pq"),
           ("object Dice", "object_dice"), ("pixel Dice", "pixel_dice"))


def run_config(model: str, args: argparse.Namespace, out: Path, splits: Path) -> dict[str, Any]:
    """The run config of ``model`` (``maskrcnn`` or ``unet+watershed``) under the shared budget."""
    common: dict[str, Any] = {
        "name": f"nuclei-{model}", "run_dir": str(out / model.replace("+", "-")),
        "data": {"root": str(args.data), "layout": "paired", "splits_file": str(splits), "fold": 0,
                 "patch_size": [args.patch, args.patch], "normalization": "rgb", "foreground_fraction": 0.5,
                 "batch_size": args.batch_size, "num_workers": 0,
                 "cache_dir": str(out / f"cache-{model.replace('+', '-')}")},
        "optim": {"name": "adamw", "lr": args.lr, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "min_lr_factor": 0.05},
        "train": {"epochs": 1000, "iterations_per_epoch": args.iterations_per_epoch,
                  "max_minutes": args.minutes, "seed": args.seed, "device": "cpu"},
        "augmentation": {"rot90": True, "elastic": False},
        "inference": {"mirror": False, "overlays": False, "device": "cpu"},
    }
    if model == "maskrcnn":
        common["data"].update(label_mode="instance")
        common["model"] = {"name": "mask_rcnn", "spatial_dims": 2, "options": MASK_RCNN_OPTIONS}
        common["train"].update(val_metrics=["dsb", "ap50"], best_metric="dsb")
        common["inference"]["mode"] = "whole"
    else:
        common["data"].update(label_mode="binary", binarize_labels=True)
        common["model"] = {"name": "unet", "spatial_dims": 2, "options": UNET_OPTIONS}
        common["loss"] = {"losses": [{"name": "dice"}, {"name": "bce"}]}
        common["train"].update(val_metrics=["dice"], best_metric="dice")
        common["inference"]["postprocess"] = {"instances": "watershed",
                                              "watershed_min_distance": args.min_distance,
                                              "watershed_min_size": 10}
    return common


def pixel_dice(predictions: Path, masks: Path) -> float:
    """Mean over images of the Dice of the foregrounds (pred > 0, truth > 0); both empty count 1."""
    values = []
    for truth_path in sorted(masks.glob("*.png")):
        truth = read_mask(truth_path)[0] > 0
        pred = read_mask(predictions / truth_path.name)[0] > 0
        total = int(truth.sum() + pred.sum())
        values.append(1.0 if total == 0 else 2.0 * int((truth & pred).sum()) / total)
    return float(np.mean(values))


def run_model(model: str, args: argparse.Namespace, out: Path, splits: Path, images: Path,
              masks: Path) -> dict[str, Any]:
    config = config_from_dict(run_config(model, args, out, splits))
    run_dir = config.resolved_run_dir()
    if run_dir.exists():
        if not args.overwrite:
            raise MedsegError(f"{run_dir} already holds a run; pass --overwrite or choose another --out")
        shutil.rmtree(run_dir)
    print(f"\n== {model}: training in {run_dir}", file=sys.stderr)
    result = train(config, progress=False)
    checkpoint = result.best_checkpoint or result.last_checkpoint
    predictions = run_dir / "predictions"
    print(f"== {model}: predicting {images}", file=sys.stderr)
    started = time.perf_counter()
    predict_paths([checkpoint], images, predictions, overlays=False, device="cpu", progress=False,
                  instances_json=model == "maskrcnn", overwrite=True)
    predict_minutes = (time.perf_counter() - started) / 60.0
    summary = evaluate_instance_folders(predictions, masks, out_dir=run_dir / "evaluation",
                                        progress=False).data
    values = {name: summary["metrics"][name]["mean"] for name in ("dsb", "aji", "pq", "object_dice")}
    values.update({name: summary["ap"][name] for name in ("ap", "ap50", "ap75")})
    values["pixel_dice"] = pixel_dice(predictions, masks)
    loaded = load_models([checkpoint], torch.device("cpu"))[0]
    return {"model": model, "params": count_parameters(loaded.model), "epochs": result.epochs_run,
            "train_minutes": sum(float(r.get("time_s", 0.0)) for r in result.history) / 60.0,
            "predict_minutes": predict_minutes, "problems": len(summary.get("problems", {})), **values}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["maskrcnn", "unet+watershed"],
                        choices=["maskrcnn", "unet+watershed"])
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget per model")
    parser.add_argument("--patch", type=int, default=256, help="training patch side (pixels)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iterations-per-epoch", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-distance", type=int, default=4, help="watershed marker distance (pixels)")
    parser.add_argument("--test-cases", type=int, default=50)
    parser.add_argument("--val-cases", type=int, default=8)
    parser.add_argument("--train-cases", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-nuclei")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    torch.set_num_threads(1)
    started, load_before = time.perf_counter(), os.getloadavg()
    try:
        if args.minutes <= 0:
            raise MedsegError(f"--minutes: must be > 0, got {args.minutes}")
        if not args.data.exists():
            raise MedsegError(f"--data: {args.data} does not exist")
        dataset = load_dataset(args.data)
        split = split_cases([c.case_id for c in dataset.cases], args.test_cases, args.val_cases,
                            args.train_cases, args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.out / "split.json", json.dumps(split, indent=2) + "\n")
        splits = args.out / "splits.json"
        write_splits(splits, [{"train": split["train"], "val": split["val"]}])
        images, masks = link_cases([dataset.case(c) for c in split["test"]], args.out / "test")
        rows = [run_model(m, args, args.out, splits, images, masks) for m in args.models]
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_after = os.getloadavg()
    headers = ["model", "params (M)", "epochs", "train (min)", "predict (min)", *(h for h, _ in COLUMNS)]
    lines = [[r["model"], f"{r['params'] / 1e6:.2f}", str(r["epochs"]), f"{r['train_minutes']:.1f}",
              f"{r['predict_minutes']:.1f}", *(f"{r[key]:.3f}" for _, key in COLUMNS)] for r in rows]
    table = markdown_table(headers, lines, [False, *[True] * (len(headers) - 1)])
    command = ".venv/bin/python benchmarks/" + " ".join(shlex.quote(a) for a in ["nuclei.py", *argv])
    notes = [
        f"command: `{command}`",
        f"split (seed {args.seed}) of the {len(dataset.cases)} DSB 2018 images: {len(split['train'])} "
        f"training, {len(split['val'])} validation (best checkpoint), "
        f"{len(split['test'])} held-out test images",
        f"budget: {args.minutes:g} min of training per model (stop at the first epoch end past it; epochs of "
        f"{args.iterations_per_epoch} batches of {args.batch_size} {args.patch}x{args.patch} patches, "
        "validation included, preprocessing excluded); one torch thread; AdamW lr "
        f"{args.lr:g}, cosine; from scratch",
        "maskrcnn: ResNet-18 + FPN at reduced width (stages 32/64/128/256, FPN 64, box head 256, mask head "
        "64), anchors 8-128 px, no internal resize, up to 400 detections; scores from its detections",
        f"unet+watershed: U-Net 32 features x 4 levels on the binarised masks (Dice + BCE), sliding windows, "
        f"watershed on the distance transform (markers {args.min_distance} px apart, instances < 10 px "
        "removed); every instance scores 1, so its AP ranks ties and is only indicative",
        "metrics on whole held-out images at the source size: AP / AP50 / AP75 pooled over the images "
        "(COCO, all detections), DSB 2018 score, AJI, PQ and object Dice averaged over images, pixel Dice of "
        "the foreground (pred > 0 vs truth > 0) averaged over images",
        "train (min) may pass the budget: it is checked at epoch ends (an epoch with its validation is one "
        "unit), and on a loaded machine one epoch can take longer than the whole budget; this is a short "
        "end-to-end check of the pipeline, not a converged comparison (both models are far from trained)",
        f"shared machine: load average {load_before[0]:.2f} at the start and {load_after[0]:.2f} at the end "
        "(1 min; other agents' jobs on the same cores), so times and the work done in the budget vary",
        f"total wall time of the benchmark: {(time.perf_counter() - started) / 60:.1f} min",
    ]
    write_benchmark_report("nuclei", "Nuclei instance segmentation on DSB 2018: Mask R-CNN vs U-Net + "
                           "watershed under one CPU budget", table, notes, device="cpu",
                           results_dir=args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
