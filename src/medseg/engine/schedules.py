"""Learning-rate schedules: the ``schedule`` config section and a registry of *factor functions*.

A factor function maps the optimiser step to a multiplier of each parameter group's initial rate, for
``torch.optim.lr_scheduler.LambdaLR``. New schedules register with :func:`register_schedule` and become
valid values of ``schedule.name``. The default is nnU-Net's poly decay with power 0.9 (Isensee et al.,
Nature Methods 2021).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medseg.config_types import ConfigError, bounded, did_you_mean
from medseg.registries import Registry

__all__ = ["SCHEDULES", "BudgetClock", "LrFactor", "Schedule", "ScheduleBuilder", "ScheduleConfig",
           "lr_factor_function", "on_budget", "register_schedule", "schedule_names"]


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, a factor of each group's initial rate per optimiser step (see
    :func:`lr_factor_function`): ``poly`` ``(1 - t/T)^power`` (nnU-Net, power 0.9), ``cosine`` down to
    ``min_lr_factor``, ``step`` (times ``gamma`` every ``step_size`` epochs), ``multistep`` (times
    ``gamma`` at each of the ``milestones``, epochs of the run, see :func:`_multistep`), ``constant``,
    ``triangular`` (M2SNet's rise and fall, see :func:`_triangular` for its options), or any
    registered name (``options`` for its settings). A linear warm-up from ``warmup_start_factor`` over
    ``warmup_epochs`` or ``warmup_iterations`` comes first."""

    name: str = "poly"
    power: float = bounded(0.9, gt=0)
    min_lr_factor: float = bounded(0.0, ge=0, le=1)
    step_size: float = bounded(30.0, gt=0)
    gamma: float = bounded(0.1, gt=0)
    milestones: list[float] | None = bounded(None, gt=0)
    warmup_epochs: float = bounded(0.0, ge=0)
    warmup_iterations: int = bounded(0, ge=0)
    warmup_start_factor: float = bounded(0.1, ge=0, le=1)
    options: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        _check_name(self.name, key)
        if self.warmup_epochs > 0 and self.warmup_iterations > 0:
            raise ConfigError(f"{key}: give warmup_epochs or warmup_iterations, not both")
        if self.milestones is not None and self.name != "multistep":
            raise ConfigError(f"{key}.milestones: only the multistep schedule uses milestones ({key}.name is "
                              f"{self.name!r})")
        SCHEDULES.get(self.name).builder(self, 100, 10)  # builders check their options (naming the key)


LrFactor = Callable[[int], float]
"""Learning-rate multiplier at optimiser step ``t`` (0-based), for ``LambdaLR``."""
ScheduleBuilder = Callable[[ScheduleConfig, int, int], LrFactor]
"""``builder(config, total_steps, steps_per_epoch)`` -> the schedule's factor after warm-up."""


@dataclass(frozen=True)
class Schedule:
    """A registered schedule: its builder, and whether it counts the run's steps from the start."""

    builder: ScheduleBuilder
    from_start: bool = False


SCHEDULES: Registry[Schedule] = Registry("schedule", error=ConfigError)
"""The schedules by name (``schedule.name``)."""


def register_schedule(name: str, *, from_start: bool = False) -> Callable[[ScheduleBuilder], ScheduleBuilder]:
    """Register a schedule builder under ``name`` (a valid ``schedule.name`` from then on).

    By default the builder's factor covers the steps after the warm-up (its step 0 is the first step after
    it, its ``total_steps`` the rest of the run). With ``from_start`` it gets the run's own steps and total
    (for schedules whose settings name points of the run, such as milestones); the warm-up then overlays
    its start."""

    def decorate(builder: ScheduleBuilder) -> ScheduleBuilder:
        SCHEDULES.add(name, Schedule(builder, from_start))
        return builder

    return decorate


def schedule_names() -> list[str]:
    """The registered schedule names, sorted."""
    return SCHEDULES.names()


def _check_name(name: str, key: str) -> None:
    names = schedule_names()
    if name not in names:
        raise ConfigError(f"{key}.name: {name!r} is not one of {', '.join(names)}{did_you_mean(name, names)}")


def _progress(step: int, total: int) -> float:
    return min(max(step, 0), total) / max(total, 1)


@register_schedule("constant")
def _constant(config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> LrFactor:
    return lambda step: 1.0


@register_schedule("poly")
def _poly(config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> LrFactor:
    """nnU-Net's ``PolyLRScheduler``: ``(1 - t / T) ** power``."""
    return lambda step: (1.0 - _progress(step, total_steps)) ** config.power


@register_schedule("cosine")
def _cosine(config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> LrFactor:
    """Cosine annealing (Loshchilov & Hutter, SGDR, ICLR 2017) from 1 to ``min_lr_factor``."""
    low = config.min_lr_factor
    return lambda step: low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, total_steps)))


@register_schedule("step")
def _step(config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> LrFactor:
    """Multiply by ``gamma`` every ``step_size`` epochs (``StepLR``)."""
    every = max(1, round(config.step_size * steps_per_epoch))
    return lambda step: config.gamma ** (max(step, 0) // every)


@register_schedule("multistep", from_start=True)
def _multistep(config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> LrFactor:
    """Multiply by ``gamma`` (0.1 by default) at each of ``milestones``, as PyTorch's ``MultiStepLR`` in
    its usual once-per-epoch use: the milestones are *epochs* (not optimiser steps), counted from the start
    of the run, warm-up included (as timm and Detectron2 count them), and may be fractional; milestone
    ``m`` takes effect from step ``round(m * steps_per_epoch)``, so ``[30, 60]`` gives 1 in epochs 1-30,
    ``gamma`` in 31-60 and ``gamma**2`` after. A milestone inside the warm-up applies once it ends."""
    milestones = config.milestones
    if not milestones:
        raise ConfigError("schedule.milestones: the multistep schedule needs a list of epochs, e.g. [30, 60]")
    if any(b <= a for a, b in zip(milestones, milestones[1:], strict=False)):
        raise ConfigError(f"schedule.milestones: must increase strictly, got {list(milestones)}")
    starts = [round(m * steps_per_epoch) for m in milestones]
    return lambda step: config.gamma ** bisect.bisect_right(starts, step)


TRIANGULAR_OPTIONS = ("base_factor", "per_epoch", "ratio", "annealing_decay")


def _option(config: ScheduleConfig, name: str, default: float, low: float, high: float) -> float:
    value = config.options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"schedule.options.{name}: expected a number in [{low}, {high}], got {value!r}")
    return float(value)


@register_schedule("triangular")
def _triangular(config: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> LrFactor:
    """The triangular schedule of the official M2SNet ``train.py`` (Zhao et al. 2023): over ``N`` units
    (epochs with ``per_epoch``, the default as there, else optimiser steps) unit ``u`` gets
    ``b + (1 - b)(1 - |2(u + 1)/(N + 1) - 1|)``, rising linearly to 1 at mid-run and falling back, never
    exactly 0 (``b = base_factor``, 0 there; e.g. 50 epochs: 2/51 in the first and last epoch).

    Options (``schedule.options``): ``base_factor`` (0), ``per_epoch`` (true), ``ratio`` (1): the triangle
    spans that fraction of the units, the rest anneals linearly from ``base_factor`` down to
    ``base_factor * annealing_decay`` (0.01) in the last unit, as in the ``get_triangle_lr`` of
    GCPANet/F3Net-style training scripts (whose triangle spans the whole run and is cut at ``ratio``; ours
    is complete, so the rate does not jump down from the peak). That code also cycles SGD momentum
    inversely (0.95 -> 0.85 -> 0.95); the official M2SNet keeps momentum 0.9 and so do we (``LambdaLR``
    drives learning rates only).
    """
    unknown = sorted(set(config.options) - set(TRIANGULAR_OPTIONS))
    if unknown:
        raise ConfigError(f"schedule.options.{unknown[0]}: unknown option of the triangular schedule; "
                          f"valid: {', '.join(TRIANGULAR_OPTIONS)}")
    base = _option(config, "base_factor", 0.0, 0.0, 1.0)
    ratio = _option(config, "ratio", 1.0, 0.0, 1.0)
    decay = _option(config, "annealing_decay", 0.01, 0.0, 1.0)
    per_epoch = config.options.get("per_epoch", True)
    if not isinstance(per_epoch, bool):
        raise ConfigError(f"schedule.options.per_epoch: expected true or false, got {per_epoch!r}")
    every = max(steps_per_epoch, 1) if per_epoch else 1
    units = max(math.ceil(total_steps / every), 1)
    first = max(round(units * ratio), 1)

    def factor(step: int) -> float:
        unit = min(max(step, 0) // every, units - 1)
        if unit < first:
            return base + (1.0 - base) * (1.0 - abs(2.0 * (unit + 1) / (first + 1) - 1.0))
        # linear from base (at the triangle's end) to base * annealing_decay (after the last unit)
        progress = (unit - first + 1) / (units - first)
        return base * (1.0 - (1.0 - decay) * progress)

    return factor


def lr_factor_function(config: ScheduleConfig, total_steps: int, steps_per_epoch: int = 1) -> LrFactor:
    """The learning-rate factor per optimiser step: linear warm-up from ``warmup_start_factor`` to 1, then
    the named schedule over the remaining ``total_steps`` (over all of them for a schedule registered
    ``from_start``, e.g. ``multistep``). Use with ``LambdaLR(optimizer, factor)``."""
    _check_name(config.name, "schedule")
    schedule = SCHEDULES.get(config.name)
    warmup = config.warmup_iterations or round(config.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, max(total_steps - 1, 0))
    offset = 0 if schedule.from_start else warmup
    main = schedule.builder(config, max(total_steps - offset, 1), steps_per_epoch)
    start = config.warmup_start_factor

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * step / warmup
        return float(main(step - offset))

    return factor


# ------------------------------------------------------------------------------------------ time budgets


class BudgetClock:
    """The share of a wall-clock training budget (``train.max_minutes``) used so far.

    :meth:`tick` reads the clock (the trainer calls it once per optimiser step, and under DDP passes the
    mean over ranks through ``reduce`` so that every rank sees the same value); :attr:`used` holds the
    seconds of the last tick, including ``used`` seconds of an earlier, resumed part of the run.
    """

    now = staticmethod(time.monotonic)
    """The clock read (replaceable in tests)."""

    def __init__(self, seconds: float, used: float = 0.0) -> None:
        if seconds <= 0:
            raise ValueError(f"the time budget must be positive, got {seconds} s")
        self.seconds = float(seconds)
        self.restart(used)

    def restart(self, used: float = 0.0) -> None:
        """Count from now on, ``used`` seconds already spent (a resumed run)."""
        self.used = float(used)
        self._origin = self.now() - self.used

    def tick(self, reduce: Callable[[float], float] | None = None) -> float:
        """Read the clock; returns the seconds used."""
        used = self.now() - self._origin
        self.used = reduce(used) if reduce is not None else used
        return self.used

    def fraction(self) -> float:
        """The used share of the budget at the last tick, in [0, 1]."""
        return min(self.used / self.seconds, 1.0)

    def exhausted(self, reserve: float = 0.0) -> bool:
        """Whether the budget, less ``reserve`` seconds (e.g. the coming validation), was spent at the last
        tick."""
        return self.used + reserve >= self.seconds


def on_budget(factor: LrFactor, total_steps: int, clock: BudgetClock) -> LrFactor:
    """``factor`` run on whichever of the step plan and the time budget ends first: step ``t`` gets the
    factor of step ``max(t, round(share of the budget used * total_steps))``, so a run stopped by its time
    budget ends its schedule (a poly decay reaches 0) when the budget runs out instead of being cut at a
    high rate."""
    return lambda step: factor(max(step, round(clock.fraction() * total_steps)))
