"""``medseg plan``: a training preset from a data set fingerprint, following nnU-Net's rules (Isensee et al.,
"nnU-Net", Nature Methods 2021; its ``ExperimentPlanner``) where the pipeline spec's "Planning" section is
not more specific. Not to be confused with :mod:`medseg.engine.plan`, which builds a run from a config.

Rules (spec "Planning"):

- **2D, 2.5D or 3D** (``--mode auto``): 2D images give a 2D U-Net; volumes a 3D U-Net. Volumes whose
  median spacing is strongly anisotropic (max / min above
  :data:`~medseg.data.preprocess.ANISOTROPY_THRESHOLD`, 3, on one coarsest axis) get the 3D U-Net with
  anisotropic pooling (nnU-Net's answer to thick slices), unless that low-resolution axis has too few
  voxels at the target spacing to be pooled more than once (median size along it below
  ``2 *`` :data:`MIN_POOL_SIZE`, 16): those get 2.5D (:mod:`medseg.data.slices`), a 2D U-Net on the
  ``2k + 1`` neighbouring slices (k = :data:`SLICE_NEIGHBOURS`, 2) cut across that axis (``data.slice_axis``
  axial / coronal / sagittal for array axis 0 / 1 / 2), as channels (image channels x (2k + 1)). A 2.5D plan
  takes pooling, patch, memory and step times from the in-plane axes (their median shape and spacing) and
  the 2D model, its validation estimate from whole slices (a volume is its slices along the axis);
  ``data.spacing`` stays 3D. ``--mode 2d|2.5d|3d`` forces the choice: ``2.5d`` and ``3d`` need volumes;
  ``2d`` on volumes is 2.5D with k = 0 (slice by slice, nnU-Net's "2d" configuration). A forced 2.5D on
  volumes without an anisotropic axis cuts across the coarsest axis (axial on a tie).
- **Target spacing**: the median spacing per axis; on the anisotropic (low-resolution) axis the 10th
  percentile of that axis' spacings (not below the finest other axis), so that few cases are upsampled
  much along it. No resampling (``spacing: null``) when every case already has the target spacing.
- **Normalisation** by modality (:meth:`DatasetFingerprint.modality`): CT: ``ct`` (clip to the foreground's
  0.5 / 99.5 percentiles, z-score with the foreground mean / std, computed from the training cases by
  ``medseg train``); MR and other: per-case ``zscore``; 2D photos: ``rgb`` (/255).
- **Pooling** per axis (nnU-Net's ``get_pool_and_conv_props``): at each down-sampling step an axis is
  pooled while its feature-map size is at least 8 and its spacing at most twice the finest current
  spacing; at most 6 (2D) / 5 (3D) steps. The patch is a multiple of each axis' pooling product.
- **Patch and batch size** under ``--memory-gb``: the patch starts at the median shape (after resampling)
  and, while a batch of 2 does not fit, loses one multiple along the axis largest relative to the median
  shape (nnU-Net); the batch is then the largest that fits, at least 2, covering at most 5% of the data
  set's voxels (nnU-Net) and leaving at least 250 steps in ``--minutes`` (a slow device gets batch 2).
  Memory is the model's own: the peak of a real training forward + backward
  (:func:`medseg.engine.benchmark.measure_peak_memory`) at two small patches, extrapolated linearly in
  batch x voxels, plus the weights and the SGD momentum.
- **Model, loss, schedule**: U-Net (32 features doubled per level, capped at 512 / 320, instance norm,
  deep supervision), Dice + CE, SGD Nesterov 0.99 with poly decay (nnU-Net's defaults).
- **Epochs** fitting ``--minutes``: a few real training steps of the planned model and patch are timed on
  this machine (at a batch of 2, scaled to the planned batch); validations (a sliding-window estimate) get
  at most 20% of the time; 250 batches per epoch (fewer when that leaves under 10 epochs);
  ``train.max_minutes`` as a stop.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medseg.data.fingerprint import DatasetFingerprint, dataset_fingerprint
from medseg.data.preprocess import ANISOTROPY_THRESHOLD, lowres_axis
from medseg.data.slices import AXIS_NAMES, resolve_slice_axes
from medseg.engine.benchmark import measure_peak_memory
from medseg.engine.config import RunConfig, config_from_dict
from medseg.engine.device import resolve_device
from medseg.engine.plan import build_optimizer
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.losses import build_loss
from medseg.models.registry import create_model
from medseg.models.unet import axis_multiples

MIN_POOL_SIZE = 8
"""An axis is pooled only while its feature-map size is at least this (so it stays >= 4 after)."""
POOL_SPACING_RATIO = 2.0
"""An axis is pooled only while its spacing is at most this times the finest current spacing."""
MAX_POOL_STEPS = {2: 6, 3: 5}
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
MIN_BATCH = 2
MAX_DATASET_FRACTION = 0.05
"""A batch covers at most this fraction of the data set's voxels (nnU-Net)."""
ITERATIONS_PER_EPOCH = 250
MIN_EPOCHS = 10
MIN_STEPS = ITERATIONS_PER_EPOCH
"""The batch grows beyond :data:`MIN_BATCH` only while the time budget leaves this many steps."""
VALIDATION_SHARE = 0.2
"""Validations take at most this share of the time budget (at least one, after the last epoch)."""
INSTANCE_VALUES = 10
"""2D label maps with more distinct values than this in one case are read as instance label maps."""
TIMED_STEPS = 2
SLICE_NEIGHBOURS = 2
"""k of a 2.5D plan: the 2 neighbouring slices on each side of the centre slice (5 input slices)."""
MODES: tuple[str, ...] = ("auto", "2d", "2.5d", "3d")


# ------------------------------------------------------------------------------------------ rules


def target_spacing(fingerprint: DatasetFingerprint) -> tuple[np.ndarray, int | None]:
    """The target spacing and the anisotropic axis (None if none): the median, except the 10th percentile
    along a low-resolution axis (nnU-Net), not below the finest other axis."""
    spacings = fingerprint.spacings
    target = np.median(spacings, axis=0)
    axis = lowres_axis(target, ANISOTROPY_THRESHOLD)
    if axis is not None:
        others = max(s for a, s in enumerate(target) if a != axis)
        target[axis] = max(float(np.percentile(spacings[:, axis], 10)), others)
    return target, axis


@dataclass
class Layout:
    """What the planned model sees: ``dims`` 2 or 3; for 2.5D the array ``axis`` cut across and ``k``."""

    dims: int
    reason: str
    axis: int | None = None
    k: int | None = None

    def plane(self, values: np.ndarray) -> np.ndarray:
        """``values`` (per axis, last dimension) without the slice axis (2.5D), else unchanged."""
        return values if self.axis is None else np.delete(values, self.axis, axis=-1)

    @property
    def slice_axis(self) -> str | None:
        return None if self.axis is None else {a: n for n, a in AXIS_NAMES.items()}[self.axis]


def choose_layout(fingerprint: DatasetFingerprint, spacing: np.ndarray, aniso: int | None,
                  mode: str = "auto") -> Layout:
    """2D, 2.5D or 3D for ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise MedsegError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if fingerprint.spatial_dims == 2:
        if mode in ("2.5d", "3d"):
            raise MedsegError(f"{fingerprint.root}: --mode {mode} needs 3D volumes, but these are 2D images "
                              "(use --mode 2d or auto)")
        return Layout(2, "2D images")
    if mode == "3d":
        return Layout(3, "volumes, 3D as asked (--mode 3d)")
    if mode in ("2d", "2.5d"):
        axis = aniso if aniso is not None else resolve_slice_axes("auto", spacing)[0]
        k = 0 if mode == "2d" else SLICE_NEIGHBOURS
        kind = "2.5D" if k else "2D slice by slice"
        return Layout(2, f"{kind} as asked (--mode {mode}): a 2D model on {2 * k + 1} slice(s) across axis "
                         f"{axis} (" + ("its anisotropic axis)" if aniso is not None else "the coarsest)"),
                      axis, k)
    if aniso is None:
        return Layout(3, "volumes (no strongly anisotropic axis)")
    size = float(np.median(fingerprint.shapes[:, aniso] * fingerprint.spacings[:, aniso] / spacing[aniso]))
    if size < 2 * MIN_POOL_SIZE:
        reason = (f"2.5D: axis {aniso} is anisotropic and has a median {size:.3g} voxels at the target "
                  f"spacing, too few to pool more than once (< {2 * MIN_POOL_SIZE}); a 2D model on "
                  f"{2 * SLICE_NEIGHBOURS + 1} neighbouring slices across it")
        return Layout(2, reason, aniso, SLICE_NEIGHBOURS)
    return Layout(3, f"volumes; axis {aniso} is anisotropic with a median {size:.3g} voxels at the target "
                     f"spacing (>= {2 * MIN_POOL_SIZE}, enough to pool more than once): nnU-Net's 3D with "
                     "per-axis pooling rather than 2.5D")


def pool_kernels(patch: Sequence[float], spacing: Sequence[float], max_steps: int) -> list[tuple[int, ...]]:
    """Per down-sampling step a factor 1 or 2 per axis (see the module docstring)."""
    size = np.asarray(patch, dtype=float)
    current = np.asarray(spacing, dtype=float).copy()
    kernels: list[tuple[int, ...]] = []
    for _ in range(max_steps):
        pooled = (size >= MIN_POOL_SIZE) & (current <= POOL_SPACING_RATIO * current.min())
        if not pooled.any():
            break
        kernels.append(tuple(2 if p else 1 for p in pooled))
        size = np.where(pooled, size / 2, size)
        current = np.where(pooled, current * 2, current)
    return kernels


def level_features(depth: int, dims: int) -> list[int]:
    return [min(BASE_FEATURES * 2**level, MAX_FEATURES[dims]) for level in range(depth + 1)]


@dataclass
class LabelPlan:
    label_mode: str
    num_classes: int | None
    class_names: list[str] | None
    binarize: bool
    reason: str


def plan_labels(fingerprint: DatasetFingerprint) -> LabelPlan:
    """Binary for {0, 1}; binary of the foreground for 2D instance label maps; multiclass otherwise."""
    values = fingerprint.label_values
    fractions = ", ".join(f"{v}: {f:.4f}" for v, f in list(fingerprint.class_fractions.items())[:6])
    most = max(len(c.label_counts) for c in fingerprint.cases)
    if fingerprint.class_names and len(fingerprint.class_names) > 2:
        names = [fingerprint.class_names.get(k, str(k)) for k in range(max(fingerprint.class_names) + 1)]
        return LabelPlan("multiclass", len(names), names, False,
                         f"dataset.json declares {len(names)} labels; voxel fractions {fractions}")
    if set(values) <= {0, 1}:
        return LabelPlan("binary", None, None, False, f"labels 0/1 only; voxel fractions {fractions}")
    if fingerprint.spatial_dims == 2 and most > INSTANCE_VALUES:
        return LabelPlan("binary", None, None, True,
                         f"up to {most} label values in one image: instance label maps, trained as their "
                         "foreground")
    return LabelPlan("multiclass", max(values) + 1, None, False,
                     f"label values {values[:12]}; voxel fractions {fractions}")


NORMALIZATION = {"CT": "ct", "MR": "zscore", "other": "zscore", "photo": "rgb"}


def normalization_reason(modality: str, fingerprint: DatasetFingerprint) -> str:
    stats = fingerprint.foreground_intensity()
    shown = "" if stats is None else (
        f" (fingerprint: foreground mean {_numbers(stats['mean'])}, std {_numbers(stats['std'])}, "
        f"p0.5 {_numbers(stats['p00_5'])}, p99.5 {_numbers(stats['p99_5'])})")
    if modality == "CT":
        return ("CT: clip to the foreground 0.5/99.5 percentiles, z-score with the foreground mean/std "
                "(recomputed from the training cases by medseg train)" + shown)
    if modality == "photo":
        return "2D 8-bit images (photos/micrographs): scaled to [0, 1] (/255)" + shown
    return f"{modality}: per-case z-score (intensities have no fixed unit)" + shown


def _numbers(values: Sequence[float]) -> str:
    return "/".join(f"{v:.4g}" for v in values)


# ------------------------------------------------------------------------------------------ memory


@dataclass
class MemoryModel:
    """Training memory of one network: ``fixed + per_voxel * batch * voxels`` bytes (measured)."""

    fixed: float
    per_voxel: float

    def bytes(self, patch: Sequence[int], batch: int) -> float:
        return self.fixed + self.per_voxel * batch * math.prod(patch)

    def max_batch(self, patch: Sequence[int], budget: float) -> int:
        return int((budget - self.fixed) // (self.per_voxel * math.prod(patch)))


def _loss_fn(config: RunConfig) -> torch.nn.Module:
    return build_loss(config.loss.build_spec(config.data.label_mode, "dice_ce"))


def _random_batch(config: RunConfig, channels: int, patch: Sequence[int], batch: int, classes: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, channels, *patch, device=device)
    high = 2 if config.data.label_mode == "binary" else classes
    return x, torch.randint(0, high, (batch, 1, *patch), device=device)


def _build(config: RunConfig, channels: int, classes: int, dims: int, device: torch.device
           ) -> torch.nn.Module:
    return create_model(config.model.name, in_channels=channels, num_classes=classes, spatial_dims=dims,
                        **config.model.options).to(device).train()


def measure_memory(config: RunConfig, channels: int, classes: int, multiples: Sequence[int],
                   device: torch.device) -> MemoryModel:
    """Peak bytes of a training forward + backward at patches of 2x and 4x the axis multiples (batch 1),
    fitted linearly; plus the weights and the SGD momentum buffer."""
    dims = len(multiples)
    torch.manual_seed(0)
    model = _build(config, channels, classes, dims, device)
    loss_fn = _loss_fn(config).to(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    points = []
    for factor in (2, 4):
        patch = [m * factor for m in multiples]

        def step(patch: list[int] = patch) -> None:
            x, y = _random_batch(config, channels, patch, 1, classes, device)
            loss_fn(model(x), y).backward()

        model.zero_grad(set_to_none=True)
        points.append((math.prod(patch), measure_peak_memory(step, device)))
    (v1, p1), (v2, p2) = points
    per_voxel = max((p2 - p1) / (v2 - v1), 1.0)
    return MemoryModel(fixed=max(p1 - per_voxel * v1, 0.0) + 2 * weights, per_voxel=per_voxel)


def time_steps(config: RunConfig, channels: int, classes: int, device: torch.device,
               steps: int = TIMED_STEPS) -> float:
    """Seconds of a real training step (forward, Dice + CE, backward, SGD) of the planned model, patch and
    batch: the fastest of ``steps`` after one untimed step (the least disturbed by other jobs)."""
    torch.manual_seed(0)
    patch = list(config.data.patch_size or ())
    model = _build(config, channels, classes, len(patch), device)
    loss_fn = _loss_fn(config).to(device)
    optimizer = build_optimizer(config, model)
    x, y = _random_batch(config, channels, patch, config.data.batch_size, classes, device)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


# ------------------------------------------------------------------------------------------ the plan


@dataclass
class AutoPlan:
    """The planned preset: ``sections`` of ``(key, value, reason)`` rows, in file order."""

    name: str
    header: list[str]
    sections: dict[str, list[tuple[str, Any, str]]] = field(default_factory=dict)

    def value(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        for name, value, _ in self.sections[section]:
            if name == key:
                return value
        raise KeyError(dotted)

    def set(self, dotted: str, value: Any, reason: str) -> None:
        section, key = dotted.split(".", 1)
        rows = self.sections.setdefault(section, [])
        for i, (name, _, _) in enumerate(rows):
            if name == key:
                rows[i] = (key, value, reason)
                return
        rows.append((key, value, reason))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "run_dir": f"runs/{self.name}"}
        for section, rows in self.sections.items():
            data[section] = {key: value for key, value, _ in rows}
        return data

    def config(self) -> RunConfig:
        """The preset through the config schema (validated)."""
        return config_from_dict(json.loads(json.dumps(self.to_dict())))

    def yaml_text(self) -> str:
        """The preset as YAML with a comment line above every value saying why it was chosen."""
        lines = [*(f"# {line}" for line in self.header), f"name: {_yaml(self.name)}",
                 f"run_dir: {_yaml('runs/' + self.name)}"]
        for section, rows in self.sections.items():
            lines += ["", f"{section}:"]
            for key, value, reason in rows:
                lines += [f"  # {reason}", f"  {key}: {_yaml(value)}"]
        return "\n".join(lines) + "\n"


_PLAIN = re.compile(r"[A-Za-z_./][A-Za-z0-9_./+-]*")


def _yaml(value: Any) -> str:
    """A value as flow-style YAML that ``yaml.safe_load`` reads back as the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.6g}"
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        return mantissa + (f"e{exponent}" if exponent else "")
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and yaml.safe_load(value) == value  # not read as a number / bool
        return value if plain else json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml(str(k))}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    raise MedsegError(f"cannot write {value!r} ({type(value).__name__}) into a preset")


def _data_root(root: str) -> str:
    """The data folder relative to the working directory (how ``data.root`` is resolved) when possible."""
    try:
        return os.path.relpath(root)
    except ValueError:  # another drive
        return str(root)


def _fit_patch(shapes: np.ndarray, spacing: np.ndarray, budget: float, measure: Any
               ) -> tuple[list[int], list[tuple[int, ...]], MemoryModel, bool]:
    """The largest patch (from the median of the resampled ``shapes`` down; in-plane ones for 2.5D) whose
    batch of 2 fits the budget, and whether it had to shrink."""
    dims = shapes.shape[1]
    median_shape = np.median(shapes, axis=0)
    patch = [max(int(round(s)), 1) for s in median_shape]
    shrunk = False
    while True:
        kernels = pool_kernels(patch, spacing, MAX_POOL_STEPS[dims])
        multiples = axis_multiples(kernels, dims)
        patch = [-(-p // m) * m for p, m in zip(patch, multiples, strict=True)]
        memory = measure(kernels, multiples) if kernels else None
        if memory is not None and memory.bytes(patch, MIN_BATCH) <= budget:
            return patch, kernels, memory, shrunk
        shrinkable = [a for a in range(dims) if patch[a] > multiples[a]]
        if memory is None or not shrinkable:
            raise MedsegError(f"--memory-gb {budget / 2**30:g}: too small; the patch shrank to {patch} with "
                              f"batch {MIN_BATCH} and still did not fit")
        axis = max(shrinkable, key=lambda a: patch[a] / median_shape[a])
        patch[axis] -= multiples[axis]
        shrunk = True


def plan_dataset(fingerprint: DatasetFingerprint, memory_gb: float = 8.0, minutes: float = 60.0,
                 device: str = "auto", command: str | None = None, name: str | None = None,
                 mode: str = "auto") -> AutoPlan:
    """Plan a training preset for ``fingerprint`` (see the module docstring for the rules); ``mode``
    ``auto``, ``2d``, ``2.5d`` or ``3d``."""
    if memory_gb <= 0 or minutes <= 0:
        raise MedsegError(f"--memory-gb and --minutes must be positive, got {memory_gb:g} and {minutes:g}")
    spacing, aniso = target_spacing(fingerprint)
    layout = choose_layout(fingerprint, spacing, aniso, mode)
    dev = resolve_device(device, key="--device")
    dims, channels, n = fingerprint.spatial_dims, fingerprint.channels, len(fingerprint.cases)
    in_channels = channels * (2 * layout.k + 1) if layout.k is not None else channels
    name = name or "plan-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(fingerprint.root).name).strip("-")
    modality = fingerprint.modality()
    labels = plan_labels(fingerprint)
    median = fingerprint.median_spacing
    resample = not np.allclose(fingerprint.spacings, spacing, rtol=1e-3)
    budget = memory_gb * 2**30
    classes = labels.num_classes or 1
    plan = AutoPlan(name, [
        f"Planned by `{command or 'medseg plan'}` on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; edit freely.",
        f"Fingerprint: {n} cases, {dims}D, {channels} channel(s), modality {modality}; median spacing "
        f"{_numbers(median)}, median shape {_numbers(np.median(fingerprint.shapes, axis=0))}.",
    ])

    resampled = fingerprint.shapes * fingerprint.spacings / spacing  # [N, D] shapes at the target spacing
    shapes = layout.plane(resampled)  # in-plane for 2.5D
    plane_spacing = layout.plane(spacing)
    if not pool_kernels(np.median(shapes, axis=0), plane_spacing, 1):
        raise MedsegError(f"{fingerprint.root}: images of median shape "
                          f"{_numbers(np.median(fingerprint.shapes, axis=0))} are too small to pool once (an "
                          f"axis needs >= {MIN_POOL_SIZE} voxels" + (" in-plane)" if layout.axis is not None
                                                                     else ")"))
    measured: dict[tuple[tuple[int, ...], ...], MemoryModel] = {}

    def measure_for(kernels: list[tuple[int, ...]], multiples: list[int]) -> MemoryModel:
        if tuple(kernels) not in measured:
            _model_section(plan, layout, kernels, aniso, in_channels)
            plan.set("data.patch_size", list(multiples), "provisional")  # replaced once the patch is fitted
            measured[tuple(kernels)] = measure_memory(plan.config(), in_channels, classes, multiples, dev)
        return measured[tuple(kernels)]

    _data_section(plan, fingerprint, labels, modality, spacing, aniso, resample, layout)
    patch, kernels, memory, shrunk = _fit_patch(shapes, plane_spacing, budget, measure_for)
    _model_section(plan, layout, kernels, aniso, in_channels)
    total_voxels = float(resampled.prod(axis=1).sum())
    cap = max(MIN_BATCH, int(MAX_DATASET_FRACTION * total_voxels // math.prod(patch)))
    where = "median shape at the target spacing" if layout.axis is None else \
        f"median in-plane shape at the target spacing (axes other than {layout.axis})"
    plan.set("data.patch_size", patch,
             f"{where}, in multiples of {axis_multiples(kernels, len(patch))} (the "
             f"pooling), " + (f"shrunk until a batch of {MIN_BATCH} fits {memory_gb:g} GB" if shrunk else
                              f"a batch of {MIN_BATCH} fits {memory_gb:g} GB"))
    plan.set("data.batch_size", MIN_BATCH, "timed at the smallest batch")
    _optim_sections(plan)
    per_sample = time_steps(plan.config(), in_channels, classes, dev) / MIN_BATCH
    in_time = int(minutes * 60 * (1 - VALIDATION_SHARE) / (per_sample * MIN_STEPS))
    limits = {"memory": memory.max_batch(patch, budget), f"{MAX_DATASET_FRACTION:.0%} of the voxels": cap,
              "time": in_time}
    bound = min(limits, key=limits.__getitem__)
    batch = max(MIN_BATCH, limits[bound])
    plan.set("data.batch_size", batch,
             f"the largest batch (at least {MIN_BATCH}) within {memory_gb:g} GB (memory {limits['memory']}: "
             f"{memory.per_voxel / 1024:.2f} KiB per voxel from measured training peaks, "
             f"{memory.bytes(patch, batch) / 2**30:.2f} GiB at this batch), covering at most "
             f"{MAX_DATASET_FRACTION:.0%} of the data set's voxels ({cap}; nnU-Net), leaving {MIN_STEPS} "
             f"steps in --minutes (time {in_time}); bound by {bound}")
    seconds = per_sample * batch
    val_cases = max(n // 5, 1) if n >= 5 else max(round(0.2 * n), 1)
    _train_section(plan, seconds, minutes, dev,
                   validation_seconds(fingerprint, spacing, patch, batch, seconds, val_cases, layout.axis))
    if layout.axis is None:
        plan.set("inference.mode", "sliding_window",
                 "Gaussian-weighted sliding windows of the training patch")
        plan.set("inference.step", 0.5, "windows overlap by half a patch (nnU-Net)")
    else:
        plan.set("inference.mode", "auto", "2.5D: the 2D model on whole slices, the volume rebuilt slice by "
                 "slice")
    plan.set("inference.mirror", True, "mirroring test-time augmentation over every axis (nnU-Net)")
    plan.config()  # validated
    return plan


def _model_options(kernels: Sequence[tuple[int, ...]], dims: int) -> dict[str, Any]:
    options: dict[str, Any] = {"features": level_features(max(len(kernels), 1), dims), "norm": "instance",
                               "deep_supervision": len(kernels) >= 2}
    if any(1 in k for k in kernels):
        options["pool_kernels"] = [list(k) for k in kernels]
    return options


def _data_section(plan: AutoPlan, fingerprint: DatasetFingerprint, labels: LabelPlan, modality: str,
                  spacing: np.ndarray, aniso: int | None, resample: bool, layout: Layout) -> None:
    n = len(fingerprint.cases)
    plan.set("data.root", _data_root(fingerprint.root), "the data set, relative to the working directory")
    plan.set("data.layout", fingerprint.layout, "the layout found in the folder")
    rule = "median spacing" if aniso is None else (
        f"median spacing; axis {aniso} is anisotropic (ratio > {ANISOTROPY_THRESHOLD:g}): its 10th "
        "percentile")
    plan.set("data.spacing", [round(float(s), 5) for s in spacing] if resample else None,
             f"target spacing = {rule}" if resample else
             f"every case already has the target spacing {_numbers(spacing)} ({rule}): no resampling")
    if layout.k is not None:
        plan.set("data.slices", layout.k, f"{layout.reason}: k = {layout.k}, {2 * layout.k + 1} slice(s) as "
                 "input channels")
        plan.set("data.slice_axis", layout.slice_axis, f"slices cut across array axis {layout.axis}")
    plan.set("data.crop_nonzero", fingerprint.spatial_dims == 3,
             "crop volumes to their non-zero box (nnU-Net)" if fingerprint.spatial_dims == 3 else
             "2D images are not cropped")
    plan.set("data.normalization", NORMALIZATION[modality], normalization_reason(modality, fingerprint))
    plan.set("data.label_mode", labels.label_mode, labels.reason)
    if labels.num_classes is not None:
        plan.set("data.num_classes", labels.num_classes, "output channels, the background included")
    if labels.class_names is not None:
        plan.set("data.class_names", labels.class_names, "names from dataset.json")
    if labels.binarize:
        plan.set("data.binarize_labels", True, "every nonzero label value (instance id) becomes foreground")
    if n >= 5:
        plan.set("data.fold", 0, "fold 0 of a seeded 5-fold cross-validation (nnU-Net)")
        plan.set("data.folds", 5, "5 folds (nnU-Net)")
    else:
        plan.set("data.val_fraction", 0.2, f"only {n} cases: a seeded 20% validation split")
    plan.set("data.foreground_fraction", 0.33, "a third of each batch centred on foreground (nnU-Net)")


def _model_section(plan: AutoPlan, layout: Layout, kernels: Sequence[tuple[int, ...]], aniso: int | None,
                   in_channels: int) -> None:
    dims = layout.dims
    kind = "2D U-Net" if dims == 2 else "3D U-Net" + (
        f" with anisotropic pooling (axis {aniso} is coarse)" if aniso is not None else "")
    if layout.k is not None:
        kind += f" on {2 * layout.k + 1} neighbouring slice(s) (2.5D)"
    plan.set("model.name", "unet", f"{kind} (nnU-Net's architecture family)")
    plan.set("model.spatial_dims", dims, layout.reason)
    if layout.k is not None:
        plan.set("model.in_channels", in_channels,
                 f"{in_channels // (2 * layout.k + 1)} image channel(s) x {2 * layout.k + 1} slice(s)")
    steps = "; ".join(str(list(k)) for k in kernels) or "-"
    plan.set("model.options", _model_options(kernels, dims),
             f"{len(kernels)} down-sampling steps, per axis ({steps}): an axis is pooled while its size is "
             f">= {MIN_POOL_SIZE} and its spacing <= {POOL_SPACING_RATIO:g}x the finest; {BASE_FEATURES} "
             f"features doubled per level up to {MAX_FEATURES[dims]}, instance norm")
    plan.set("loss.name", "dice_ce", "Dice + cross-entropy (BCE for binary), nnU-Net's loss")
    supervised = len(kernels) >= 2
    plan.set("loss.deep_supervision", supervised, "deep supervision on the decoder levels (nnU-Net)"
             if supervised else "no deep supervision: fewer than 2 down-sampling steps")


def _optim_sections(plan: AutoPlan) -> None:
    plan.set("optim.name", "sgd", "SGD with Nesterov momentum (nnU-Net)")
    plan.set("optim.lr", 0.01, "initial learning rate (nnU-Net)")
    plan.set("optim.momentum", 0.99, "momentum (nnU-Net)")
    plan.set("optim.nesterov", True, "Nesterov momentum")
    plan.set("optim.weight_decay", 3e-5, "weight decay (nnU-Net)")
    plan.set("schedule.name", "poly", "poly decay lr * (1 - t/T)^0.9 (the spec's default)")
    plan.set("schedule.power", 0.9, "poly power")


def validation_seconds(fingerprint: DatasetFingerprint, spacing: np.ndarray, patch: Sequence[int],
                       batch: int, step_seconds: float, val_cases: int, axis: int | None = None) -> float:
    """Estimated seconds of one validation: sliding windows (step 0.5) over the median resampled shape of
    ``val_cases`` cases, a window costing a third of a training sample (forward only). 2.5D (``axis``): a
    volume is its slices along ``axis``, each predicted whole (a patch's cost per patch of its area)."""
    shape = np.median(fingerprint.shapes * fingerprint.spacings / spacing, axis=0)
    if axis is not None:
        windows = shape[axis] * max(float(np.prod(np.delete(shape, axis))) / math.prod(patch), 1.0)
    else:
        windows = math.prod(1 + math.ceil(max(n - p, 0) / (0.5 * p))
                            for n, p in zip(shape, patch, strict=True))
    return val_cases * windows * step_seconds / batch / 3


def _train_section(plan: AutoPlan, seconds: float, minutes: float, device: torch.device,
                   validation: float) -> None:
    budget = minutes * 60
    validations = max(min(MIN_EPOCHS, int(VALIDATION_SHARE * budget / max(validation, 1e-9))), 1)
    steps = max(int((budget - validations * validation) / seconds), 1)
    per_epoch = ITERATIONS_PER_EPOCH if steps >= ITERATIONS_PER_EPOCH * MIN_EPOCHS else \
        max(steps // MIN_EPOCHS, 1)
    epochs = max(steps // per_epoch, 1)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    where = f"{device.type}, {torch.get_num_threads()} torch thread(s){load}"
    short = "; the validation alone exceeds the budget: give more --minutes or train smaller images " \
        "(data.resize)" if validation >= budget else ""
    plan.set("train.epochs", epochs,
             f"{steps} steps fit {minutes:g} min at {seconds:.3f} s per training step (timed at batch "
             f"{MIN_BATCH}, scaled to the batch; {where}), "
             f"after {validations} validations of about {validation:.0f} s; data loading not included{short}")
    plan.set("train.iterations_per_epoch", per_epoch,
             f"{ITERATIONS_PER_EPOCH} batches per epoch (nnU-Net), fewer to keep about {MIN_EPOCHS} epochs"
             if per_epoch < ITERATIONS_PER_EPOCH else f"{ITERATIONS_PER_EPOCH} batches per epoch (nnU-Net)")
    plan.set("train.max_minutes", float(minutes),
             "the time budget: the schedule follows it, training stops when it is spent")
    plan.set("train.val_every", max(epochs // validations, 1),
             f"about {validations} validations (at most {VALIDATION_SHARE:.0%} of the time; the last epoch "
             "always validates)")
    plan.set("train.grad_clip", 12.0, "gradient norm clipping at 12 (nnU-Net)")
    plan.set("train.seed", 0, "one seed for data order, augmentation and initialisation")


def write_plan(plan: AutoPlan, path: str | Path) -> Path:
    """Write the preset atomically after checking that it reads back (``yaml.safe_load``) as planned."""
    text = plan.yaml_text()
    if yaml.safe_load(text) != json.loads(json.dumps(plan.to_dict())):
        raise MedsegError(f"{path}: the planned YAML does not read back as planned (please report)")
    write_text_atomically(path, text)
    return Path(path)


def plan_path(data: str | Path, *, memory_gb: float = 8.0, minutes: float = 60.0,
              out: str | Path | None = None,
              jobs: int = 0, cache: str | Path | None = None, device: str = "auto", progress: bool = True,
              channels_suffix: bool | None = None, argv: Sequence[str] = (), mode: str = "auto") -> Path:
    """``medseg plan``: fingerprint ``data`` (cached), plan (``mode``: auto, 2d, 2.5d or 3d) and write the
    preset; returns its path."""
    data = Path(data)
    if not data.exists():
        raise MedsegError(f"{data}: no such data set folder or list")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", data.resolve().name).strip("-") or "data"
    cache = Path(cache) if cache is not None else Path("runs/fingerprints") / f"{stem}.json"
    fingerprint = dataset_fingerprint(data, cache=cache, jobs=jobs, progress=progress,
                                      channels_suffix=channels_suffix)
    out = Path(out) if out is not None else Path(f"plan-{stem}.yaml")
    plan = plan_dataset(fingerprint, memory_gb, minutes, device, shlex.join(["medseg", *argv]), name=out.stem,
                        mode=mode)  # the preset is named as its file (as every preset in configs/)
    return write_plan(plan, out)
