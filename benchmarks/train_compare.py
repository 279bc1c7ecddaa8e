"""Train several models under one budget, predict a held-out split, evaluate and tabulate (shared runner).

The front-ends ``benchmarks/polyp.py`` (Kvasir-SEG, issue 6) and ``benchmarks/hippocampus.py`` (MSD Task04,
issue 8) describe a :class:`Task` (data set, label mode, preprocessing, metrics, base config) and call
:func:`main`. For every model the runner

1. builds a :class:`~medseg.engine.config.RunConfig` from the task's base config and the budget
   (:func:`build_config`): the same seeded split, size, epochs, time limit (``train.max_minutes``),
   batch size, optimiser, schedule, augmentation and loss for every model;
2. trains it with :func:`medseg.engine.train` in ``OUT/<model>`` (progress bars on; the preprocessing
   cache ``OUT/cache`` is shared by all models);
3. predicts the held-out cases with :func:`medseg.engine.predict.predict_paths` from ``best.pt``;
4. evaluates them with :func:`medseg.engine.evaluate.evaluate_folders` (``medseg evaluate``);
5. counts trainable parameters and the GMACs of one forward of one sample at the training size
   (:func:`medseg.engine.benchmark.count_macs`).

The table goes to ``benchmarks/results/<task>-<device>-<machine>.md`` (``--results``) with the machine and
the exact command line. MONAI's ``BasicUNet`` (the peer of :mod:`medseg.engine.benchmark`) trains through
the same engine under the model name ``monai_basicunet`` (:func:`register_monai_basicunet`).

The held-out split: the case ids are shuffled with ``random.Random(seed)``; the first ``--test-cases``
are the test cases, the next ``--val-cases`` the validation cases (best-checkpoint selection), the rest
(at most ``--train-cases``) the training cases. The split is written to ``OUT/split.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.data import load_dataset, write_splits
from medseg.data.io import write_image
from medseg.engine import train
from medseg.engine.benchmark import (
    PEERS,
    check_dims,
    check_size,
    count_macs,
    markdown_table,
    resolve_target,
    write_benchmark_report,
)
from medseg.engine.config import config_from_dict
from medseg.engine.device import resolve_device
from medseg.engine.evaluate import evaluate_folders
from medseg.engine.predict import PROBABILITY_SUFFIX, load_models, predict_paths
from medseg.engine.rundir import RunPaths
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.models.registry import count_parameters, get_entry, list_models, register_model

ROOT = Path(__file__).resolve().parents[1]
MONAI_BASICUNET = "monai_basicunet"
"""The registry name under which MONAI's BasicUNet trains through our engine."""


# ----------------------------------------------------------------------------------------------------
# The peer as a registered model
# ----------------------------------------------------------------------------------------------------

def _build_monai_basicunet(in_channels: int, num_classes: int, spatial_dims: int,
                           **options: Any) -> nn.Module:
    """MONAI's ``BasicUNet`` (the benchmark peer ``monai:basicunet``); its forward returns the logits Tensor
    in both modes. ``input_multiple`` tells our predictor to pad inputs to a multiple of 16 (4 poolings)."""
    model = PEERS["monai:basicunet"].build(in_channels=in_channels, num_classes=num_classes,
                                           spatial_dims=spatial_dims, **options)
    model.input_multiple = PEERS["monai:basicunet"].input_multiple
    return model


def register_monai_basicunet() -> str:
    """Register MONAI's BasicUNet as ``monai_basicunet`` (once; later calls do nothing); returns the name.

    Not done at import, so that the shared model tests never see the peer."""
    if MONAI_BASICUNET not in list_models():
        register_model(MONAI_BASICUNET, paper="MONAI BasicUNet (Falk et al., Nature Methods 2019, U-Net)",
                       dims=PEERS["monai:basicunet"].dims, default_loss="dice_ce",
                       input_multiple=PEERS["monai:basicunet"].input_multiple,
                       exportable=False)(_build_monai_basicunet)
    return MONAI_BASICUNET


# ----------------------------------------------------------------------------------------------------
# What is compared, and under which budget
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """A metric column of the table: ``metric`` of ``evaluate_folders``' summary, one class or pooled."""

    header: str
    metric: str
    label: int | None = None
    digits: int = 3


@dataclass
class Task:
    """A benchmark: the data, the fixed part of every run's config and the table's metric columns.

    ``base_config(budget)`` returns the config sections shared by all models (data, optim, schedule,
    train, inference, augmentation); the runner adds the model, loss, split, cache and run folder.
    ``probability_maps``: evaluate the foreground probabilities (binary tasks: MAE and the polyp measures
    on the grey map), else the label maps.
    """

    name: str
    title: str
    spatial_dims: int
    in_channels: int
    default_root: Path
    base_config: Callable[[Budget], dict[str, Any]]
    columns: Sequence[Column]
    fair_loss: str
    probability_maps: bool = False
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, Variant] = field(default_factory=dict)
    notes: Sequence[str] = ()


@dataclass(frozen=True)
class Variant:
    """A benchmark row that is a registered model with fixed options and, optionally, the PointRend wrap
    (``model.pointrend``) or the adversarial training mode: e.g. ``hrnet_w18s_pointrend`` = ``hrnet_v2``
    W18-Small-v2 + PointRend."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)
    pointrend: dict[str, Any] | None = None
    adversarial: dict[str, Any] | None = None
    """``train.adversarial`` (the adversarial training mode), or None."""
    data: dict[str, Any] = field(default_factory=dict)
    """``data`` keys set for this row on top of the task's (e.g. 2.5D: ``slices``, a 2D ``patch_size``)."""
    inference: dict[str, Any] = field(default_factory=dict)
    """``inference`` keys set for this row (2.5D: whole slices, ``mode: whole``)."""
    spatial_dims: int | None = None
    """The model's dimensionality when it differs from the task's (a 2D model on 3D volumes: 2.5D)."""

    def input_shape(self, task: Task, size: Sequence[int]) -> tuple[int, ...]:
        """One sample of the model's input: ``(channels, *size)``; 2.5D: the slice window's channels and the
        row's 2D patch."""
        slices = self.data.get("slices")
        if slices is None:
            return (task.in_channels, *size)
        return (task.in_channels * (2 * int(slices) + 1), *self.data.get("patch_size", size))
    size_option: str | None = None
    """The model option that receives the training size (``--size``), e.g. UNETR's ``img_size`` (its
    learned position embedding covers that grid), or None."""


@dataclass
class Budget:
    """The settings every model is trained and evaluated under (the command-line options)."""

    size: tuple[int, ...]
    epochs: int
    minutes_per_model: float | None
    iterations_per_epoch: int | None
    batch_size: int
    train_cases: int | None
    val_cases: int
    test_cases: int
    lr: float
    loss: str
    device: str
    workers: int
    tta: bool
    seed: int
    encoder_weights: str | None = None


@dataclass
class Row:
    """One model's line of the table."""

    model: str
    parameters: int
    gmacs: float
    train_minutes: float
    epochs: int
    summary: dict[str, Any]


# ----------------------------------------------------------------------------------------------------
# Split, configs and folders
# ----------------------------------------------------------------------------------------------------

def split_cases(case_ids: Sequence[str], test_cases: int, val_cases: int, train_cases: int | None,
                seed: int) -> dict[str, list[str]]:
    """A seeded train / val / test split of ``case_ids`` (see the module docstring); each part sorted."""
    ids = sorted(case_ids)
    if test_cases < 1 or val_cases < 1:
        raise MedsegError(f"--test-cases and --val-cases must be >= 1, got {test_cases} and {val_cases}")
    if train_cases is not None and train_cases < 1:
        raise MedsegError(f"--train-cases must be >= 1, got {train_cases}")
    if test_cases + val_cases >= len(ids):
        raise MedsegError(f"--test-cases {test_cases} + --val-cases {val_cases} leave no training case of "
                          f"the {len(ids)} cases")
    random.Random(seed).shuffle(ids)
    test, val, rest = ids[:test_cases], ids[test_cases:test_cases + val_cases], ids[test_cases + val_cases:]
    return {"train": sorted(rest[:train_cases]), "val": sorted(val), "test": sorted(test)}


def check_models(models: Sequence[str], task: Task, budget: Budget) -> list[str]:
    """The registry names of ``models``; unknown names, wrong dims or sizes raise before any training."""
    if not models:
        raise MedsegError("--models: give at least one model")
    names = []
    for name in models:
        if name.lower() == MONAI_BASICUNET:
            register_monai_basicunet()
        if name.lower() in task.variants:
            names.append(name.lower())
            variant = task.variants[name.lower()]
            check_dims(resolve_target(get_entry(variant.model).name),
                       variant.spatial_dims or task.spatial_dims)
            continue
        try:
            entry = get_entry(name)
        except MedsegError as exc:
            raise MedsegError(f"--models: {exc} (models being written register once their module is "
                              "done)") from None
        target = resolve_target(entry.name)
        check_dims(target, task.spatial_dims)
        for extent in sorted(set(budget.size)):
            try:
                check_size(target, extent)
            except MedsegError as exc:
                raise MedsegError(f"--size: {exc}") from None
        names.append(entry.name)
    if len(set(names)) != len(names):
        raise MedsegError(f"--models: a model is named twice ({', '.join(models)})")
    return names


def build_config(task: Task, model: str, budget: Budget, run_dir: Path, splits_file: Path, data_root: Path,
                 cache_dir: Path) -> Any:
    """The validated RunConfig of one model: the task's base config + model, loss, split and folders."""
    data = task.base_config(budget)
    data["name"] = f"{task.name}-{model}"
    data["run_dir"] = str(run_dir)
    data.setdefault("data", {}).update(root=str(data_root), splits_file=str(splits_file), fold=0,
                                       cache_dir=str(cache_dir), batch_size=budget.batch_size,
                                       num_workers=budget.workers)
    variant = task.variants.get(model)
    if variant is not None:
        data["data"].update(variant.data)
        data.setdefault("inference", {}).update(variant.inference)
    data["model"] = {"name": variant.model if variant else model,
                     "spatial_dims": (variant and variant.spatial_dims) or task.spatial_dims,
                     "options": dict(variant.options if variant else task.model_options.get(model, {})),
                     "encoder_weights": budget.encoder_weights}
    if variant is not None and variant.size_option is not None:
        data["model"]["options"][variant.size_option] = list(budget.size)
    if variant is not None and variant.pointrend is not None:
        data["model"]["pointrend"] = dict(variant.pointrend)
    if variant is not None and variant.adversarial is not None:
        data.setdefault("train", {})["adversarial"] = dict(variant.adversarial)
    data["loss"] = {} if budget.loss == "default" else {"name": budget.loss}
    data.setdefault("train", {}).update(epochs=budget.epochs, max_minutes=budget.minutes_per_model,
                                        iterations_per_epoch=budget.iterations_per_epoch,
                                        seed=budget.seed, device=budget.device)
    data.setdefault("inference", {}).update(mirror=budget.tta, overlays=False, device=budget.device)
    return config_from_dict(data)


def link_cases(cases: Sequence[Any], folder: Path) -> tuple[Path, Path]:
    """``folder/images`` and ``folder/masks`` with symbolic links to the cases' files (the predict input
    and the evaluate ground truth)."""
    images, masks = folder / "images", folder / "masks"
    for sub in (images, masks):
        sub.mkdir(parents=True, exist_ok=True)
        for old in sub.iterdir():
            old.unlink()
    for case in cases:
        if len(case.images) != 1 or case.label is None:
            raise MedsegError(f"case {case.case_id}: the benchmarks need one image file and a label per case")
        (images / case.images[0].name).symlink_to(case.images[0].resolve())
        (masks / case.label.name).symlink_to(case.label.resolve())
    return images, masks


def probability_maps(predictions: Path, folder: Path) -> Path:
    """The ``{case}_probabilities.npz`` files of ``medseg predict`` as float TIFFs in ``folder``, which
    ``medseg evaluate`` reads as foreground probability maps (MAE and the polyp measures on the grey map,
    the overlap and distance metrics on ``p >= 0.5``, the threshold of the predicted masks)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f"{PROBABILITY_SUFFIX}.npz"
    for path in sorted(predictions.glob(f"*{suffix}")):
        with np.load(path) as archive:
            array = archive["probabilities"].astype(np.float32)
        write_image(folder / f"{path.name[:-len(suffix)]}.tif", array)
    return folder


# ----------------------------------------------------------------------------------------------------
# One model, all models
# ----------------------------------------------------------------------------------------------------

def run_model(task: Task, model: str, budget: Budget, out: Path, splits_file: Path, data_root: Path,
              test_images: Path, test_masks: Path, overwrite: bool, progress: bool = True) -> Row:
    """Train, predict, evaluate and measure one model (see the module docstring)."""
    run_dir = out / model
    if RunPaths.at(run_dir).last.is_file():
        if not overwrite:
            raise MedsegError(f"{run_dir} already holds a run; pass --overwrite or choose another --out")
        shutil.rmtree(run_dir)
    config = build_config(task, model, budget, run_dir, splits_file, data_root, out / "cache")
    print(f"\n== {model}: training in {run_dir}", file=sys.stderr)
    result = train(config, progress=progress)
    checkpoint = result.best_checkpoint or result.last_checkpoint
    train_seconds = sum(float(row.get("time_s", 0.0)) for row in result.history)
    print(f"== {model}: predicting {test_images}", file=sys.stderr)
    predictions = run_dir / "predictions"
    predict_paths([checkpoint], test_images, predictions, save_probabilities=task.probability_maps,
                  overlays=False, device=budget.device, progress=progress)
    evaluated = probability_maps(predictions, run_dir / "probabilities") if task.probability_maps \
        else predictions
    metrics = list(dict.fromkeys(c.metric for c in task.columns))
    summary = evaluate_folders(evaluated, test_masks, out_dir=run_dir / "evaluation", metrics=metrics,
                               progress=progress)
    loaded = load_models([checkpoint], torch.device("cpu"))[0]
    variant = task.variants.get(model)
    shape = variant.input_shape(task, budget.size) if variant else (task.in_channels, *budget.size)
    x = torch.zeros(1, *shape)
    return Row(model=model, parameters=count_parameters(loaded.model),
               gmacs=count_macs(loaded.model, x) / 1e9, train_minutes=train_seconds / 60.0,
               epochs=result.epochs_run, summary=summary.data)


def compare(task: Task, models: Sequence[str], budget: Budget, out: Path, data_root: Path | None = None,
            overwrite: bool = False, progress: bool = True) -> list[Row]:
    """Run every model of ``models`` on the same split under ``budget``; returns the rows (in order)."""
    names = check_models(models, task, budget)
    root = Path(data_root) if data_root is not None else task.default_root
    if not root.exists():
        raise MedsegError(f"--data: {root} does not exist")
    dataset = load_dataset(root)
    split = split_cases([c.case_id for c in dataset.cases], budget.test_cases, budget.val_cases,
                        budget.train_cases, budget.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "split.json", json.dumps(split, indent=2) + "\n")
    splits_file = out / "splits.json"
    write_splits(splits_file, [{"train": split["train"], "val": split["val"]}])
    test_images, test_masks = link_cases([dataset.case(c) for c in split["test"]], out / "test")
    print(f"{task.title}: {len(split['train'])} training, {len(split['val'])} validation and "
          f"{len(split['test'])} test cases; models {', '.join(names)}", file=sys.stderr)
    return [run_model(task, name, budget, out, splits_file, root, test_images, test_masks, overwrite,
                      progress) for name in names]


# ----------------------------------------------------------------------------------------------------
# The table and the report
# ----------------------------------------------------------------------------------------------------

def metric_cell(summary: dict[str, Any], column: Column) -> str:
    """The mean of ``column``'s metric (one class, or pooled), with the count of non-finite values
    (e.g. HD95 of an empty prediction) in brackets: they are left out of the mean, never hidden."""
    entry = summary["metrics"].get(column.metric)
    if entry is None:
        return "-"
    if column.label is None:
        value, nan = entry["mean"], entry["nan"]
    else:
        value, nan = entry["per_class"].get(column.label, math.nan), None
    text = "nan" if value is None or not math.isfinite(value) else f"{value:.{column.digits}f}"
    return f"{text} ({nan} nan)" if nan else text


def format_rows(task: Task, rows: Sequence[Row]) -> str:
    headers = ["model", "params (M)", "GMACs", "train (min)", "epochs", *(c.header for c in task.columns)]
    lines = [[r.model, f"{r.parameters / 1e6:.2f}", f"{r.gmacs:.2f}", f"{r.train_minutes:.1f}", str(r.epochs),
              *(metric_cell(r.summary, c) for c in task.columns)] for r in rows]
    return markdown_table(headers, lines, [False, *[True] * (len(headers) - 1)])


def budget_notes(task: Task, budget: Budget, split_sizes: tuple[int, int, int],
                 argv: Sequence[str]) -> list[str]:
    train_n, val_n, test_n = split_sizes
    size = "x".join(str(s) for s in budget.size)
    limit = f", at most {budget.minutes_per_model:g} min per model (stop at the first epoch end past it)" \
        if budget.minutes_per_model else ""
    loss = "each model's default loss" if budget.loss == "default" \
        else f"loss `{budget.loss}` for every model"
    command = ".venv/bin/python benchmarks/" + " ".join(shlex.quote(a) for a in [f"{task.name}.py", *argv])
    return [f"command: `{command}`",
            f"split (seed {budget.seed}): {train_n} training, {val_n} validation (best checkpoint), "
            f"{test_n} held-out test cases",
            f"budget: size {size}, batch {budget.batch_size}, {budget.epochs} epochs"
            f"{'' if budget.iterations_per_epoch is None else f' of {budget.iterations_per_epoch} batches'}"
            f"{limit}; lr {budget.lr:g}; {loss}; from scratch"
            f"{'' if budget.encoder_weights is None else f' (encoder weights {budget.encoder_weights})'}",
            f"test-time mirroring: {'on' if budget.tta else 'off'}; no postprocessing",
            "train (min): the training epochs with their validation, preprocessing excluded; GMACs: one "
            f"forward of 1x{task.in_channels}x{size} (engine.benchmark.count_macs)",
            *task.notes]


# ----------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------

def build_parser(task: Task, description: str, defaults: dict[str, Any]) -> argparse.ArgumentParser:
    """The options shared by the front-ends; ``defaults`` sets the task's defaults of any of them."""
    parser = argparse.ArgumentParser(description=description)
    dims = task.spatial_dims
    parser.add_argument("--models", nargs="+", default=defaults.pop("models"),
                        help=f"registered model names ({MONAI_BASICUNET} is MONAI's BasicUNet)")
    parser.add_argument("--size", type=int, nargs="+", default=defaults.pop("size"),
                        help=f"training size: one value or {dims} (the image size in 2D, the patch in 3D)")
    parser.add_argument("--epochs", type=int, default=defaults.pop("epochs"))
    parser.add_argument("--minutes-per-model", type=float, default=defaults.pop("minutes_per_model", None),
                        help="training time limit per model (train.max_minutes)")
    parser.add_argument("--iterations-per-epoch", type=int,
                        default=defaults.pop("iterations_per_epoch", None),
                        help="batches per epoch (default: one pass over the training cases in 2D)")
    parser.add_argument("--batch-size", type=int, default=defaults.pop("batch_size"))
    parser.add_argument("--train-cases", type=int, default=defaults.pop("train_cases", None),
                        help="at most this many training cases (default: all that are left)")
    parser.add_argument("--val-cases", type=int, default=defaults.pop("val_cases"))
    parser.add_argument("--test-cases", type=int, default=defaults.pop("test_cases"))
    parser.add_argument("--lr", type=float, default=defaults.pop("lr"))
    parser.add_argument("--loss", default=task.fair_loss,
                        help=f"one loss for every model (default {task.fair_loss}), or 'default' for each "
                             "model's own default loss")
    parser.add_argument("--encoder-weights", default=None, help="weight file for models with an encoder")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--data", type=Path, default=task.default_root)
    parser.add_argument("--out", type=Path, default=Path("runs") / f"bench-{task.name}")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder of the Markdown table")
    parser.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    if defaults:
        raise ValueError(f"unknown defaults {sorted(defaults)}")
    return parser


def budget_from_args(args: argparse.Namespace, task: Task) -> Budget:
    sizes = tuple(args.size)
    if len(sizes) == 1:
        sizes = sizes * task.spatial_dims
    if len(sizes) != task.spatial_dims or min(sizes) < 1:
        raise MedsegError(f"--size: expected 1 or {task.spatial_dims} positive values, got {list(args.size)}")
    for option in ("epochs", "batch_size", "iterations_per_epoch", "workers"):
        value = getattr(args, option)
        if value is not None and value < (0 if option == "workers" else 1):
            raise MedsegError(f"--{option.replace('_', '-')}: must be positive, got {value}")
    if args.minutes_per_model is not None and args.minutes_per_model <= 0:
        raise MedsegError(f"--minutes-per-model: must be > 0, got {args.minutes_per_model}")
    resolve_device(args.device, key="--device")
    return Budget(size=sizes, epochs=args.epochs, minutes_per_model=args.minutes_per_model,
                  iterations_per_epoch=args.iterations_per_epoch, batch_size=args.batch_size,
                  train_cases=args.train_cases, val_cases=args.val_cases, test_cases=args.test_cases,
                  lr=args.lr, loss=args.loss, device=args.device, workers=args.workers, tta=args.tta,
                  seed=args.seed, encoder_weights=args.encoder_weights)


def main(task: Task, parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, run :func:`compare`, write the report; a bad option or model is a one-line error (exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        budget = budget_from_args(args, task)
        rows = compare(task, args.models, budget, args.out, args.data, args.overwrite)
        split = json.loads((args.out / "split.json").read_text(encoding="utf-8"))
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = resolve_device(args.device).type
    notes = budget_notes(task, budget, (len(split["train"]), len(split["val"]), len(split["test"])), argv)
    notes.append(f"total wall time of the benchmark: {(time.perf_counter() - started) / 60:.1f} min")
    write_benchmark_report(task.name, task.title, format_rows(task, rows), notes, device=device,
                           results_dir=args.results)
    return 0
