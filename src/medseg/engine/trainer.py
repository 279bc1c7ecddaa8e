"""The training loop (``medseg train``), after nnU-Net's trainer (Isensee et al., Nature Methods 2021).

The run is planned in :mod:`medseg.engine.plan` (data, model, loss, optimiser, schedule) and validated by
:mod:`medseg.engine.validation`; this module is the loop. The device is resolved once, in :func:`train`.

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
trained weights for resuming) and ``train.max_minutes`` (a time budget: the learning-rate schedule follows
whichever of the step plan and the budget ends first, :func:`medseg.engine.schedules.on_budget`, and the
epoch in which the budget runs out is cut at an optimiser step, leaving the last validation's duration for
the final validation and checkpoint).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from medseg.data.instances import instance_targets_from_batch
from medseg.engine.adversarial import build_adversary
from medseg.engine.cascade import augment_with_coarse
from medseg.engine.checkpoint import (
    epoch_checkpoint_path,
    load_checkpoint,
    load_model_weights,
    make_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
    unwrap_model,
)
from medseg.engine.config import RunConfig, config_to_dict, save_config
from medseg.engine.device import resolve_device
from medseg.engine.distributed import (
    DistributedContext,
    abort_distributed,
    all_reduce_sum,
    barrier,
    init_distributed,
    rank_device,
    shutdown_distributed,
)
from medseg.engine.plan import (
    DEFAULT_PATCH_BATCHES,
    DataPlan,
    ModelEMA,
    MultiScale,
    build_optimizer,
    build_preprocessor,
    epoch_augmenter,
    is_instance_model,
    load_encoder_file,
    load_init_file,
    plan_training,
    pointrend_options,
    prepare_data,
    seed_everything,
)
from medseg.engine.plots import plot_progress
from medseg.engine.rundir import RunPaths, discard_new_run, prepare_run_dir
from medseg.engine.validation import BestMetric, InstanceValidator, Validator
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically

logger = logging.getLogger(__name__)

# the planning names are re-exported: they were importable from here before the split
__all__ = ["DEFAULT_PATCH_BATCHES", "DataPlan", "ModelEMA", "MultiScale", "TrainResult", "Trainer",
           "build_optimizer", "build_preprocessor", "load_encoder_file", "load_init_file", "prepare_data",
           "seed_everything", "train"]


@dataclass
class TrainResult:
    """What a run produced: its folder, checkpoints, best validation score and per-epoch history."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    best_score: float | None
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: none on the CPU; ``auto`` is bf16 where the GPU has it, else fp16."""
    if device.type != "cuda" or setting == "none":
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16



def _targets(label: torch.Tensor, label_mode: str) -> torch.Tensor:
    """Loss targets from cached labels: integer class maps (multiclass), float masks otherwise."""
    return label.long() if label_mode == "multiclass" else label.float()


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
        parts = plan_training(config, plan, ctx, device, resume=resume)
        self.options, self.model, self.ema, self.net = parts.options, parts.model, parts.ema, parts.net
        self.loss_fn, self.multi_scale, self.loader = parts.loss_fn, parts.multi_scale, parts.loader
        self.batches_per_epoch, self.total_batches = parts.batches_per_epoch, parts.total_batches
        self.epochs, self.optimizer, self.scheduler = parts.epochs, parts.optimizer, parts.scheduler
        self.clock = parts.clock
        self.validation_seconds = 0.0  # the last validation's duration, kept free at the end of a budget
        self.amp_dtype = _amp_dtype(train.amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.instance = is_instance_model(config.model.name)
        self.validator = (InstanceValidator if self.instance else Validator)(config, plan, device, ctx)
        self.adversary = build_adversary(config, spatial_dims=plan.spatial_dims, in_channels=plan.in_channels,
                                         num_classes=plan.num_classes, device=device, ctx=ctx)
        if self.instance and self.adversary is not None:
            raise MedsegError("train.adversarial: the adversarial mode trains semantic models, not "
                              f"{config.model.name!r}")
        self.best = BestMetric.of(config)
        self.epoch = self.global_step = self.batches_done = 0
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
        self.best.score, self.best.stale = state.best_score, state.epochs_without_improvement
        self.batches_done = int(state.extra.get("batches_done", 0))
        if self.clock is not None:
            self.clock.restart(float(state.extra.get("budget_seconds_used", 0.0)))
        self.history = [dict(row) for row in state.extra.get("history", [])]
        if self.adversary is not None:
            self.adversary.load_state_dict(state.extra.get("adversarial"), self.paths.last)
        logger.info("resuming %s after epoch %d (step %d)", self.paths.root, self.epoch, self.global_step)

    def checkpoint(self, with_training: bool) -> dict[str, Any]:
        inference = config_to_dict(self.config.inference)
        if self.plan.slices is not None:  # 2.5D: whole slices, see medseg.data.slices
            inference.update(slices=self.plan.slices, slice_axes=list(self.plan.slice_axes))
        elif inference["patch_size"] is None and self.config.data.patch_size is not None:
            inference["patch_size"] = list(self.config.data.patch_size)
        training = None
        if with_training:
            extra: dict[str, Any] = {"history": self.history, "batches_done": self.batches_done}
            if self.clock is not None:
                extra["budget_seconds_used"] = self.clock.used
            if self.ema is not None:
                extra["model_state"] = {k: v.detach().cpu().clone()
                                        for k, v in self.model.state_dict().items()}
            if self.adversary is not None:
                extra["adversarial"] = self.adversary.state_dict()
            training = training_state(
                epoch=self.epoch, global_step=self.global_step, optimizer=self.optimizer,
                scheduler=self.scheduler, scaler=self.scaler, best_score=self.best.score,
                epochs_without_improvement=self.best.stale, extra=extra)
        saved = self.ema.module if self.ema is not None else self.model
        ckpt = make_checkpoint(
            saved, name=self.config.model.name, in_channels=self.plan.in_channels,
            num_classes=self.plan.num_classes, spatial_dims=self.plan.spatial_dims, options=self.options,
            pointrend=pointrend_options(self.config), label_mode=self.config.data.label_mode,
            class_names=self.plan.class_names,
            preprocessing=self.plan.cache.preprocessor.to_dict(), inference=inference,
            config=config_to_dict(self.config), training=training)
        if self.plan.cascade is not None:  # stage 2 of a cascade: predict runs the embedded stage 1 first
            ckpt["cascade"] = self.plan.cascade
        return ckpt

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
        if self.clock is not None:
            self.clock.tick(self._mean_over_ranks if self.ctx.enabled else None)
        self.scheduler.step()
        self.global_step += 1

    def _mean_over_ranks(self, value: float) -> float:
        summed = all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=self.device), self.ctx)
        return float(summed[0]) / self.ctx.world_size

    def out_of_time(self) -> bool:
        """Whether the time budget is spent, the last validation's duration kept free for the final one
        (the same answer on every DDP rank: the clock is their mean)."""
        return self.clock is not None and self.clock.exhausted(reserve=self.validation_seconds)

    def batch_loss(self, image: torch.Tensor, label: torch.Tensor, parts: dict[str, float]
                   ) -> tuple[torch.Tensor, Any]:
        """The training loss of a batch and the network's output: the loss function on the logits, or for an
        instance model (Mask R-CNN) the sum of the loss dict of ``net(images, targets)``, whose parts are
        added to ``parts`` (its output is then that dict)."""
        if not self.instance:
            output = self.net(image)
            return self.loss_fn(output, _targets(label, self.config.data.label_mode)), output
        targets = instance_targets_from_batch(label, self.config.data.min_instance_pixels)
        losses = self.net(list(image.unbind(0)), targets)
        for name, value in losses.items():
            parts[name] = parts.get(name, 0.0) + float(value.detach())
        return torch.stack([v.float() for v in losses.values()]).sum(), losses

    def train_epoch(self) -> dict[str, float]:
        """One epoch of batches; returns the mean loss (over ranks), the mean of each part of an instance
        model's loss and the throughput."""
        config, train = self.config, self.config.train
        self.net.train()
        self.loader.set_epoch(self.epoch)
        augmenter = epoch_augmenter(config, self.plan.spatial_dims, self.ctx.rank, self.epoch)
        if self.multi_scale is not None:
            self.multi_scale.set_epoch(self.epoch)
        n_batches = min(self.batches_per_epoch, self.total_batches - self.batches_done)
        accumulation = train.grad_accumulation
        memory = torch.channels_last if self.plan.spatial_dims == 2 else torch.channels_last_3d
        total, samples, start = 0.0, 0, time.perf_counter()
        parts: dict[str, float] = {}
        bar = tqdm(total=n_batches, desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="batch",
                   disable=not self.progress, leave=False)
        done, step_now = 0, False
        for index, (image, label) in enumerate(self.loader):
            if index >= n_batches or (done > 0 and step_now and self.out_of_time()):
                break  # the epoch's batches are done, or the time budget ran out after an optimiser step
            image = image.to(self.device, non_blocking=True)
            label = label.to(self.device, non_blocking=True)
            if config.data.label_mode == "multilabel":
                label = label.bool()
            image, label = augment_with_coarse(augmenter, image, label, self.plan.coarse_channels)
            if self.multi_scale is not None:
                image, label = self.multi_scale(image, label)
            if train.channels_last:
                image = image.contiguous(memory_format=memory)
            step_now = (self.batches_done + 1) % accumulation == 0 or index == n_batches - 1
            sync = nullcontext() if step_now or not self.ctx.enabled else self.net.no_sync()
            with sync:
                with self._autocast():
                    loss, output = self.batch_loss(image, label, parts)
                objective = loss if self.adversary is None else \
                    self.adversary.objective(self.epoch, image, output, label, loss)
                if not torch.isfinite(objective):
                    raise MedsegError(f"training loss is {objective.item()} at epoch {self.epoch + 1}, batch "
                                      f"{index + 1} (lower optim.lr, or check the data)")
                scaled = objective / accumulation
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if step_now:
                self._optimizer_step()
            self.batches_done += 1
            done += 1
            total += loss.item()
            samples += image.shape[0]
            rate = samples * self.ctx.world_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{total / done:.4f}", samples_s=f"{rate:.1f}")
            bar.update()
        bar.close()
        elapsed = time.perf_counter() - start
        names = sorted(parts)
        mean = all_reduce_sum(torch.tensor([total, *(parts[k] for k in names), float(done)],
                                           dtype=torch.float64, device=self.device), self.ctx).cpu()
        row = {"train_loss": (mean[0] / mean[-1]).item()}
        row.update({name: (mean[1 + i] / mean[-1]).item() for i, name in enumerate(names)})
        if self.adversary is not None:
            row.update(self.adversary.epoch_log())
        return {**row, "samples_per_s": samples * self.ctx.world_size / max(elapsed, 1e-9)}

    def end_epoch(self, row: dict[str, Any]) -> bool:
        """Bookkeeping after an epoch: best score, checkpoints, logs and plots; True to stop early."""
        train = self.config.train
        improved = self.best.update(row)
        self.history.append(row)
        if self.ctx.is_main:
            if improved or (not self.paths.best.is_file() and self.best.score is None):
                save_checkpoint(self.paths.best, self.checkpoint(with_training=False))
            state = self.checkpoint(with_training=True)
            save_checkpoint(self.paths.last, state)
            if train.save_every is not None and self.epoch % train.save_every == 0:
                save_checkpoint(epoch_checkpoint_path(self.paths.root, self.epoch), state)
            _write_log(self.paths.log, self.history)
            plot_progress(self.history, self.paths.progress, [f"val_{m}" for m in train.val_metrics])
        patience = train.early_stopping_patience
        return patience is not None and self.best.stale >= patience

    def run(self, resume: bool) -> TrainResult:
        if resume:
            self.restore()
        writer = _open_tensorboard(self.paths) if self.ctx.is_main else None
        train = self.config.train
        if self.clock is not None and not resume:
            self.clock.restart()
        stopped = out_of_time = False
        while self.epoch < self.epochs and self.batches_done < self.total_batches and not stopped:
            start = time.perf_counter()
            lr = self.optimizer.param_groups[-1]["lr"]
            row: dict[str, Any] = {"epoch": self.epoch + 1, **self.train_epoch(), "lr": lr}
            out_of_time = self.out_of_time()
            last = self.epoch + 1 >= self.epochs or self.batches_done >= self.total_batches or out_of_time
            if (self.epoch + 1) % train.val_every == 0 or last:
                validation_start = time.perf_counter()
                row.update(self.validator(self.evaluated_model()))
                self.validation_seconds = time.perf_counter() - validation_start
            row["time_s"] = time.perf_counter() - start
            self.epoch += 1
            if self.clock is not None:  # the validation counts in the budget (and in last.pt's record)
                self.clock.tick(self._mean_over_ranks if self.ctx.enabled else None)
            stopped = self.end_epoch(row)
            out_of_time = self.out_of_time() and self.epoch < self.epochs
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
            logger.info("time budget of %.1f minutes reached in epoch %d of %d; keeping the best",
                        train.max_minutes, self.epoch, self.epochs)
        elif stopped:
            logger.info("early stopping after %d validations without improvement", self.best.stale)
        best = self.paths.best if self.paths.best.is_file() else None
        return TrainResult(run_dir=self.paths.root, best_checkpoint=best, last_checkpoint=self.paths.last,
                           best_score=self.best.score, epochs_run=self.epoch, history=list(self.history))


def _join(config: RunConfig) -> tuple[DistributedContext, torch.device]:
    """Resolve ``train.device`` (once) and join the ``torchrun`` process group for its kind (NCCL / Gloo).
    Under DDP a CUDA device the config does not number (``auto``, ``cuda``) is the rank's local GPU."""
    device = resolve_device(config.train.device, 0, key="train.device")
    ctx = init_distributed(device.type)
    return ctx, rank_device(device, ctx, str(config.train.device))


def train(config: RunConfig, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a model as ``config`` says, in ``config.run_dir`` (``runs/<name>``); see the module docstring.

    ``resume`` continues the run from its ``last.pt``. Under ``torchrun`` every rank calls this; the process
    group is joined here and left at the end. Bad settings and data raise :class:`MedsegError`.
    """
    ctx, device = _join(config)
    try:
        seed_everything(config.train.seed)
        paths = RunPaths.at(config.resolved_run_dir())
        created = not paths.root.exists()
        if ctx.is_main:
            prepare_run_dir(paths.root, resume=resume)
            save_config(config, paths.config)
        barrier(ctx)
        try:
            data = prepare_data(config, paths, ctx, resume, progress, device)
        except MedsegError:
            if ctx.is_main and not resume:  # bad data: leave no half-made run behind
                discard_new_run(paths, created)
            raise
        seed_everything(config.train.seed)  # the same model initialisation whatever the data step drew
        result = Trainer(config, ctx, paths, device, data, progress, resume=resume).run(resume)
    except BaseException:
        abort_distributed(ctx)
        raise
    shutdown_distributed(ctx)
    return result
