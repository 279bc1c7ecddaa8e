"""Typed run configuration: nested dataclasses read from YAML, with ``key.sub=value`` overrides.

One generic converter (:func:`dataclass_from_dict`) turns a mapping into any config dataclass by its type
hints (nested dataclasses, ``X | None``, lists, tuples, dicts, ``Literal`` choices, numeric bounds from
field metadata), so every section is declared once, as data. Errors are one-line
:class:`ConfigError` messages naming the full key (``train.epochs``), the expected type or the allowed
values, and for unknown keys the closest valid ones.

The defaults follow nnU-Net (Isensee et al., Nature Methods 2021): Dice + CE, SGD with Nesterov momentum
0.99, poly learning-rate decay with power 0.9, 250 iterations per epoch, gradient clipping at 12,
foreground oversampling of a third of the batch, sliding-window inference with step 0.5 and Gaussian
weighting (sigma = 1/8 of the patch) and mirroring test-time augmentation.

The learning-rate schedules live in a registry of *factor functions* (step -> multiplier of each
parameter group's initial rate, for ``torch.optim.lr_scheduler.LambdaLR``); new schedules register with
:func:`register_schedule` and become valid values of ``schedule.name``.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from medseg.data.augment import AugmentationConfig
from medseg.data.preprocess import parse_label_mapping
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically

__all__ = [
    "AugmentationConfig", "ConfigError", "DataConfig", "InferenceConfig", "LossConfig", "ModelConfig",
    "OptimConfig", "ParamGroupConfig", "PointRendConfig", "PostprocessConfig", "RunConfig", "ScheduleConfig",
    "SyntheticDataConfig", "TrainConfig", "VAL_METRICS", "apply_overrides", "config_from_dict",
    "config_to_dict", "dataclass_from_dict", "load_config", "lr_factor_function", "register_schedule",
    "save_config", "schedule_names",
]


class ConfigError(MedsegError):
    """A configuration that does not validate (the message names the key)."""


LabelMode = Literal["binary", "multiclass", "multilabel"]
Device = Literal["auto", "cpu", "cuda"]

VAL_METRICS = ("dice", "iou", "precision", "recall", "fpr", "fnr", "hd", "hd95", "asd", "assd", "nsd")
"""Validation metrics a run may compute (Dice by default; the distances are opt-in: they cost more)."""
LOWER_IS_BETTER = frozenset({"fpr", "fnr", "hd", "hd95", "asd", "assd"})
ValMetric = Literal[VAL_METRICS]  # type: ignore[valid-type]


def _bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
             lt: float | None = None) -> Any:
    """A dataclass field with numeric bounds (checked on every number of the value, None skipped)."""
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt}
    return field(default=default, metadata={"bounds": {k: v for k, v in bounds.items() if v is not None}})


# ------------------------------------------------------------------------------------------ sections


@dataclass
class SyntheticDataConfig:
    """Generate the synthetic data set of :mod:`medseg.data.synthetic` into ``data.root`` before training
    (skipped when it is already there): ``polyp`` (2D RGB PNG pairs) or ``lesion`` (3D NIfTI)."""

    kind: Literal["polyp", "lesion"] = "polyp"
    n_cases: int = _bounded(200, ge=1)
    size: tuple[int, ...] = _bounded((256, 256), ge=8)
    seed: int = 0


@dataclass
class DataConfig:
    """Where the cases are, how they are preprocessed, split, sampled and batched.

    ``root`` is a data set folder (paired ``images/``+``masks/`` or the Decathlon layout) or a CSV/JSON list
    of pairs; relative paths are relative to the working directory (a list's own paths to its folder, which
    they may not leave unless ``allow_outside_root``). ``patch_size`` None trains on whole
    images (equal shapes needed, e.g. after ``resize``). ``spacing`` (array order) resamples; None keeps
    the source grid. ``normalization`` ``auto`` picks ``rgb`` for 3-channel 2D images, ``ct`` for CT and
    ``zscore`` otherwise. ``num_classes`` None is derived (binary: 1; multiclass: the data set's labels with
    background; multilabel: the regions of ``label_mapping``). Validation cases: ``fold`` of ``folds``
    (k-fold cross-validation), else a seeded ``val_fraction``; ``splits_file`` reuses a written split.
    ``foreground_fraction`` of each batch is centred on foreground (nnU-Net's oversampling).
    ``channels_suffix``: whether ``{case}_{XXXX}`` files are channels of one case (nnU-Net's rule); None
    applies it in the Decathlon / nnU-Net layout only, so ``x_0000.jpg`` in a paired folder is one case.
    """

    root: str | None = None
    layout: Literal["auto", "paired", "decathlon", "list"] = "auto"
    channels_suffix: bool | None = None
    allow_outside_root: bool = False
    synthetic: SyntheticDataConfig | None = None
    patch_size: tuple[int, ...] | None = _bounded(None, ge=1)
    resize: tuple[int, ...] | None = _bounded(None, ge=1)
    spacing: tuple[float, ...] | None = _bounded(None, gt=0)
    crop_nonzero: bool = False
    normalization: Literal["auto", "ct", "zscore", "rgb", "none"] = "auto"
    label_mode: LabelMode = "binary"
    num_classes: int | None = _bounded(None, ge=1)
    class_names: list[str] | None = None
    label_mapping: dict[Any, Any] | None = None
    val_fraction: float = _bounded(0.2, gt=0, lt=1)
    fold: int | None = _bounded(None, ge=0)
    folds: int = _bounded(5, ge=2)
    splits_file: str | None = None
    cache_dir: str | None = None
    foreground_fraction: float = _bounded(0.33, ge=0, le=1)
    batch_size: int = _bounded(2, ge=1)
    num_workers: int = _bounded(2, ge=0)

    def check(self, key: str) -> None:
        if self.fold is not None and self.fold >= self.folds:
            raise ConfigError(f"{key}.fold: {self.fold} must be below {key}.folds ({self.folds})")
        if self.label_mode == "binary" and self.num_classes not in (None, 1):
            raise ConfigError(f"{key}.num_classes: binary segmentation has 1 output channel, got "
                              f"{self.num_classes} (use label_mode multiclass or multilabel)")
        if self.label_mapping is not None:
            try:
                kind, _ = parse_label_mapping(self.label_mapping)
            except MedsegError as exc:
                raise ConfigError(f"{key}.label_mapping: {exc}") from None
            if kind == "regions" and self.label_mode != "multilabel":
                raise ConfigError(f"{key}.label_mapping: regions need label_mode multilabel, got "
                                  f"{self.label_mode!r}")
        expected = self.output_channels(None)
        if self.label_mode != "binary" and None not in (self.class_names, expected) \
                and len(self.class_names) != expected:
            raise ConfigError(f"{key}.class_names: {len(self.class_names)} names for {expected} classes")

    def output_channels(self, dataset_classes: int | None) -> int | None:
        """Model output channels: binary 1; multiclass ``num_classes`` or the data set's label count
        (``dataset_classes``, background included); multilabel ``num_classes`` or the regions' count."""
        if self.label_mode == "binary":
            return 1
        if self.num_classes is not None:
            return self.num_classes
        if self.label_mode == "multilabel" and self.label_mapping is not None:
            return len(self.label_mapping)
        return dataset_classes


@dataclass
class PointRendConfig:
    """``model.pointrend``: wrap the model in PointRend (:class:`medseg.models.pointrend.PointRend`) and add
    its point loss (weight ``point_loss_weight``) to the training loss. ``points``: training points per
    sample (null: one per 256 input pixels/voxels, 2048 at 512x1024); ``oversample`` k and ``importance``
    beta of the training selection; ``subdivision_points`` refined per inference step, at most ``steps``
    steps (null: up to the input size); ``every_layer``: coarse logits into every point-head layer."""

    points: int | None = _bounded(None, ge=1)
    oversample: float = _bounded(3.0, ge=1)
    importance: float = _bounded(0.75, ge=0, le=1)
    subdivision_points: int = _bounded(8192, ge=1)
    steps: int | None = _bounded(None, ge=0)
    every_layer: bool = False
    point_loss_weight: float = _bounded(1.0, ge=0)

    def model_options(self, label_mode: str) -> dict[str, Any]:
        """The options of :func:`medseg.models.pointrend.wrap_pointrend` (stored in checkpoints)."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del options["point_loss_weight"]
        return {**options, "mode": label_mode}


@dataclass
class ModelConfig:
    """``medseg.create_model(name, in_channels, num_classes, spatial_dims, **options)``; None values are
    derived from the data (channels of the images, :meth:`DataConfig.output_channels`, image dims).
    ``encoder_weights`` is a weight file for models with a pretrained encoder. ``init_from`` fine-tunes:
    the whole model starts from a medseg checkpoint (``best.pt``) or a plain state-dict file
    (``.pt``/``.pth``/``.safetensors``), weights only (no optimiser or epoch state: that is resuming;
    not applied on resume); every key and shape must fit unless ``init_skip_mismatched``, which keeps the
    model's own initialisation for the tensors whose shapes differ (e.g. the head for another class
    count) and logs them. ``pointrend`` (a mapping, ``{}`` for the defaults) wraps the model in PointRend
    (:class:`PointRendConfig`)."""

    name: str = "unet"
    in_channels: int | None = _bounded(None, ge=1)
    num_classes: int | None = _bounded(None, ge=1)
    spatial_dims: Literal[2, 3] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    encoder_weights: str | None = None
    init_from: str | None = None
    init_skip_mismatched: bool = False
    pointrend: PointRendConfig | None = None

    def check(self, key: str) -> None:
        from medseg.registry import get_entry

        try:
            get_entry(self.name)
        except MedsegError as exc:
            raise ConfigError(f"{key}.name: {exc}") from None
        if self.init_from is not None and self.encoder_weights is not None:
            raise ConfigError(f"{key}.init_from: give init_from (the whole model) or encoder_weights (the "
                              "encoder), not both")
        if self.init_skip_mismatched and self.init_from is None:
            raise ConfigError(f"{key}.init_skip_mismatched: only applies with {key}.init_from (a weight "
                              "file)")


@dataclass
class LossConfig:
    """The training loss: one loss ``name`` with ``options``, or a weighted sum ``losses: [{name: dice,
    weight: 1, ...options}, {name: ce, weight: 1}]``; neither: the model's default loss (registry).
    ``deep_supervision`` weights the auxiliary outputs (nnU-Net: halving per level, normalised) unless
    ``deep_supervision_weights`` (main output first) are given; ``deep_supervision_resize`` ``target``
    down-samples the target to each auxiliary map (nnU-Net), ``output`` up-samples the maps (U-Net v2)."""

    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    losses: list[dict[str, Any]] | None = None
    deep_supervision: bool = False
    deep_supervision_weights: list[float] | None = _bounded(None, ge=0)
    deep_supervision_resize: Literal["target", "output"] = "target"

    def check(self, key: str) -> None:
        if self.losses is not None and (self.name is not None or self.options):
            raise ConfigError(f"{key}: give either name (with options) or losses (a list), not both")
        if self.losses is not None and not self.losses:
            raise ConfigError(f"{key}.losses: the list is empty")
        for i, term in enumerate(self.losses or ()):
            if not isinstance(term.get("name"), str):
                raise ConfigError(f"{key}.losses[{i}].name: expected a loss name, got {term.get('name')!r}")
            weight = term.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"{key}.losses[{i}].weight: expected a number >= 0, got {weight!r}")

    def terms(self, default_name: str) -> list[dict[str, Any]]:
        """The loss as a list of ``{name, weight, **options}`` terms (``default_name``: the model's)."""
        if self.losses is not None:
            return [{"weight": 1.0, **term} for term in self.losses]
        return [{"name": self.name or default_name, "weight": 1.0, **self.options}]

    def build_spec(self, label_mode: str, default_name: str) -> dict[str, Any]:
        """The mapping :func:`medseg.losses.build_loss` takes: the terms, the label mode and the deep
        supervision wrapper's settings."""
        supervision: bool | dict[str, Any] = self.deep_supervision
        if self.deep_supervision:
            supervision = {"resize": self.deep_supervision_resize}
            if self.deep_supervision_weights is not None:
                supervision["weights"] = list(self.deep_supervision_weights)
        return {"losses": self.terms(default_name), "mode": label_mode, "deep_supervision": supervision}


@dataclass
class ParamGroupConfig:
    """Parameters whose name starts with ``match`` (e.g. ``encoder.``) get their own learning rate and/or
    weight decay; the first matching group wins, the rest use the optimiser's values."""

    match: str
    lr: float | None = _bounded(None, ge=0)
    weight_decay: float | None = _bounded(None, ge=0)


@dataclass
class OptimConfig:
    """Optimiser: ``sgd`` (with ``momentum``, ``nesterov``), ``adam`` or ``adamw`` (``betas``, ``eps``).
    Defaults: nnU-Net's SGD (lr 0.01, momentum 0.99, Nesterov, weight decay 3e-5)."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = _bounded(0.01, gt=0)
    weight_decay: float = _bounded(3e-5, ge=0)
    momentum: float = _bounded(0.99, ge=0, lt=1)
    nesterov: bool = True
    betas: tuple[float, float] = _bounded((0.9, 0.999), ge=0, lt=1)
    eps: float = _bounded(1e-8, gt=0)
    param_groups: list[ParamGroupConfig] = field(default_factory=list)


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
    power: float = _bounded(0.9, gt=0)
    min_lr_factor: float = _bounded(0.0, ge=0, le=1)
    step_size: float = _bounded(30.0, gt=0)
    gamma: float = _bounded(0.1, gt=0)
    milestones: list[float] | None = _bounded(None, gt=0)
    warmup_epochs: float = _bounded(0.0, ge=0)
    warmup_iterations: int = _bounded(0, ge=0)
    warmup_start_factor: float = _bounded(0.1, ge=0, le=1)
    options: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        if self.name not in _SCHEDULES:
            raise ConfigError(f"{key}.name: {self.name!r} is not one of {', '.join(schedule_names())}"
                              f"{_did_you_mean(self.name, _SCHEDULES)}")
        if self.warmup_epochs > 0 and self.warmup_iterations > 0:
            raise ConfigError(f"{key}: give warmup_epochs or warmup_iterations, not both")
        if self.milestones is not None and self.name != "multistep":
            raise ConfigError(f"{key}.milestones: only the multistep schedule uses milestones ({key}.name is "
                              f"{self.name!r})")
        _SCHEDULES[self.name](self, 100, 10)  # builders check their options (ConfigError naming the key)


MIN_SCALE_SIZE = 8
MAX_SCALE_FACTOR = 8.0


@dataclass
class TrainConfig:
    """The training loop. ``iterations`` (total batches), when given, replaces ``epochs``;
    ``iterations_per_epoch`` None is one pass over the training cases in whole-image mode (a number caps
    the pass: each epoch then sees a different seeded subset) and 250 batches in patch mode. Validation every
    ``val_every`` epochs computes ``val_metrics``; ``best_metric`` selects ``best.pt``; early stopping
    after ``early_stopping_patience`` validations without improvement; ``max_minutes`` stops at the first
    epoch end past that training time (the best checkpoint so far stays). ``amp`` ``auto``: bf16 on a GPU
    that has it, else fp16 with a scaler on a GPU, none on the CPU. ``ema_decay``: keep an exponential
    moving average of the weights (validated and saved as the model). ``multi_scale``: per training batch
    a size drawn (seeded) from the list, after augmentation: integers are absolute sizes (every axis; M2SNet
    ``[224, 256, 288, 320, 352]``), numbers with a fractional part make it a list of factors of the batch's
    size (U-Net v2 ``[0.75, 1, 1.25]``); rounded to a multiple of the model's input multiple; images
    resized bi/trilinearly, labels by nearest neighbour. ``save_every``: besides ``last.pt`` and ``best.pt``
    keep a checkpoint every that many epochs (``epoch_0010.pt``: the content of ``last.pt`` then, training
    state included, so it can be copied to ``last.pt`` to resume from there)."""

    epochs: int = _bounded(100, ge=1)
    iterations: int | None = _bounded(None, ge=1)
    iterations_per_epoch: int | None = _bounded(250, ge=1)
    val_every: int = _bounded(1, ge=1)
    val_metrics: list[ValMetric] = field(default_factory=lambda: ["dice"])
    best_metric: ValMetric = "dice"
    early_stopping_patience: int | None = _bounded(None, ge=1)
    max_minutes: float | None = _bounded(None, gt=0)
    grad_clip: float | None = _bounded(12.0, gt=0)
    grad_accumulation: int = _bounded(1, ge=1)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    compile: bool = False
    seed: int = _bounded(0, ge=0)
    device: Device = "auto"
    ema_decay: float | None = _bounded(None, gt=0, lt=1)
    multi_scale: list[int] | list[float] | None = _bounded(None, gt=0)  # ints first: YAML ints stay ints
    save_every: int | None = _bounded(None, ge=1)

    def check(self, key: str) -> None:
        if self.multi_scale is not None:
            if not self.multi_scale:
                raise ConfigError(f"{key}.multi_scale: the list is empty (null switches multi-scale off)")
            if all(isinstance(v, int) for v in self.multi_scale):
                if min(self.multi_scale) < MIN_SCALE_SIZE:
                    raise ConfigError(f"{key}.multi_scale: {self.multi_scale} are read as absolute sizes "
                                      f"(all whole numbers) and must be >= {MIN_SCALE_SIZE}; for scale "
                                      "factors include a fractional one, e.g. [0.75, 1, 1.25]")
            elif max(self.multi_scale) > MAX_SCALE_FACTOR:
                raise ConfigError(f"{key}.multi_scale: scale factors must be <= {MAX_SCALE_FACTOR}, got "
                                  f"{self.multi_scale} (absolute sizes are whole numbers)")
        if not self.val_metrics:
            raise ConfigError(f"{key}.val_metrics: the list is empty (dice is the usual choice)")
        if self.best_metric not in self.val_metrics:
            raise ConfigError(f"{key}.best_metric: {self.best_metric!r} is not computed; add it to "
                              f"{key}.val_metrics ({', '.join(self.val_metrics)})")

    def total_epochs(self, batches_per_epoch: int) -> int:
        """Epochs to run: ``epochs``, or enough epochs for ``iterations`` batches."""
        if self.iterations is None:
            return self.epochs
        return math.ceil(self.iterations / batches_per_epoch)

    def total_iterations(self, batches_per_epoch: int) -> int:
        """Training batches of the whole run (``iterations`` or epochs x batches per epoch)."""
        return self.iterations if self.iterations is not None else self.epochs * batches_per_epoch


@dataclass
class PostprocessConfig:
    """After threshold / argmax (the fields of :class:`medseg.engine.postprocess.PostprocessOptions`):
    remove components below ``min_component_voxels`` / ``min_component_volume`` (0: keep all), keep the
    largest connected component, fill holes (in nD, or slice-wise along ``fill_holes_axis``);
    ``largest_component`` and ``fill_holes`` are true (every class) or a list of classes."""

    largest_component: bool | tuple[int, ...] = False
    fill_holes: bool | tuple[int, ...] = False
    fill_holes_axis: int | None = _bounded(None, ge=0, le=2)
    min_component_voxels: int = _bounded(0, ge=0)
    min_component_volume: float = _bounded(0.0, ge=0)
    connectivity: int = _bounded(1, ge=1, le=3)


@dataclass
class InferenceConfig:
    """Prediction: ``whole`` images, ``sliding_window`` over ``patch_size`` (None: the training patch)
    with ``step`` (fraction of the patch) and Gaussian importance weights (sigma ``sigma_scale`` x
    patch), ``window_batch_size`` windows per forward; mirroring TTA over ``mirror_axes`` (None: all);
    logits accumulated on the device or the CPU (``auto``: CPU when the volume does not fit); binary /
    multilabel ``threshold``; optional probability maps and 2D overlays."""

    mode: Literal["auto", "whole", "sliding_window"] = "auto"
    patch_size: tuple[int, ...] | None = _bounded(None, ge=1)
    step: float = _bounded(0.5, gt=0, le=1)
    sigma_scale: float = _bounded(0.125, gt=0)
    window_batch_size: int = _bounded(4, ge=1)
    mirror: bool = True
    mirror_axes: tuple[int, ...] | None = _bounded(None, ge=0, le=2)
    accumulate_on: Literal["auto", "device", "cpu"] = "auto"
    threshold: float = _bounded(0.5, ge=0, le=1)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    save_probabilities: bool = False
    overlays: bool = True
    device: Device = "auto"


@dataclass
class RunConfig:
    """A whole training run. ``run_dir`` None means ``runs/<name>``."""

    name: str = "run"
    run_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def check(self, key: str) -> None:
        dims = self.spatial_dims
        sizes = {"data.patch_size": self.data.patch_size, "data.resize": self.data.resize,
                 "data.spacing": self.data.spacing, "inference.patch_size": self.inference.patch_size}
        for name, value in sizes.items():
            if value is not None and len(value) not in (2, 3):
                raise ConfigError(f"{name}: {list(value)} must have 2 or 3 values (one per spatial axis)")
            if value is not None and dims is not None and len(value) != dims:
                raise ConfigError(f"{name}: {list(value)} has {len(value)} values but the run is {dims}D")
        channels = self.data.output_channels(None)
        if None not in (channels, self.model.num_classes) and channels != self.model.num_classes:
            raise ConfigError(f"model.num_classes: {self.model.num_classes} does not match the data's "
                              f"{channels} output channels ({self.data.label_mode})")
        if self.loss.deep_supervision and self.model.options.get("deep_supervision") is False:
            raise ConfigError("loss.deep_supervision: the model has model.options.deep_supervision false")
        milestones = self.schedule.milestones
        if milestones and self.train.iterations is None and max(milestones) >= self.train.epochs:
            raise ConfigError(f"schedule.milestones: {max(milestones):g} is not before the end of the run "
                              f"(train.epochs {self.train.epochs}), so it would never apply; milestones are "
                              "epochs, not steps")

    @property
    def spatial_dims(self) -> int | None:
        """The run's dimensionality: ``model.spatial_dims`` or the length of a patch / resize shape."""
        if self.model.spatial_dims is not None:
            return self.model.spatial_dims
        for shape in (self.data.patch_size, self.data.resize, self.inference.patch_size):
            if shape is not None:
                return len(shape)
        return None

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir is not None else Path("runs") / self.name


# --------------------------------------------------------------------------------- the converter


def _did_you_mean(name: str, valid: Sequence[str] | Mapping[str, Any], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


_SCALAR_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                 type(None): "null"}


def _describe(tp: Any) -> str:
    """The expected type in words: ``an integer``, ``a list of numbers or null``, ``one of a, b``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list (each {_describe(args[0])})" if args else "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return _SCALAR_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


def _convert_scalar(value: Any, tp: type, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif isinstance(value, tp):
        return value
    raise _type_error(key, tp, value)


def _convert_union(value: Any, tp: Any, key: str) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:  # keep the inner message (it may name an item) unless it is about this value
        try:
            return _convert(value, options[0], key)
        except ConfigError as exc:
            if str(exc).startswith(f"{key}: expected "):
                raise _type_error(key, tp, value) from None
            raise
    for option in options:
        try:
            return _convert(value, option, key)
        except ConfigError:
            continue
    raise _type_error(key, tp, value)


def _convert_sequence(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise _type_error(key, tp, value)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({list(value)!r})")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    item = args[0] if args else Any
    items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check and convert one value to type ``tp``; ConfigError names ``key``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(str(a) for a in args)}"
                          f"{_did_you_mean(str(value), [str(a) for a in args])}")
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, key)
    if origin in (list, tuple):
        return _convert_sequence(value, tp, key)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        key_type, value_type = args or (Any, Any)
        return {_convert(k, key_type, key): _convert(v, value_type, _join(key, str(k)))
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return dataclass_from_dict(tp, value, key)
    return _convert_scalar(value, tp, key)


def _check_bounds(value: Any, bounds: Mapping[str, float], key: str) -> None:
    if not bounds or value is None:
        return
    numbers = value if isinstance(value, (list, tuple)) else (value,)
    tests = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
             "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
    for number in numbers:
        for name, bound in bounds.items():
            test, sign = tests[name]
            if not test(number, bound):
                every = "every value " if isinstance(value, (list, tuple)) else ""
                raise ConfigError(f"{key}: {every}must be {sign} {bound}, got {value!r}")


def dataclass_from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build the config dataclass ``cls`` from a mapping (recursively), checking every key and type.

    Missing keys keep their defaults; ``None`` for a nested section means its defaults. A dataclass with
    its own ``from_dict(data, key)`` (the augmentation config) converts itself. After construction the
    fields' numeric bounds and the class's ``check(key)`` (cross-field rules) are applied.
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise _type_error(key or "config", cls, data)
    own_parser = getattr(cls, "from_dict", None)
    if own_parser is not None and cls.__module__ != __name__:
        try:
            return own_parser(data, key) if key else own_parser(data)
        except MedsegError as exc:
            raise ConfigError(str(exc)) from None
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for name, value in data.items():
        if name not in fields:
            where = f"; valid keys under {key!r}: {', '.join(fields)}" if key else ""
            hint = _did_you_mean(str(name), fields, f"{key}." if key else "") or where
            raise ConfigError(f"unknown config key {_join(key, str(name))!r}{hint}")
        values[name] = _convert(value, hints[name], _join(key, name))
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{_join(key, missing[0])}: missing (required)")
    config = cls(**values)
    for name, f in fields.items():
        _check_bounds(getattr(config, name), f.metadata.get("bounds", {}), _join(key, name))
    if hasattr(config, "check"):
        config.check(key)
    return config


# --------------------------------------------------------------------------------- YAML and overrides


def _set_nested(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {'.'.join(parts[:depth + 1])} is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``key.sub=value`` overrides; values are YAML (``5``, ``1e-3``, ``[64,64]``,
    ``null``, ``true``, ``{a: 1}``)."""
    result = _deep_copy(data)
    for override in overrides:
        dotted, sep, text = override.partition("=")
        dotted = dotted.strip()
        if not sep or not dotted or any(not p for p in dotted.split(".")):
            raise ConfigError(f"override {override!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {override!r}: the value is not valid YAML "
                              f"({_one_line(exc)})") from None
        _set_nested(result, dotted, value)
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def config_from_dict(data: Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> RunConfig:
    """A validated :class:`RunConfig` from a plain mapping plus overrides."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {type(data).__name__}")
    return dataclass_from_dict(RunConfig, apply_overrides(data or {}, overrides))


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (``yaml.safe_load``; None: the defaults), apply ``key.sub=value`` overrides and
    validate. Every problem is a one-line :class:`ConfigError` naming the file or the key."""
    data: Any = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({_one_line(exc)})") from None
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"config file {path}: expected a mapping of sections, got "
                              f"{type(data).__name__}")
    return config_from_dict(data, overrides)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return _plain(value.to_dict())
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain data (dicts, lists, scalars) for YAML, JSON and checkpoints."""
    return _plain(config)


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically; :func:`load_config` reads it back unchanged."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)
    write_text_atomically(path, text)
    return Path(path)


# --------------------------------------------------------------------------------- schedules

LrFactor = Callable[[int], float]
"""Learning-rate multiplier at optimiser step ``t`` (0-based), for ``LambdaLR``."""
ScheduleBuilder = Callable[[ScheduleConfig, int, int], LrFactor]
"""``builder(config, total_steps, steps_per_epoch)`` -> the schedule's factor after warm-up."""

_SCHEDULES: dict[str, ScheduleBuilder] = {}
_FROM_START: set[str] = set()


def register_schedule(name: str, *, from_start: bool = False) -> Callable[[ScheduleBuilder], ScheduleBuilder]:
    """Register a schedule builder under ``name`` (a valid ``schedule.name`` from then on).

    By default the builder's factor covers the steps after the warm-up (its step 0 is the first step after
    it, its ``total_steps`` the rest of the run). With ``from_start`` it gets the run's own steps and total
    (for schedules whose settings name points of the run, such as milestones); the warm-up then overlays
    its start."""

    def decorate(builder: ScheduleBuilder) -> ScheduleBuilder:
        if name in _SCHEDULES:
            raise ValueError(f"schedule {name!r} is registered twice")
        _SCHEDULES[name] = builder
        if from_start:
            _FROM_START.add(name)
        return builder

    return decorate


def schedule_names() -> list[str]:
    return sorted(_SCHEDULES)


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
    if config.name not in _SCHEDULES:
        raise ConfigError(f"schedule.name: {config.name!r} is not one of {', '.join(schedule_names())}")
    warmup = config.warmup_iterations or round(config.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, max(total_steps - 1, 0))
    offset = 0 if config.name in _FROM_START else warmup
    main = _SCHEDULES[config.name](config, max(total_steps - offset, 1), steps_per_epoch)
    start = config.warmup_start_factor

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * step / warmup
        return float(main(step - offset))

    return factor
