"""The training loop (``medseg train``), after nnU-Net's trainer (Isensee et al., Nature Methods 2021).

One seed drives everything: the split, the loader (batch ``i`` of epoch ``e`` depends only on
``(seed, rank, e, i)``), the augmenter (re-seeded from ``(seed, rank, e)`` every epoch) and torch's global
generator (saved in every checkpoint). ``last.pt`` is written atomically after every epoch with the model,
optimiser, scheduler, scaler and RNG states, so :func:`train` with ``resume=True`` continues a killed run
with exactly the losses of an uninterrupted one (CPU, deterministic kernels).

Per epoch: training batches (augmented on the device, AMP on CUDA, gradient accumulation and clipping, one
scheduler step per optimiser step), validation every ``val_every`` epochs on the validation cases (whole
images, or Gaussian sliding windows when training on patches) reduced across DDP ranks, then on rank 0
``best.pt`` / ``last.pt``, ``log.csv``, ``progress.png`` and TensorBoard scalars.

Options beyond nnU-Net: ``model.encoder_weights`` (a weight file loaded into ``model.encoder`` before
training, not on resume), ``model.init_from`` (fine-tuning: the whole model's weights from a checkpoint or
state-dict file, not on resume; ``model.init_skip_mismatched`` keeps the model's own tensors where the
shapes differ), ``train.save_every`` (an ``epoch_NNNN.pt`` kept every N epochs), ``train.multi_scale`` (a
size drawn per batch after augmentation, M2SNet / U-Net v2) and ``train.ema_decay`` (an exponential moving
average of the weights, which is what is validated and saved as the model; ``last.pt`` also keeps the
trained weights for resuming).
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medseg.data import (
    BatchAugmenter,
    PreprocessedCache,
    Preprocessor,
    build_train_loader,
    load_dataset,
    read_case,
    read_splits,
    train_val_split,
    write_splits,
)
from medseg.data.datasets import Dataset, kfold_splits
from medseg.data.geometry import DataError
from medseg.encoders import Encoder, load_encoder_weights
from medseg.engine.checkpoint import (
    epoch_checkpoint_path,
    load_checkpoint,
    load_initial_weights,
    load_model_weights,
    make_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
    unwrap_model,
)
from medseg.engine.config import LOWER_IS_BETTER, RunConfig, config_to_dict, lr_factor_function, save_config
from medseg.engine.device import resolve_device
from medseg.engine.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown_distributed,
    wrap_model,
)
from medseg.engine.inference import probabilities_to_labels
from medseg.engine.plots import plot_progress
from medseg.engine.rundir import RunPaths, discard_new_run, prepare_run_dir
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.layers import resize_labels, resize_to
from medseg.losses import build_loss
from medseg.metrics import evaluate_case
from medseg.outputs import main_logits
from medseg.registry import create_model, model_info

logger = logging.getLogger(__name__)

__all__ = ["ModelEMA", "MultiScale", "TrainResult", "load_encoder_file", "load_init_file", "seed_everything",
           "train"]

DEFAULT_PATCH_BATCHES = 250
"""Batches per epoch in patch mode when ``train.iterations_per_epoch`` is null (nnU-Net's 250)."""


@dataclass
class TrainResult:
    """What a run produced: its folder, checkpoints, best validation score and per-epoch history."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    best_score: float | None
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ set-up


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (all devices)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: none on the CPU; ``auto`` is bf16 where the GPU has it, else fp16."""
    if device.type != "cuda" or setting == "none":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


@dataclass
class DataPlan:
    """The data of a run once resolved: cache, split, channels, classes and dimensionality."""

    cache: PreprocessedCache
    train_ids: list[str]
    val_ids: list[str]
    in_channels: int
    num_classes: int
    spatial_dims: int
    class_names: list[str] | None


def _ensure_synthetic(config: RunConfig, ctx: DistributedContext) -> None:
    synthetic = config.data.synthetic
    if synthetic is None or config.data.root is None or not ctx.is_main:
        return
    from medseg.data import write_lesion_dataset, write_polyp_dataset

    if synthetic.kind == "polyp":
        write_polyp_dataset(config.data.root, synthetic.n_cases, tuple(synthetic.size), seed=synthetic.seed)
    else:
        write_lesion_dataset(config.data.root, synthetic.n_cases, tuple(synthetic.size), seed=synthetic.seed)


def _probe(dataset: Dataset) -> tuple[int, int]:
    """Channels and spatial dimensionality of the data set, from its first case."""
    image = read_case(dataset.cases[0], with_label=False)[0]
    return image.shape[0], image.ndim - 1


def build_preprocessor(config: RunConfig, dataset: Dataset, channels: int, dims: int,
                       train_ids: Sequence[str]) -> Preprocessor:
    """The preprocessing of the run; ``normalization: auto`` is ``rgb`` for 3-channel 2D images, ``ct``
    when the data set names a CT channel (statistics from the training cases, nnU-Net) and ``zscore``."""
    data = config.data
    scheme = data.normalization
    names = [n.lower() for n in (dataset.channel_names or [])]
    if scheme == "auto":
        scheme = "rgb" if channels == 3 and dims == 2 else "ct" if "ct" in names else "zscore"
    stats: dict[str, Any] = {}
    if scheme == "ct":
        from medseg.data.preprocess import compute_ct_stats

        def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for case_id in train_ids:
                case = dataset.case(case_id)
                image, label, _ = read_case(case)
                yield image, label

        stats = compute_ct_stats(pairs(), seed=config.train.seed)
    return Preprocessor(normalization=scheme, norm_stats=stats, target_spacing=data.spacing,
                        crop_nonzero=data.crop_nonzero, resize_shape=data.resize,
                        label_mapping=data.label_mapping)


def _split(config: RunConfig, dataset: Dataset, paths: RunPaths, resume: bool) -> tuple[list[str], list[str]]:
    data = config.data
    if resume and paths.splits.is_file():
        fold = read_splits(paths.splits)[0]
    elif data.splits_file is not None:
        fold = read_splits(data.splits_file)[data.fold or 0]
    elif data.fold is not None:
        fold = kfold_splits(dataset.case_ids, data.folds, config.train.seed)[data.fold]
    else:
        fold = train_val_split(dataset.case_ids, data.val_fraction, config.train.seed)
    return list(fold["train"]), list(fold["val"])


def _num_classes(config: RunConfig, dataset: Dataset, cache: PreprocessedCache) -> int:
    found = None
    if config.data.label_mode == "multiclass":
        present = [c for case_id in cache.case_ids for c in cache.info(case_id).get("classes", [])]
        found = max([*present, *(dataset.class_names or {}).keys(), 1]) + 1
    channels = config.data.output_channels(found)
    if channels is None:
        raise MedsegError("data.num_classes: cannot derive the output channels; set data.num_classes")
    return channels


def _check_label_values(dataset: Dataset, cache: PreprocessedCache, case_ids: Sequence[str],
                        num_classes: int) -> None:
    """Multiclass labels must lie in ``0 .. num_classes - 1`` (else the loss would index past its classes)."""
    for case_id in case_ids:
        info = cache.info(case_id)
        values = info.get("label_values", info.get("classes", []))
        outside = sorted(int(v) for v in values if v >= num_classes)
        if outside:
            raise DataError(dataset.case(case_id).label, f"label values {outside} outside the {num_classes} "
                                                         f"classes 0..{num_classes - 1} (data.num_classes)")


def prepare_data(config: RunConfig, paths: RunPaths, ctx: DistributedContext, resume: bool,
                 progress: bool) -> DataPlan:
    """Load the data set, split it (written to ``splits.json``), preprocess it into the cache (rank 0;
    the other ranks wait and read the manifest)."""
    data = config.data
    if data.root is None:
        raise MedsegError("data.root: no data set given (a folder or a CSV/JSON list)")
    _ensure_synthetic(config, ctx)
    barrier(ctx)
    dataset = load_dataset(data.root, channels_suffix=data.channels_suffix,
                           allow_outside_root=data.allow_outside_root)
    if not dataset.cases:
        raise MedsegError(f"data.root: no labelled cases found in {data.root}")
    train_ids, val_ids = _split(config, dataset, paths, resume)
    channels, dims = _probe(dataset)
    if config.model.in_channels not in (None, channels):
        raise MedsegError(f"model.in_channels: {config.model.in_channels} but the images have {channels}")
    if config.spatial_dims not in (None, dims):
        raise MedsegError(f"model.spatial_dims: the run is {config.spatial_dims}D but the images are {dims}D")
    preprocessor = build_preprocessor(config, dataset, channels, dims, train_ids)
    cache_root = Path(data.cache_dir) if data.cache_dir is not None else paths.root / "cache"
    cases = [dataset.case(c) for c in train_ids + val_ids]
    if ctx.is_main:
        write_splits(paths.splits, [{"train": train_ids, "val": val_ids}])
        PreprocessedCache(cache_root, preprocessor, seed=config.train.seed).prepare(
            cases, progress=progress, num_workers=data.num_workers)
    barrier(ctx)
    cache = PreprocessedCache(cache_root, preprocessor, seed=config.train.seed)
    num_classes = _num_classes(config, dataset, cache)
    if data.label_mode == "multiclass":
        _check_label_values(dataset, cache, train_ids + val_ids, num_classes)
    names = data.class_names
    if names is None and dataset.class_names:
        names = [dataset.class_names[k] for k in sorted(dataset.class_names) if k != 0]
    return DataPlan(cache, train_ids, val_ids, channels, num_classes, dims, names)


# ------------------------------------------------------------------------------------------ model & optim


def _model_options(config: RunConfig, dims: int) -> dict[str, Any]:
    options = dict(config.model.options)
    if config.loss.deep_supervision:
        options.setdefault("deep_supervision", True)
    if dims not in model_info(config.model.name)["dims"]:
        raise MedsegError(f"model.name: {config.model.name} does not support {dims}D images")
    return options


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov) / Adam / AdamW; parameters whose name starts with a group's ``match`` get its rate and
    weight decay (first match wins)."""
    optim = config.optim
    groups: list[dict[str, Any]] = [{"params": []} for _ in optim.param_groups] + [{"params": []}]
    for name, parameter in unwrap_model(model).named_parameters():
        if not parameter.requires_grad:
            continue
        index = next((i for i, g in enumerate(optim.param_groups) if name.startswith(g.match)), -1)
        groups[index]["params"].append(parameter)
    for group, spec in zip(groups, optim.param_groups, strict=False):
        if not group["params"]:
            raise MedsegError(f"optim.param_groups: no parameter name starts with {spec.match!r}")
        if spec.lr is not None:
            group["lr"] = spec.lr
        if spec.weight_decay is not None:
            group["weight_decay"] = spec.weight_decay
    groups = [g for g in groups if g["params"]]
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                               nesterov=optim.nesterov and optim.momentum > 0)
    cls = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)


def _targets(label: torch.Tensor, label_mode: str) -> torch.Tensor:
    """Loss targets from cached labels: integer class maps (multiclass), float masks otherwise."""
    return label.long() if label_mode == "multiclass" else label.float()


def _augmenter_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch, 0xA116]).generate_state(1)[0])


def load_encoder_file(model: nn.Module, path: str) -> None:
    """Load ``model.encoder_weights`` into ``model.encoder`` (an :class:`Encoder`) and log what happened."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, Encoder):
        raise MedsegError(f"model.encoder_weights: model {type(model).__name__} has no registered encoder "
                          "(no 'encoder' attribute that is a medseg Encoder) to load weights into")
    report = load_encoder_weights(encoder, path)
    logger.info("encoder weights: %d tensors from %s%s%s", report.loaded, path,
                f"; first conv adapted to the input channels ({', '.join(report.adapted)})"
                if report.adapted else "",
                f"; {len(report.classifier)} classifier keys ignored" if report.classifier else "")


def load_init_file(model: nn.Module, path: str, skip_mismatched: bool) -> None:
    """Load ``model.init_from`` into the whole model (fine-tuning; see :func:`load_initial_weights`) and
    log what was loaded and skipped."""
    try:
        report = load_initial_weights(model, path, skip_mismatched=skip_mismatched)
    except MedsegError as exc:
        raise MedsegError(f"model.init_from: {exc}") from None
    logger.info("model.init_from: %d tensors from %s%s", report.loaded, path,
                f"; {len(report.skipped)} skipped for their shape, kept as initialised (file vs model): "
                f"{', '.join(report.skipped)}" if report.skipped else "")


class ModelEMA:
    """Exponential moving average of a model's parameters and floating-point buffers (integer buffers are
    copied): ``ema = decay * ema + (1 - decay) * current`` after every optimiser step, from a copy of the
    initial weights (as timm's ``ModelEmaV2``). ``module`` is the averaged model, kept in eval mode."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for key, value in self.module.state_dict().items():
            if value.is_floating_point():
                value.lerp_(current[key].to(value.dtype), 1.0 - self.decay)
            else:
                value.copy_(current[key])


class MultiScale:
    """Per-batch training size drawn from ``train.multi_scale`` (M2SNet / U-Net v2 multi-scale training).

    Integers are absolute sizes (every spatial axis), floats factors of the batch's own size; sizes are
    rounded to a multiple of the model's input multiple (at least one multiple). The draw is seeded by
    ``(seed, epoch)`` only, so every DDP rank trains at the same size and a resumed run draws the same
    sizes."""

    def __init__(self, scales: Sequence[float], multiple: int, seed: int) -> None:
        self.scales, self.multiple, self.seed = list(scales), max(int(multiple), 1), seed
        self.absolute = all(isinstance(s, int) for s in self.scales)
        self.rng = random.Random(seed)

    def set_epoch(self, epoch: int) -> None:
        state = np.random.SeedSequence([self.seed, epoch, 0x5CA1E]).generate_state(1)
        self.rng = random.Random(int(state[0]))

    def size(self, shape: Sequence[int]) -> list[int]:
        """The drawn size for a batch of spatial ``shape``."""
        scale = self.rng.choice(self.scales)
        sizes = [scale] * len(shape) if self.absolute else [scale * s for s in shape]
        return [max(self.multiple, round(s / self.multiple) * self.multiple) for s in sizes]

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.size(image.shape[2:])
        if list(image.shape[2:]) == size:
            return image, label
        return resize_to(image, size), resize_labels(label, size)


# ------------------------------------------------------------------------------------------ validation


def _label_maps(logits: torch.Tensor, label_mode: str, threshold: float) -> list[np.ndarray]:
    """Per evaluated channel a label map: binary/multilabel one 0/1 map per channel, multiclass argmax."""
    scores = logits if label_mode == "multiclass" else torch.sigmoid(logits)  # validation thresholds p
    labels = probabilities_to_labels(scores, label_mode, threshold).cpu().numpy()
    return list(labels) if label_mode == "multilabel" else [labels]


class Validator:
    """Validation metrics over cases, as per-metric sums and counts (NaN skipped) for DDP reduction."""

    def __init__(self, config: RunConfig, plan: DataPlan, device: torch.device, ctx: DistributedContext):
        self.config, self.plan, self.device, self.ctx = config, plan, device, ctx
        self.metrics = list(config.train.val_metrics)
        self.patch = config.inference.patch_size or config.data.patch_size

    def predict(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        if self.patch is None:
            return main_logits(model(image[None]))[0].float()
        from medseg.engine.inference import sliding_window_inference

        inference = self.config.inference
        return sliding_window_inference(model, image, self.patch, self.plan.num_classes, step=inference.step,
                                        sigma_scale=inference.sigma_scale,
                                        window_batch_size=inference.window_batch_size, device=self.device)

    def case_rows(self, model: nn.Module, case_id: str) -> list[tuple[str, float]]:
        image, label = self.plan.cache.load(case_id, mmap=False)
        logits = self.predict(model, torch.from_numpy(np.ascontiguousarray(image)).to(self.device))
        mode = self.config.data.label_mode
        preds = _label_maps(logits, mode, self.config.inference.threshold)
        spacing = self.plan.cache.info(case_id).get("spacing")
        if mode == "multiclass":
            pairs = [(preds[0], label[0], range(1, self.plan.num_classes))]
        else:
            pairs = [(p, g, (1,)) for p, g in zip(preds, label, strict=True)]
        rows = []
        for pred, gt, classes in pairs:
            rows += [(m, v) for _, m, v in evaluate_case(pred, gt, classes=classes, spacing=spacing,
                                                         metrics=self.metrics)]
        return rows

    @torch.inference_mode()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        """Mean of each metric over this rank's share of the cases and classes, reduced across ranks."""
        model.eval()
        ids = self.plan.val_ids[self.ctx.rank::self.ctx.world_size]
        sums = torch.zeros(2 * len(self.metrics), dtype=torch.float64)
        for case_id in ids:
            for metric, value in self.case_rows(model, case_id):
                if not math.isnan(value):
                    k = self.metrics.index(metric)
                    sums[2 * k] += value
                    sums[2 * k + 1] += 1
        if self.ctx.enabled:
            sums = all_reduce_sum(sums.to(self.device), self.ctx).cpu()
        return {f"val_{m}": (sums[2 * k] / sums[2 * k + 1]).item() if sums[2 * k + 1] > 0 else math.nan
                for k, m in enumerate(self.metrics)}


# ------------------------------------------------------------------------------------------ the loop


def _write_log(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``log.csv`` atomically from the whole history (a killed write leaves the previous file)."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomically(path, buffer.getvalue())


def _open_tensorboard(paths: RunPaths) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: optional
        return None
    return SummaryWriter(str(paths.tensorboard))


class Trainer:
    """One training run; build with the resolved config and call :meth:`run`."""

    def __init__(self, config: RunConfig, ctx: DistributedContext, paths: RunPaths, device: torch.device,
                 plan: DataPlan, progress: bool, resume: bool = False) -> None:
        self.config, self.ctx, self.paths, self.device, self.plan = config, ctx, paths, device, plan
        self.progress = progress and ctx.is_main
        train = config.train
        self.options = _model_options(config, plan.spatial_dims)
        model = create_model(config.model.name, in_channels=plan.in_channels, num_classes=plan.num_classes,
                             spatial_dims=plan.spatial_dims, **self.options).to(device)
        if config.model.encoder_weights is not None and not resume:  # on resume the checkpoint has them
            load_encoder_file(model, config.model.encoder_weights)
        if config.model.init_from is not None and not resume:
            load_init_file(model, config.model.init_from, config.model.init_skip_mismatched)
        if train.channels_last:
            model = model.to(memory_format=torch.channels_last if plan.spatial_dims == 2
                             else torch.channels_last_3d)
        self.model = model
        self.ema = ModelEMA(model, train.ema_decay) if train.ema_decay is not None else None
        self.net = wrap_model(model, ctx, device)
        if train.compile:
            self.net = torch.compile(self.net)
        default_loss = model_info(config.model.name)["default_loss"]  # every registered model names one
        self.loss_fn = build_loss(config.loss.build_spec(config.data.label_mode, default_loss)).to(device)
        self.multi_scale = None
        if train.multi_scale is not None:
            multiple = (getattr(model, "input_multiple", None)
                        or model_info(config.model.name)["input_multiple"])
            self.multi_scale = MultiScale(train.multi_scale, multiple or 1, train.seed)
        self.loader = build_train_loader(
            plan.cache, plan.train_ids, config.data.patch_size, config.data.batch_size,
            config.data.foreground_fraction, train.seed, config.data.num_workers,
            batches_per_epoch=train.iterations_per_epoch or DEFAULT_PATCH_BATCHES, rank=ctx.rank,
            world_size=ctx.world_size)
        self.batches_per_epoch = len(self.loader)
        if config.data.patch_size is None and train.iterations_per_epoch is not None:
            # whole images: an epoch is one seeded pass, cut short to a (per-epoch random) subset
            self.batches_per_epoch = min(self.batches_per_epoch, train.iterations_per_epoch)
        self.total_batches = train.total_iterations(self.batches_per_epoch)
        self.epochs = train.total_epochs(self.batches_per_epoch)
        # an optimiser step every grad_accumulation batches and at the end of every epoch
        per_epoch = math.ceil(self.batches_per_epoch / train.grad_accumulation)
        full, rest = divmod(self.total_batches, self.batches_per_epoch)
        steps = full * per_epoch + math.ceil(rest / train.grad_accumulation)
        self.optimizer = build_optimizer(config, model)
        factor = lr_factor_function(config.schedule, steps, per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.amp_dtype = _amp_dtype(train.amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.validator = Validator(config, plan, device, ctx)
        self.lower_is_better = train.best_metric in LOWER_IS_BETTER
        self.epoch = self.global_step = self.batches_done = self.stale = 0
        self.best_score: float | None = None
        self.history: list[dict[str, Any]] = []

    # -------------------------------------------------------------- state

    def restore(self) -> None:
        """Continue from ``last.pt`` (model, optimiser, scheduler, scaler, RNG, counters, history)."""
        ckpt = load_checkpoint(self.paths.last, map_location="cpu")
        load_model_weights(self.model, ckpt, self.paths.last)
        state = restore_training_state(ckpt, optimizer=self.optimizer, scheduler=self.scheduler,
                                       scaler=self.scaler, source=self.paths.last)
        if self.ema is not None:  # the checkpoint's weights are the average; the trained ones are in extra
            if "model_state" not in state.extra:
                raise MedsegError(f"train.ema_decay: {self.paths.last} was written without weight averaging; "
                                  "resume with train.ema_decay null or start a new run")
            self.ema.module.load_state_dict(ckpt["state_dict"])
            self.model.load_state_dict(state.extra["model_state"])
        self.epoch, self.global_step = state.epoch, state.global_step
        self.best_score, self.stale = state.best_score, state.epochs_without_improvement
        self.batches_done = int(state.extra.get("batches_done", 0))
        self.history = [dict(row) for row in state.extra.get("history", [])]
        logger.info("resuming %s after epoch %d (step %d)", self.paths.root, self.epoch, self.global_step)

    def checkpoint(self, with_training: bool) -> dict[str, Any]:
        inference = config_to_dict(self.config.inference)
        if inference["patch_size"] is None and self.config.data.patch_size is not None:
            inference["patch_size"] = list(self.config.data.patch_size)
        training = None
        if with_training:
            extra: dict[str, Any] = {"history": self.history, "batches_done": self.batches_done}
            if self.ema is not None:
                extra["model_state"] = {k: v.detach().cpu().clone()
                                        for k, v in self.model.state_dict().items()}
            training = training_state(
                epoch=self.epoch, global_step=self.global_step, optimizer=self.optimizer,
                scheduler=self.scheduler, scaler=self.scaler, best_score=self.best_score,
                epochs_without_improvement=self.stale, extra=extra)
        saved = self.ema.module if self.ema is not None else self.model
        return make_checkpoint(
            saved, name=self.config.model.name, in_channels=self.plan.in_channels,
            num_classes=self.plan.num_classes, spatial_dims=self.plan.spatial_dims, options=self.options,
            label_mode=self.config.data.label_mode, class_names=self.plan.class_names,
            preprocessing=self.plan.cache.preprocessor.to_dict(), inference=inference,
            config=config_to_dict(self.config), training=training)

    def evaluated_model(self) -> nn.Module:
        """The model that is validated (and saved): the weight average with ``train.ema_decay``."""
        return self.ema.module if self.ema is not None else unwrap_model(self.net)

    # -------------------------------------------------------------- training

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _optimizer_step(self) -> None:
        clip = self.config.train.grad_clip
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.scheduler.step()
        self.global_step += 1

    def train_epoch(self) -> dict[str, float]:
        """One epoch of batches; returns the mean loss (over ranks) and the throughput."""
        config, train = self.config, self.config.train
        self.net.train()
        self.loader.set_epoch(self.epoch)
        augmenter = BatchAugmenter(config.augmentation, self.plan.spatial_dims,
                                   seed=_augmenter_seed(train.seed, self.ctx.rank, self.epoch))
        if self.multi_scale is not None:
            self.multi_scale.set_epoch(self.epoch)
        n_batches = min(self.batches_per_epoch, self.total_batches - self.batches_done)
        accumulation = train.grad_accumulation
        memory = torch.channels_last if self.plan.spatial_dims == 2 else torch.channels_last_3d
        total, samples, start = 0.0, 0, time.perf_counter()
        bar = tqdm(total=n_batches, desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="batch",
                   disable=not self.progress, leave=False)
        for index, (image, label) in enumerate(self.loader):
            if index >= n_batches:
                break
            image = image.to(self.device, non_blocking=True)
            label = label.to(self.device, non_blocking=True)
            if config.data.label_mode == "multilabel":
                label = label.bool()
            image, label = augmenter(image, label)
            if self.multi_scale is not None:
                image, label = self.multi_scale(image, label)
            if train.channels_last:
                image = image.contiguous(memory_format=memory)
            step_now = (self.batches_done + 1) % accumulation == 0 or index == n_batches - 1
            sync = nullcontext() if step_now or not self.ctx.enabled else self.net.no_sync()
            with sync:
                with self._autocast():
                    loss = self.loss_fn(self.net(image), _targets(label, config.data.label_mode))
                if not torch.isfinite(loss):
                    raise MedsegError(f"training loss is {loss.item()} at epoch {self.epoch + 1}, batch "
                                      f"{index + 1} (lower optim.lr, or check the data)")
                scaled = loss / accumulation
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if step_now:
                self._optimizer_step()
            self.batches_done += 1
            total += loss.item()
            samples += image.shape[0]
            rate = samples * self.ctx.world_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{total / (index + 1):.4f}", samples_s=f"{rate:.1f}")
            bar.update()
        bar.close()
        elapsed = time.perf_counter() - start
        mean = all_reduce_sum(torch.tensor([total, float(n_batches)], dtype=torch.float64,
                                           device=self.device), self.ctx).cpu()
        return {"train_loss": (mean[0] / mean[1]).item(), "samples_per_s":
                samples * self.ctx.world_size / max(elapsed, 1e-9)}

    def _improved(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score < self.best_score if self.lower_is_better else score > self.best_score

    def end_epoch(self, row: dict[str, Any]) -> bool:
        """Bookkeeping after an epoch: best score, checkpoints, logs and plots; True to stop early."""
        train = self.config.train
        key = f"val_{train.best_metric}"
        improved = False
        if key in row:
            improved = self._improved(row[key])
            if improved:
                self.best_score, self.stale = row[key], 0
            else:
                self.stale += 1
        self.history.append(row)
        if self.ctx.is_main:
            if improved or (not self.paths.best.is_file() and self.best_score is None):
                save_checkpoint(self.paths.best, self.checkpoint(with_training=False))
            state = self.checkpoint(with_training=True)
            save_checkpoint(self.paths.last, state)
            if train.save_every is not None and self.epoch % train.save_every == 0:
                save_checkpoint(epoch_checkpoint_path(self.paths.root, self.epoch), state)
            _write_log(self.paths.log, self.history)
            plot_progress(self.history, self.paths.progress, [f"val_{m}" for m in train.val_metrics])
        patience = train.early_stopping_patience
        return patience is not None and self.stale >= patience

    def run(self, resume: bool) -> TrainResult:
        if resume:
            self.restore()
        writer = _open_tensorboard(self.paths) if self.ctx.is_main else None
        train = self.config.train
        deadline = None if train.max_minutes is None else time.monotonic() + 60.0 * train.max_minutes
        stopped = out_of_time = False
        while self.epoch < self.epochs and self.batches_done < self.total_batches and not stopped:
            start = time.perf_counter()
            lr = self.optimizer.param_groups[-1]["lr"]
            row: dict[str, Any] = {"epoch": self.epoch + 1, **self.train_epoch(), "lr": lr}
            last = self.epoch + 1 >= self.epochs or self.batches_done >= self.total_batches
            if (self.epoch + 1) % train.val_every == 0 or last:
                row.update(self.validator(self.evaluated_model()))
            row["time_s"] = time.perf_counter() - start
            self.epoch += 1
            stopped = self.end_epoch(row)
            out_of_time = deadline is not None and time.monotonic() >= deadline and self.epoch < self.epochs
            stopped = stopped or out_of_time
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch":
                        writer.add_scalar(key, value, self.epoch)
            logger.info("epoch %d/%d: %s", self.epoch, self.epochs,
                        ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        if writer is not None:
            writer.close()
        if out_of_time:
            logger.info("time budget of %.1f minutes reached after epoch %d of %d; keeping the best",
                        train.max_minutes, self.epoch, self.epochs)
        elif stopped:
            logger.info("early stopping after %d validations without improvement", self.stale)
        best = self.paths.best if self.paths.best.is_file() else None
        return TrainResult(run_dir=self.paths.root, best_checkpoint=best, last_checkpoint=self.paths.last,
                           best_score=self.best_score, epochs_run=self.epoch, history=list(self.history))


def train(config: RunConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a model as ``config`` says, in ``config.run_dir`` (``runs/<name>``); see the module docstring.

    ``resume`` continues the run from its ``last.pt``. Under ``torchrun`` every rank calls this; the process
    group is joined here and left at the end. Bad settings and data raise :class:`MedsegError`.
    """
    device_type = resolve_device(config.train.device, key="train.device").type
    ctx = init_distributed(device_type)
    try:
        device = resolve_device(config.train.device, ctx.local_rank, key="train.device")
        seed_everything(config.train.seed)
        paths = RunPaths.at(config.resolved_run_dir())
        created = not paths.root.exists()
        if ctx.is_main:
            prepare_run_dir(paths.root, resume=resume)
            save_config(config, paths.config)
        barrier(ctx)
        try:
            plan = prepare_data(config, paths, ctx, resume, progress)
        except MedsegError:
            if ctx.is_main and not resume:  # bad data: leave no half-made run behind
                discard_new_run(paths, created)
            raise
        seed_everything(config.train.seed)  # the same model initialisation whatever the data step drew
        result = Trainer(config, ctx, paths, device, plan, progress, resume=resume).run(resume)
    except BaseException:
        if ctx.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()
        raise
    shutdown_distributed(ctx)
    return result
