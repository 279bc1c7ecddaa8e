"""Planning a training run from its config (``medseg train``): everything the training loop
(:class:`~medseg.engine.trainer.Trainer`) needs, built as objects before the first batch; no loop here.

- data (:func:`prepare_data`): the data set (the synthetic one written first where the config asks), the
  train/validation split (``splits.json``), the preprocessing (:func:`build_preprocessor`) and its cache;
- batches: the training loader, the per-epoch augmenter (:func:`epoch_augmenter`) and the optional
  multi-scale resizing (:class:`MultiScale`);
- the model (:func:`build_model`): created from the registry, with ``model.encoder_weights`` and
  ``model.init_from`` loaded on a new run (not on resume: the checkpoint has them), and the weight average
  (:class:`ModelEMA`) with ``train.ema_decay``;
- the loss, the optimiser (:func:`build_optimizer`) and the learning-rate schedule.

:func:`plan_training` puts the batches, model, loss, optimiser and schedule together as a
:class:`TrainingPlan`, in a fixed order, so the same seed gives the same initial weights.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
from medseg.data.io import read_mask
from medseg.data.loader import SeededLoader
from medseg.data.slices import resolve_slice_axes
from medseg.encoders import Encoder, load_encoder_weights
from medseg.engine.cascade import CascadeError
from medseg.engine.cascade_cache import STAGE1_FOLDER, prepare_coarse_cases
from medseg.engine.checkpoint import load_initial_weights, unwrap_model
from medseg.engine.config import RunConfig, lr_factor_function
from medseg.engine.distributed import DistributedContext, barrier, wrap_model
from medseg.engine.rundir import RunPaths
from medseg.engine.schedules import BudgetClock, on_budget
from medseg.errors import MedsegError
from medseg.layers import resize_labels, resize_to
from medseg.losses import build_loss
from medseg.models.pointrend import wrap_pointrend
from medseg.models.registry import create_model, model_info

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PATCH_BATCHES", "DataPlan", "ModelEMA", "MultiScale", "TrainingPlan", "build_model",
           "build_optimizer", "build_preprocessor", "epoch_augmenter", "is_instance_model",
           "load_encoder_file", "load_init_file", "plan_training", "prepare_data", "seed_everything"]

DEFAULT_PATCH_BATCHES = 250
"""Batches per epoch in patch mode when ``train.iterations_per_epoch`` is null (nnU-Net's 250)."""


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------ data


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
    slices: int | None = None
    slice_axes: tuple[int, ...] = ()
    """2.5D (``data.slices``): k and the resolved array axes; ``in_channels`` and ``spatial_dims`` are then
    the 2D model's (image channels x (2k + 1), 2), the cached volumes stay 3D."""
    coarse_channels: int = 0
    """A cascade's stage 2: the last input channels holding stage 1's coarse segmentation."""
    cascade: dict[str, Any] | None = None
    """A cascade's stage 2: the record its checkpoints embed (``{"stage1": ..., "source": ...}``)."""


def _ensure_synthetic(config: RunConfig, ctx: DistributedContext) -> None:
    synthetic = config.data.synthetic
    if synthetic is None or config.data.root is None or not ctx.is_main:
        return
    from medseg.data import write_lesion_dataset, write_nuclei_dataset, write_polyp_dataset

    if synthetic.kind == "polyp":
        write_polyp_dataset(config.data.root, synthetic.n_cases, tuple(synthetic.size), seed=synthetic.seed)
    elif synthetic.kind == "nuclei":
        write_nuclei_dataset(config.data.root, synthetic.n_cases, tuple(synthetic.size), seed=synthetic.seed)
    else:
        write_lesion_dataset(config.data.root, synthetic.n_cases, tuple(synthetic.size), seed=synthetic.seed)


def _probe(dataset: Dataset) -> tuple[int, int]:
    """Channels and spatial dimensionality of the data set, from its first case."""
    image = read_case(dataset.cases[0], with_label=False)[0]
    return int(image.shape[0]), image.ndim - 1


def build_preprocessor(config: RunConfig, dataset: Dataset, channels: int, dims: int,
                       train_ids: Sequence[str], coarse_channels: int = 0) -> Preprocessor:
    """The preprocessing of the run; ``normalization: auto`` is ``rgb`` for 3-channel 2D images, ``ct``
    when the data set names a CT channel (statistics from the training cases, nnU-Net) and ``zscore``.
    ``coarse_channels``: a cascade's stage-1 channels after the image's (not normalised)."""
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
                image, label, _ = read_case(dataset.case(case_id))
                yield image, label

        stats = compute_ct_stats(pairs(), seed=config.train.seed)
    return Preprocessor(normalization=scheme, norm_stats=stats, target_spacing=data.spacing,
                        crop_nonzero=data.crop_nonzero, resize_shape=data.resize,
                        label_mapping=data.label_mapping, binarize=data.binarize_labels,
                        coarse_channels=coarse_channels)


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
                 progress: bool, device: torch.device | None = None) -> DataPlan:
    """Load the data set, split it (written to ``splits.json``), preprocess it into the cache (rank 0;
    the other ranks wait and read the manifest). A cascade's stage 2 (``data.cascade_from``) first has
    stage 1 predict its cases on ``device`` (:mod:`medseg.engine.cascade_cache`)."""
    data = config.data
    if data.root is None:
        raise MedsegError("data.root: no data set given (a folder or a CSV/JSON list)")
    _ensure_synthetic(config, ctx)
    barrier(ctx)
    dataset = load_dataset(data.root, channels_suffix=data.channels_suffix,
                           allow_outside_root=data.allow_outside_root, layout=data.layout)
    if not dataset.cases:
        raise MedsegError(f"data.root: no labelled cases found in {data.root}")
    train_ids, val_ids = _split(config, dataset, paths, resume)
    channels, dims = _probe(dataset)
    model_channels = channels if data.slices is None else channels * (2 * data.slices + 1)
    if data.cascade_from is None and config.model.in_channels not in (None, model_channels):
        raise MedsegError(f"model.in_channels: {config.model.in_channels} but the images have {channels}"
                          + ("" if data.slices is None else f" channels x {2 * data.slices + 1} slices"))
    if data.slices is not None and dims != 3:
        raise MedsegError(f"data.slices: 2.5D input cuts 3D volumes into slices, the images are {dims}D")
    if data.slices is None and config.spatial_dims not in (None, dims):
        raise MedsegError(f"model.spatial_dims: the run is {config.spatial_dims}D but the images are {dims}D")
    cache_root = Path(data.cache_dir) if data.cache_dir is not None else paths.root / "cache"
    cases = [dataset.case(c) for c in train_ids + val_ids]
    names = data.class_names
    if names is None and dataset.class_names:
        names = [dataset.class_names[k] for k in sorted(dataset.class_names) if k != 0]
    coarse = None
    if data.cascade_from is not None:
        coarse = prepare_coarse_cases(
            data.cascade_from, cases, cache_root / STAGE1_FOLDER, label_mode=data.label_mode,
            image_channels=channels, spatial_dims=dims, class_names=names,
            num_classes=data.output_channels(None),
            device=device or torch.device("cpu"), progress=progress, predict=ctx.is_main)
        cases = coarse.cases
    coarse_channels = coarse.coarse_channels if coarse is not None else 0
    if coarse_channels and config.model.in_channels not in (None, channels + coarse_channels):
        raise MedsegError(f"model.in_channels: {config.model.in_channels} but the images have {channels}"
                          f" and stage 1 adds {coarse_channels}")
    preprocessor = build_preprocessor(config, dataset, channels, dims, train_ids, coarse_channels)
    readers: dict[str, Any] = {} if coarse is None else {"reader": coarse.reader, "mask_reader": read_mask}
    if ctx.is_main:
        write_splits(paths.splits, [{"train": train_ids, "val": val_ids}])
        PreprocessedCache(cache_root, preprocessor, seed=config.train.seed, **readers).prepare(
            cases, progress=progress, num_workers=data.num_workers)
    barrier(ctx)
    cache = PreprocessedCache(cache_root, preprocessor, seed=config.train.seed, **readers)
    num_classes = _num_classes(config, dataset, cache)
    if data.label_mode == "multiclass":
        _check_label_values(dataset, cache, train_ids + val_ids, num_classes)
    cascade = None
    if coarse is not None:
        if coarse.num_classes != num_classes:
            raise CascadeError(f"data.cascade_from: stage-1 checkpoint {coarse.source} has "
                               f"{coarse.num_classes} classes, this run {num_classes}")
        cascade = {"stage1": coarse.record, "source": str(coarse.source)}
    if data.slices is None:
        return DataPlan(cache, train_ids, val_ids, channels + coarse_channels, num_classes, dims, names,
                        coarse_channels=coarse_channels, cascade=cascade)
    axes = _slice_axes(config, cache, train_ids)
    logger.info("2.5D input: %d slices across array axis %s as channels of a 2D model", 2 * data.slices + 1,
                "/".join(map(str, axes)))
    return DataPlan(cache, train_ids, val_ids, model_channels, num_classes, 2, names, data.slices, axes)


def _slice_axes(config: RunConfig, cache: PreprocessedCache, train_ids: Sequence[str]) -> tuple[int, ...]:
    """``data.slice_axis`` as array axes; ``auto`` from the median spacing of the preprocessed training
    volumes (:func:`~medseg.data.slices.resolve_slice_axes`)."""
    spacings = [cache.info(case_id).get("spacing") for case_id in train_ids]
    known = [s for s in spacings if s is not None and len(s) == 3]
    spacing = np.median(np.asarray(known, float), axis=0) if known else None
    return resolve_slice_axes(config.data.slice_axis, spacing)


# ------------------------------------------------------------------------------------------ batches


def epoch_augmenter(config: RunConfig, spatial_dims: int, rank: int, epoch: int) -> BatchAugmenter:
    """The batch augmenter of one epoch, seeded by ``(train.seed, rank, epoch)`` (so a resumed run draws
    the same transforms)."""
    seed = int(np.random.SeedSequence([config.train.seed, rank, epoch, 0xA116]).generate_state(1)[0])
    return BatchAugmenter(config.augmentation, spatial_dims, seed=seed)


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


# ------------------------------------------------------------------------------------------ model & optim


def is_instance_model(name: str) -> bool:
    """Whether the registered model ``name`` is an instance model (``task="instance"``: Mask R-CNN), called
    as ``model(images, targets)`` and returning its losses in training."""
    return model_info(name)["task"] == "instance"


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


def pointrend_options(config: RunConfig) -> dict[str, Any] | None:
    """The options of the PointRend wrap (``model.pointrend``), as stored in the checkpoint, or None."""
    if config.model.pointrend is None:
        return None
    return config.model.pointrend.model_options(config.data.label_mode)


def build_model(config: RunConfig, data: DataPlan, device: torch.device,
                resume: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The model on ``device`` and its options; on a new run with ``model.encoder_weights`` /
    ``model.init_from`` loaded (on resume the checkpoint has them), in channels-last memory if asked."""
    options = _model_options(config, data.spatial_dims)
    model = create_model(config.model.name, in_channels=data.in_channels, num_classes=data.num_classes,
                         spatial_dims=data.spatial_dims, **options).to(device)
    if config.model.encoder_weights is not None and not resume:
        load_encoder_file(model, config.model.encoder_weights)
    pointrend = pointrend_options(config)  # wraps the network after its encoder weights, before init_from
    if pointrend is not None:
        model = wrap_pointrend(model, pointrend, num_classes=data.num_classes).to(device)
    if config.model.init_from is not None and not resume:
        load_init_file(model, config.model.init_from, config.model.init_skip_mismatched)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last if data.spatial_dims == 2
                         else torch.channels_last_3d)
    return model, options


# ------------------------------------------------------------------------------------------ the plan


@dataclass
class TrainingPlan:
    """A run's parts before its first batch.

    ``model`` is the trained module, ``net`` what the batches go through (DDP-wrapped and compiled as the
    config says) and ``ema`` the weight average (or None). An epoch is ``batches_per_epoch`` batches; the run
    ends after ``total_batches`` batches, ``epochs`` epochs; the scheduler steps once per optimiser step.
    ``loss_fn`` is None for instance models (their forward returns their losses).
    """

    data: DataPlan
    options: dict[str, Any]
    model: nn.Module
    ema: ModelEMA | None
    net: nn.Module
    loss_fn: nn.Module | None
    multi_scale: MultiScale | None
    loader: SeededLoader
    batches_per_epoch: int
    total_batches: int
    epochs: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    clock: BudgetClock | None = None
    """The time budget (``train.max_minutes``) that the schedule follows, or None."""


def plan_training(config: RunConfig, data: DataPlan, ctx: DistributedContext, device: torch.device,
                  resume: bool = False) -> TrainingPlan:
    """Build the model, loss, batches, optimiser and schedule of a run on ``device`` (resolved by the
    caller), in a fixed order: the same seed gives the same initial weights."""
    train = config.train
    model, options = build_model(config, data, device, resume)
    ema = ModelEMA(model, train.ema_decay) if train.ema_decay is not None else None
    net = wrap_model(model, ctx, device)
    if train.compile:
        net = torch.compile(net)
    loss_fn = None
    if not is_instance_model(config.model.name):
        default_loss = model_info(config.model.name)["default_loss"]  # every registered model names one
        loss_spec = config.loss.build_spec(config.data.label_mode, default_loss)
        if config.model.pointrend is not None:  # the point loss on top of the loss of the coarse logits
            loss_spec["pointrend"] = {"weight": config.model.pointrend.point_loss_weight}
        loss_fn = build_loss(loss_spec).to(device)
    multi_scale = None
    if train.multi_scale is not None:
        multiple = getattr(model, "input_multiple", None) or model_info(config.model.name)["input_multiple"]
        multi_scale = MultiScale(train.multi_scale, multiple or 1, train.seed)
    loader = build_train_loader(
        data.cache, data.train_ids, config.data.patch_size, config.data.batch_size,
        config.data.foreground_fraction, train.seed, config.data.num_workers,
        batches_per_epoch=train.iterations_per_epoch or DEFAULT_PATCH_BATCHES, rank=ctx.rank,
        world_size=ctx.world_size, slices=data.slices, slice_axes=data.slice_axes or (0,))
    batches_per_epoch = len(loader)
    if config.data.patch_size is None and train.iterations_per_epoch is not None:
        # whole images: an epoch is one seeded pass, cut short to a (per-epoch random) subset
        batches_per_epoch = min(batches_per_epoch, train.iterations_per_epoch)
    total_batches = train.total_iterations(batches_per_epoch)
    # an optimiser step every grad_accumulation batches and at the end of every epoch
    per_epoch = math.ceil(batches_per_epoch / train.grad_accumulation)
    full, rest = divmod(total_batches, batches_per_epoch)
    steps = full * per_epoch + math.ceil(rest / train.grad_accumulation)
    optimizer = build_optimizer(config, model)
    factor = lr_factor_function(config.schedule, steps, per_epoch)
    clock = None
    if train.max_minutes is not None:  # the schedule ends when the steps or the minutes run out
        clock = BudgetClock(60.0 * train.max_minutes)
        factor = on_budget(factor, steps, clock)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return TrainingPlan(data=data, options=options, model=model, ema=ema, net=net, loss_fn=loss_fn,
                        multi_scale=multi_scale, loader=loader, batches_per_epoch=batches_per_epoch,
                        total_batches=total_batches, epochs=train.total_epochs(batches_per_epoch),
                        optimizer=optimizer, scheduler=scheduler, clock=clock)
