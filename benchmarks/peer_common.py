"""medseg's default recipe against a plain MONAI training loop (issue 23), shared by ``peer_polyp.py`` and
``peer_hippocampus.py``.

In one run, on the split of :func:`train_compare.split_cases`, with the same thread count and wall-clock
budget (``--minutes``) and a U-Net of the same size on both sides:

1. **peer**: MONAI's ``BasicUNet`` (features 16-256, instance norm, leaky ReLU 0.1) trained by
   :func:`plain_loop`, a deliberately plain loop: random batches, random flips, MONAI's ``DiceCELoss``
   (sigmoid for binary, softmax for multiclass), Adam at ``--lr``, poly decay (power 0.9) over the
   elapsed fraction of the budget, no validation, the last weights kept;
2. **medseg**: ``medseg.engine.train`` with the task's config: our ``unet`` of the same widths (instance
   norm, leaky ReLU 0.1), the engine's defaults (nnU-Net augmentation, gradient clipping, validation
   every epoch, best checkpoint by validation Dice), Dice + BCE / Dice + CE, Adam at ``--lr``, poly
   decay.

**Equal time** (the default): the two sides train at the same time, the peer in a child process of this
script (``--peer-only``, its log in ``OUT/peer.log``) and medseg in this one, each on ``--threads``
threads, so that they share the machine's load alike; each makes as many optimiser steps as it can in
``--minutes``: the peer's poly decay runs over the elapsed share of the budget, medseg's over
``train.max_minutes`` = ``--minutes`` (its schedule follows the budget, validation counts in it, see
:class:`medseg.engine.schedules.BudgetClock`). ``--equal-steps`` instead trains the peer first and then
medseg for exactly the peer's number of optimiser steps (``train.iterations``; ``--minutes`` caps it).

Both read the same preprocessed arrays (the engine's cache, ``OUT/cache``). Both are evaluated by
:func:`heldout_dice`, one function for both: each held-out case preprocessed, predicted without
test-time augmentation (whole image in 2D, Gaussian sliding windows in 3D), the logits mapped back to
the source grid (:meth:`Preprocessor.revert`, bilinear) and Dice computed against the original mask.

``--set key=value`` (repeatable) overrides the medseg config, for ablations; ``--reuse-peer`` takes the
peer's result from ``OUT/peer.json`` of an earlier run with the same split and budget instead of training
it again. MONAI is an optional benchmark dependency: without it the scripts say so and exit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from train_compare import ROOT, split_cases

from medseg.data import load_dataset, write_splits
from medseg.data.cache import PreprocessedCache
from medseg.data.cases import read_case
from medseg.engine import train
from medseg.engine.benchmark import markdown_table, write_benchmark_report
from medseg.engine.checkpoint import load_checkpoint
from medseg.engine.config import config_from_dict
from medseg.engine.inference import logits_to_labels, sliding_window_inference
from medseg.engine.plan import build_preprocessor
from medseg.engine.predict import load_models
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.metrics.overlap import dice
from medseg.outputs import main_logits

PEER_FEATURES = (16, 32, 64, 128, 256, 16)
"""BasicUNet widths: 16-256 over 4 poolings, 16 in the last up-sampling block (our unet: features 16)."""
MEDSEG_UNET = {"features": 16, "depth": 4, "norm": "instance", "act": "leaky_relu:0.1"}
"""Our U-Net of the peer's size and layers."""


@dataclass
class PeerTask:
    """One benchmark: the data, the label mode, the evaluated classes and the medseg config."""

    name: str
    title: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    label_mode: str
    classes: tuple[int, ...]
    default_root: Path
    medseg_config: Callable[[argparse.Namespace], dict[str, Any]]
    patch: Callable[[argparse.Namespace], tuple[int, ...] | None]
    """The training/inference patch (3D), or None for whole (resized) images."""


# ----------------------------------------------------------------------------------------------------
# The peer: MONAI's BasicUNet and a plain loop
# ----------------------------------------------------------------------------------------------------

def peer_model(task: PeerTask) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=task.spatial_dims, in_channels=task.in_channels,
                     out_channels=task.out_channels, features=PEER_FEATURES, norm="instance")


def peer_loss(label_mode: str) -> nn.Module:
    from monai.losses import DiceCELoss

    if label_mode == "binary":
        return DiceCELoss(sigmoid=True)
    return DiceCELoss(softmax=True, to_onehot_y=True)


def random_flips(image: torch.Tensor, label: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each spatial axis of the whole batch with probability 0.5 (the peer's only augmentation)."""
    for axis in range(2, image.ndim):
        if torch.rand((), generator=generator) < 0.5:
            image, label = image.flip(axis), label.flip(axis)
    return image, label


def plain_loop(model: nn.Module, sample: Callable[[], tuple[torch.Tensor, torch.Tensor]],
               loss_fn: nn.Module, seconds: float, lr: float, max_steps: int | None = None,
               progress: bool = True) -> list[float]:
    """Adam at ``lr`` with poly decay over the elapsed fraction of ``seconds``; returns the step losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(desc="peer", unit="batch", disable=not progress)
    while max_steps is None or len(losses) < max_steps:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * (1.0 - elapsed / seconds) ** 0.9
        image, label = sample()
        loss = loss_fn(model(image), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.update()
    bar.close()
    return losses


def image_sampler(images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int
                  ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Batches of equally sized images ``[N, C, *spatial]`` in a new random order every epoch, flipped."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal order
        if len(order) < batch_size:
            order = torch.randperm(len(images), generator=generator).tolist()
        picked, order = order[:batch_size], order[batch_size:]
        return random_flips(images[picked], labels[picked], generator)

    return sample


def patch_sampler(volumes: Sequence[tuple[np.ndarray, np.ndarray]], patch: Sequence[int], batch_size: int,
                  seed: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Batches of random patches (zero-padded where a volume is smaller) from random volumes, flipped."""
    generator = torch.Generator().manual_seed(seed)
    padded = []
    for image, label in volumes:
        pad = [(0, 0)] + [(0, max(0, p - n)) for p, n in zip(patch, image.shape[1:], strict=True)]
        padded.append((torch.from_numpy(np.pad(image, pad)), torch.from_numpy(np.pad(label, pad)).long()))

    def crop(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = padded[index]
        corner = [int(torch.randint(0, n - p + 1, (), generator=generator))
                  for p, n in zip(patch, image.shape[1:], strict=True)]
        window = (slice(None), *(slice(c, c + p) for c, p in zip(corner, patch, strict=True)))
        return image[window], label[window]

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        picked = torch.randint(0, len(padded), (batch_size,), generator=generator).tolist()
        images, labels = zip(*(crop(i) for i in picked), strict=True)
        return random_flips(torch.stack(images), torch.stack(labels), generator)

    return sample


# ----------------------------------------------------------------------------------------------------
# One evaluation for both
# ----------------------------------------------------------------------------------------------------

@torch.inference_mode()
def heldout_dice(model: nn.Module, cases: Sequence[Any], preprocessor: Any, task: PeerTask,
                 patch: Sequence[int] | None, progress: bool = True) -> dict[int, float]:
    """Mean Dice per class over ``cases`` at the source resolution (see the module docstring)."""
    model.eval()
    scores: dict[int, list[float]] = {c: [] for c in task.classes}
    for case in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        image, label, geometry = read_case(case)
        prepared = preprocessor(image, None, geometry)
        x = torch.from_numpy(np.ascontiguousarray(prepared.image))
        if patch is None:
            logits = main_logits(model(x[None]))[0].float()
        else:
            logits = sliding_window_inference(model, x, patch, task.out_channels, step=0.5)
        logits = preprocessor.revert(logits, prepared, order=1)
        pred = logits_to_labels(logits, task.label_mode).numpy()
        pred = pred[0] if pred.ndim == label.ndim else pred
        for c in task.classes:
            scores[c].append(dice(pred == c, label[0] == c))
    return {c: float(np.mean(v)) for c, v in scores.items()}


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------

@dataclass
class SideResult:
    name: str
    steps: int
    minutes: float
    dice: dict[int, float]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "minutes": self.minutes,
                "dice": {str(k): v for k, v in self.dice.items()}, "note": self.note}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SideResult:
        return cls(data["name"], int(data["steps"]), float(data["minutes"]),
                   {int(k): float(v) for k, v in data["dice"].items()}, data.get("note", ""))


EQUAL_TIME_EPOCHS = 10_000
"""medseg's epoch count at equal time: more than any budget allows, so that the time budget ends the run."""


def medseg_config(task: PeerTask, args: argparse.Namespace, out: Path, iterations: int | None) -> Any:
    """The medseg side's config: ``iterations`` optimiser steps (equal steps), or None: as many as
    ``--minutes`` allow (equal time)."""
    data = task.medseg_config(args)
    data.update(name=f"peer-{task.name}-medseg", run_dir=str(out / "medseg"))
    data["data"].update(root=str(args.data), splits_file=str(out / "splits.json"), fold=0,
                        cache_dir=str(out / "cache"), batch_size=args.batch_size, num_workers=args.workers)
    data["model"] = {"name": "unet", "spatial_dims": task.spatial_dims, "options": dict(MEDSEG_UNET)}
    data["optim"] = {"name": "adam", "lr": args.lr, "weight_decay": 0.0}
    data["schedule"] = {"name": "poly", "power": 0.9}
    data.setdefault("train", {}).update(iterations=iterations, max_minutes=args.minutes, seed=args.seed,
                                        device="cpu")
    if iterations is None:
        data["train"]["epochs"] = EQUAL_TIME_EPOCHS
    return config_from_dict(data, args.set)


def load_arrays(cache: PreprocessedCache, case_ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(np.ascontiguousarray(a) for a in cache.load(c, mmap=False)) for c in case_ids]


def run_peer(task: PeerTask, args: argparse.Namespace, arrays: Sequence[tuple[np.ndarray, np.ndarray]],
             test_cases: Sequence[Any], preprocessor: Any) -> SideResult:
    torch.manual_seed(args.seed)
    model = peer_model(task)
    patch = task.patch(args)
    if patch is None:
        images = torch.from_numpy(np.stack([a for a, _ in arrays]))
        labels = torch.from_numpy(np.stack([b for _, b in arrays]).astype(np.float32 if task.label_mode ==
                                                                           "binary" else np.int64))
        sample = image_sampler(images, labels, args.batch_size, args.seed)
    else:
        sample = patch_sampler(arrays, patch, args.batch_size, args.seed)
    start = time.perf_counter()
    losses = plain_loop(model, sample, peer_loss(task.label_mode), 60.0 * args.minutes, args.lr)
    minutes = (time.perf_counter() - start) / 60.0
    scores = heldout_dice(model, test_cases, preprocessor, task, patch)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    return SideResult("peer: MONAI BasicUNet, plain loop", len(losses), minutes, scores,
                      f"loss {first:.3f} (first 10 steps) -> {last:.3f} (last 10)")


def run_medseg(task: PeerTask, args: argparse.Namespace, out: Path, iterations: int | None,
               test_cases: Sequence[Any], preprocessor: Any) -> list[SideResult]:
    config = medseg_config(task, args, out, iterations)
    result = train(config)
    minutes = sum(float(r.get("time_s", 0.0)) for r in result.history) / 60.0
    steps = int((load_checkpoint(result.last_checkpoint).get("training") or {}).get("global_step", 0))
    rows = []
    for label, checkpoint in (("best", result.best_checkpoint), ("last", result.last_checkpoint)):
        if checkpoint is None:
            continue
        model = load_models([checkpoint], torch.device("cpu"))[0].model
        scores = heldout_dice(model, test_cases, preprocessor, task, task.patch(args))
        losses = [float(r["train_loss"]) for r in result.history]
        rows.append(SideResult(f"medseg unet, {label}.pt", steps, minutes, scores,
                               f"epochs: {result.epochs_run}; mean loss {losses[0]:.3f} (first epoch) -> "
                               f"{losses[-1]:.3f} (last)"))
    return rows


def compare(task: PeerTask, args: argparse.Namespace) -> list[SideResult]:
    """The peer, then medseg, on one split (see the module docstring); returns the table's rows."""
    torch.set_num_threads(args.threads)
    out: Path = args.out
    if not Path(args.data).exists():
        raise MedsegError(f"--data: {args.data} does not exist")
    dataset = load_dataset(args.data)
    split = split_cases([c.case_id for c in dataset.cases], args.test_cases, args.val_cases, args.train_cases,
                        args.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "split.json", json.dumps(split, indent=2) + "\n")
    write_splits(out / "splits.json", [{"train": split["train"], "val": split["val"]}])
    probe = medseg_config(task, args, out, 1)
    image = read_case(dataset.cases[0], with_label=False)[0]
    preprocessor = build_preprocessor(probe, dataset, int(image.shape[0]), image.ndim - 1, split["train"])
    cache = PreprocessedCache(out / "cache", preprocessor, seed=args.seed)
    cache.prepare([dataset.case(c) for c in split["train"] + split["val"]], num_workers=args.workers)
    test_cases = [dataset.case(c) for c in split["test"]]
    peer_file = out / "peer.json"
    if args.reuse_peer:
        if not peer_file.is_file():
            raise MedsegError(f"--reuse-peer: {peer_file} not found (run once without it)")
    elif args.peer_only or args.equal_steps:
        peer = run_peer(task, args, load_arrays(cache, split["train"]), test_cases, preprocessor)
        write_text_atomically(peer_file, json.dumps(peer.to_json(), indent=2) + "\n")
        if args.peer_only:
            return [peer]
    if (out / "medseg").exists():
        shutil.rmtree(out / "medseg")
    if args.reuse_peer or args.equal_steps:
        peer = SideResult.from_json(json.loads(peer_file.read_text(encoding="utf-8")))
        steps = peer.steps if args.equal_steps else None
        return [peer, *run_medseg(task, args, out, steps, test_cases, preprocessor)]
    peer_file.unlink(missing_ok=True)
    with open(out / "peer.log", "w", encoding="utf-8") as log:  # noqa: PTH123 (the child's stdout/stderr)
        child = subprocess.Popen([sys.executable, args.script, *args.argv, "--peer-only"], stdout=log,
                                 stderr=subprocess.STDOUT)
        try:
            rows = run_medseg(task, args, out, None, test_cases, preprocessor)
        except BaseException:
            child.kill()
            raise
        if child.wait() != 0 or not peer_file.is_file():
            raise MedsegError(f"the peer's process failed (exit {child.returncode}); see {out / 'peer.log'}")
    peer = SideResult.from_json(json.loads(peer_file.read_text(encoding="utf-8")))
    return [peer, *rows]


def format_rows(task: PeerTask, rows: Sequence[SideResult], class_names: dict[int, str]) -> str:
    headers = ["run", "optimiser steps", "train (min)", *(f"Dice {class_names[c]}" for c in task.classes),
               "note"]
    lines = [[r.name, str(r.steps), f"{r.minutes:.1f}", *(f"{r.dice[c]:.3f}" for c in task.classes), r.note]
             for r in rows]
    return markdown_table(headers, lines, [False, True, True, *[True] * len(task.classes), False])


def build_parser(task: PeerTask, description: str, defaults: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall-clock budget of each side")
    parser.add_argument("--size", type=int, nargs="+", default=defaults["size"],
                        help="2D: the resized image size; 3D: the patch (array order)")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-cases", type=int, default=None)
    parser.add_argument("--val-cases", type=int, default=defaults["val_cases"])
    parser.add_argument("--test-cases", type=int, default=defaults["test_cases"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both sides")
    parser.add_argument("--workers", type=int, default=0, help="medseg data loader processes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the medseg config (ablations), repeatable")
    parser.add_argument("--reuse-peer", action="store_true", help="take the peer's row from OUT/peer.json")
    parser.add_argument("--peer-only", action="store_true",
                        help="train and evaluate the peer only (OUT/peer.json, no report)")
    parser.add_argument("--equal-steps", action="store_true",
                        help="the peer first, then medseg for the peer's number of optimiser steps "
                             "(default: both at once, each as many steps as --minutes allow)")
    parser.add_argument("--data", type=Path, default=task.default_root)
    parser.add_argument("--out", type=Path, default=Path("runs") / f"peer-{task.name}")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    return parser


def main(task: PeerTask, parser: argparse.ArgumentParser, class_names: dict[int, str],
         argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv, args.script = argv, ROOT / "benchmarks" / f"peer_{task.name}.py"  # the peer's child process
    try:
        import monai  # noqa: F401
    except ImportError:
        print("MONAI is not installed: the peer benchmarks need it (pip install monai)", file=sys.stderr)
        return 0
    if args.minutes <= 0 or args.batch_size < 1 or args.threads < 1:
        print("error: --minutes, --batch-size and --threads must be positive", file=sys.stderr)
        return 2
    started, load = time.perf_counter(), _load()
    try:
        rows = compare(task, args)
    except MedsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.peer_only:
        return 0
    command = ".venv/bin/python benchmarks/" + " ".join(shlex.quote(a) for a in [f"peer_{task.name}.py",
                                                                                  *argv])
    split = json.loads((args.out / "split.json").read_text(encoding="utf-8"))
    notes = [f"command: `OMP_NUM_THREADS={args.threads} {command}`",
             f"concurrency: {_mode(args)}; torch threads {args.threads} per side; load average "
             f"at the start {load} and at the end {_load()}",
             f"split (seed {args.seed}): {len(split['train'])} training, {len(split['val'])} validation "
             f"(medseg's best checkpoint only), {len(split['test'])} held-out test cases",
             f"budget: {args.minutes:g} min of training per side, size {'x'.join(map(str, args.size))}, "
             f"batch {args.batch_size}, Adam lr {args.lr:g}, poly 0.9; medseg overrides: "
             f"{', '.join(args.set) or 'none'}",
             "Dice: mean over the held-out cases at the source resolution, no test-time augmentation "
             "(peer_common.heldout_dice, the same function for both)",
             f"total wall time: {(time.perf_counter() - started) / 60:.1f} min"]
    write_benchmark_report(f"peer-{task.name}", task.title, format_rows(task, rows, class_names), notes,
                           results_dir=args.results)
    return 0


def _mode(args: argparse.Namespace) -> str:
    if args.reuse_peer:
        return "the peer's row from an earlier run (--reuse-peer), medseg alone"
    if args.equal_steps:
        return "equal steps (--equal-steps): the peer first, then medseg for its step count"
    return "equal time: the peer (a child process) and medseg trained at the same time, one core each"


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text(encoding="utf-8").split()[0]
    except OSError:
        return "unknown"


