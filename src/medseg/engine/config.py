"""Typed run configuration: the sections of a run, read from YAML, with ``key.sub=value`` overrides.

Every section is a dataclass declared once, as data; the shared converter of :mod:`medseg.config_types`
(:func:`dataclass_from_dict`) reads it by its type hints and reports one-line :class:`ConfigError`
messages naming the full key (``train.epochs``), the expected type or the allowed values, and for
unknown keys the closest valid ones.

The defaults follow nnU-Net (Isensee et al., Nature Methods 2021): Dice + CE, SGD with Nesterov momentum
0.99, poly learning-rate decay with power 0.9, 250 iterations per epoch, gradient clipping at 12,
foreground oversampling of a third of the batch, sliding-window inference with step 0.5 and Gaussian
weighting (sigma = 1/8 of the patch) and mirroring test-time augmentation.

The ``schedule`` section and the learning-rate schedules live in :mod:`medseg.engine.schedules` (re-exported
here), the ``augmentation`` section in :mod:`medseg.data.augment`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from medseg.config_types import ConfigError, bounded, config_to_dict, dataclass_from_dict, with_overrides
from medseg.data.augment import AugmentationConfig
from medseg.engine.config_adversarial import AdversarialConfig
from medseg.engine.config_data import DataConfig, SyntheticDataConfig
from medseg.engine.schedules import ScheduleConfig, lr_factor_function, register_schedule, schedule_names
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically

__all__ = [
    "AugmentationConfig", "ConfigError", "DataConfig", "InferenceConfig", "LossConfig", "ModelConfig",
    "OptimConfig", "ParamGroupConfig", "PointRendConfig", "PostprocessConfig", "RunConfig", "ScheduleConfig",
    "SyntheticDataConfig", "TrainConfig", "VAL_METRICS", "apply_overrides", "config_from_dict",
    "config_to_dict", "dataclass_from_dict", "load_config", "lr_factor_function", "register_schedule",
    "save_config", "schedule_names",
]

Device = Literal["auto", "cpu", "cuda"]

SEMANTIC_VAL_METRICS = ("dice", "iou", "precision", "recall", "fpr", "fnr", "hd", "hd95", "asd", "assd",
                        "nsd")
INSTANCE_VAL_METRICS = ("ap", "ap50", "ap75", "dsb", "aji", "pq", "object_dice")
"""Validation metrics of instance runs (:mod:`medseg.metrics.instance`; AP pooled over the validation
cases, the others averaged over them)."""
VAL_METRICS = SEMANTIC_VAL_METRICS + INSTANCE_VAL_METRICS
"""Validation metrics a run may compute (Dice by default; the distances are opt-in: they cost more)."""
LOWER_IS_BETTER = frozenset({"fpr", "fnr", "hd", "hd95", "asd", "assd"})
ValMetric = Literal[VAL_METRICS]  # type: ignore[valid-type]


# ------------------------------------------------------------------------------------------ sections


@dataclass
class PointRendConfig:
    """``model.pointrend``: wrap the model in PointRend (:class:`medseg.models.pointrend.PointRend`) and add
    its point loss (weight ``point_loss_weight``) to the training loss. ``points``: training points per
    sample (null: one per 256 input pixels/voxels, 2048 at 512x1024); ``oversample`` k and ``importance``
    beta of the training selection; ``subdivision_points`` refined per inference step, at most ``steps``
    steps (null: up to the input size); ``every_layer``: coarse logits into every point-head layer."""

    points: int | None = bounded(None, ge=1)
    oversample: float = bounded(3.0, ge=1)
    importance: float = bounded(0.75, ge=0, le=1)
    subdivision_points: int = bounded(8192, ge=1)
    steps: int | None = bounded(None, ge=0)
    every_layer: bool = False
    point_loss_weight: float = bounded(1.0, ge=0)

    def model_options(self, label_mode: str) -> dict[str, Any]:
        """The options of :func:`medseg.models.pointrend.wrap_pointrend` (stored in checkpoints)."""
        options = {f.name: getattr(self, f.name) for f in fields(self)}
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
    in_channels: int | None = bounded(None, ge=1)
    num_classes: int | None = bounded(None, ge=1)
    spatial_dims: Literal[2, 3] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    encoder_weights: str | None = None
    init_from: str | None = None
    init_skip_mismatched: bool = False
    pointrend: PointRendConfig | None = None

    def check(self, key: str) -> None:
        from medseg.models.registry import get_entry

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
    deep_supervision_weights: list[float] | None = bounded(None, ge=0)
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
    lr: float | None = bounded(None, ge=0)
    weight_decay: float | None = bounded(None, ge=0)


@dataclass
class OptimConfig:
    """Optimiser: ``sgd`` (with ``momentum``, ``nesterov``), ``adam`` or ``adamw`` (``betas``, ``eps``).
    Defaults: nnU-Net's SGD (lr 0.01, momentum 0.99, Nesterov, weight decay 3e-5)."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = bounded(0.01, gt=0)
    weight_decay: float = bounded(3e-5, ge=0)
    momentum: float = bounded(0.99, ge=0, lt=1)
    nesterov: bool = True
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0, lt=1)
    eps: float = bounded(1e-8, gt=0)
    param_groups: list[ParamGroupConfig] = field(default_factory=list)


MIN_SCALE_SIZE = 8
MAX_SCALE_FACTOR = 8.0


@dataclass
class TrainConfig:
    """The training loop. ``iterations`` (total batches), when given, replaces ``epochs``;
    ``iterations_per_epoch`` None is one pass over the training cases in whole-image mode (a number caps the
    pass: each epoch then sees a different seeded subset) and 250 batches in patch mode. Validation every
    ``val_every`` epochs computes ``val_metrics`` (instance runs: ``ap``, ``ap50``, ``ap75``, ``dsb``,
    ``aji``, ``pq``, ``object_dice``); ``best_metric`` selects ``best.pt``; early stopping after
    ``early_stopping_patience`` validations without improvement; ``max_minutes`` is a time budget: the
    learning-rate schedule runs on whichever of the planned steps and the budget ends first (a poly decay
    reaches 0 when the minutes run out), training stops at the optimiser step where the budget less the last
    validation's duration is spent, then validates and saves (validation counts in the budget). ``amp``
    ``auto``: bf16 on a GPU that has it, else fp16 with a scaler on a GPU, none on the CPU. ``ema_decay``:
    keep an exponential moving average of the weights (validated and saved as the model). ``multi_scale``:
    per training batch a size drawn (seeded) from the list, after augmentation: integers are absolute sizes
    (every axis; M2SNet ``[224, 256, 288, 320, 352]``), numbers with a fractional part make it a list of
    factors of the batch's size (U-Net v2 ``[0.75, 1, 1.25]``); rounded to a multiple of the model's input
    multiple; images resized bi/trilinearly, labels by nearest neighbour. ``save_every``: besides ``last.pt``
    and ``best.pt`` keep a checkpoint every that many epochs (``epoch_0010.pt``: the content of ``last.pt``
    then, training state included, so it can be copied to ``last.pt`` to resume from there). ``adversarial``:
    train against a discriminator (Luc et al. 2016; :class:`medseg.engine.adversarial.AdversarialConfig`)."""

    epochs: int = bounded(100, ge=1)
    iterations: int | None = bounded(None, ge=1)
    iterations_per_epoch: int | None = bounded(250, ge=1)
    val_every: int = bounded(1, ge=1)
    val_metrics: list[ValMetric] = field(default_factory=lambda: ["dice"])
    best_metric: ValMetric = "dice"
    early_stopping_patience: int | None = bounded(None, ge=1)
    max_minutes: float | None = bounded(None, gt=0)
    grad_clip: float | None = bounded(12.0, gt=0)
    grad_accumulation: int = bounded(1, ge=1)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    compile: bool = False
    seed: int = bounded(0, ge=0)
    device: Device = "auto"
    ema_decay: float | None = bounded(None, gt=0, lt=1)
    multi_scale: list[int] | list[float] | None = bounded(None, gt=0)  # ints first: YAML ints stay ints
    save_every: int | None = bounded(None, ge=1)
    adversarial: AdversarialConfig | None = None

    def check(self, key: str) -> None:
        if self.adversarial is not None and self.iterations is None and \
                self.adversarial.start_epoch >= self.epochs:
            raise ConfigError(f"{key}.adversarial.start_epoch: {self.adversarial.start_epoch} is not before "
                              f"the end of the run ({key}.epochs {self.epochs}), so the term would never "
                              "apply")
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
    ``largest_component`` and ``fill_holes`` are true (every class) or a list of classes. ``instances:
    watershed`` turns a binary prediction into an instance label map last
    (:mod:`medseg.engine.watershed`:
    markers at distance-transform maxima at least ``watershed_min_distance`` pixels apart and
    ``watershed_threshold`` pixels deep, instances below ``watershed_min_size`` pixels removed)."""

    largest_component: bool | tuple[int, ...] = False
    fill_holes: bool | tuple[int, ...] = False
    fill_holes_axis: int | None = bounded(None, ge=0, le=2)
    min_component_voxels: int = bounded(0, ge=0)
    min_component_volume: float = bounded(0.0, ge=0)
    connectivity: int = bounded(1, ge=1, le=3)
    instances: Literal["watershed"] | None = None
    watershed_min_distance: int = bounded(3, ge=1)
    watershed_threshold: float = bounded(1.0, ge=0)
    watershed_min_size: int = bounded(0, ge=0)


@dataclass
class InferenceConfig:
    """Prediction: ``whole`` images, ``sliding_window`` over ``patch_size`` (None: the training patch)
    with ``step`` (fraction of the patch) and Gaussian importance weights (sigma ``sigma_scale`` x
    patch), ``window_batch_size`` windows per forward (slices with ``data.slices``); mirroring TTA over
    ``mirror_axes`` (None: all); logits accumulated on the device or the CPU (``auto``: CPU when the volume
    does not fit); binary / multilabel ``threshold``; optional probability maps and 2D overlays."""

    mode: Literal["auto", "whole", "sliding_window"] = "auto"
    patch_size: tuple[int, ...] | None = bounded(None, ge=1)
    step: float = bounded(0.5, gt=0, le=1)
    sigma_scale: float = bounded(0.125, gt=0)
    window_batch_size: int = bounded(4, ge=1)
    mirror: bool = True
    mirror_axes: tuple[int, ...] | None = bounded(None, ge=0, le=2)
    accumulate_on: Literal["auto", "device", "cpu"] = "auto"
    threshold: float = bounded(0.5, ge=0, le=1)
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
        self._check_task()
        dims = self.spatial_dims
        sizes = {"data.patch_size": self.data.patch_size, "data.resize": self.data.resize,
                 "data.spacing": self.data.spacing, "inference.patch_size": self.inference.patch_size}
        self._check_slices()
        for name, value in sizes.items():
            if value is not None and len(value) not in (2, 3):
                raise ConfigError(f"{name}: {list(value)} must have 2 or 3 values (one per spatial axis)")
            if self.data.slices is not None and value is not None:  # a 2D model on 3D volumes
                volume = name in ("data.spacing", "data.resize")
                if len(value) != (3 if volume else 2):
                    raise ConfigError(f"{name}: {list(value)} has {len(value)} values but with data.slices "
                                      f"it is the {'3D volume' if volume else '2D slice'}'s "
                                      f"({3 if volume else 2} values)")
            elif value is not None and dims is not None and len(value) != dims:
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

    def _check_slices(self) -> None:
        """2.5D input (``data.slices``) feeds a 2D model, predicted on whole slices."""
        if self.data.slices is None:
            return
        from medseg.models.registry import model_info

        if self.model.spatial_dims == 3:
            raise ConfigError("data.slices: 2.5D input feeds a 2D model, but model.spatial_dims is 3 (set 2, "
                              "or drop data.slices for a 3D model)")
        if 2 not in model_info(self.model.name)["dims"]:
            raise ConfigError(f"data.slices: 2.5D input feeds a 2D model; {self.model.name} is 3D only")
        if self.inference.mode == "sliding_window" or self.inference.patch_size is not None:
            raise ConfigError("inference.mode: 2.5D prediction runs the 2D model on whole slices; leave "
                              "inference.mode auto (or whole) and inference.patch_size null")
        if self.model.pointrend is not None:
            raise ConfigError("model.pointrend: not available with 2.5D input (data.slices)")

    def _check_task(self) -> None:
        """Instance models (registry ``task: instance``) and ``label_mode: instance`` go together, with
        instance validation metrics and the model's own losses; semantic runs use the semantic metrics."""
        from medseg.models.registry import get_entry

        instance_model = get_entry(self.model.name).task == "instance"
        instance_data = self.data.label_mode == "instance"
        if instance_model != instance_data:
            raise ConfigError(f"data.label_mode: {self.model.name} is "
                              f"{'an instance' if instance_model else 'a semantic'} model but the label mode "
                              f"is {self.data.label_mode!r}" + (" (use instance)" if instance_model else
                                                               " (instance needs an instance model, e.g. "
                                                               "mask_rcnn)"))
        allowed = INSTANCE_VAL_METRICS if instance_data else SEMANTIC_VAL_METRICS
        wrong = [m for m in self.train.val_metrics if m not in allowed]
        if wrong:
            raise ConfigError(f"train.val_metrics: {', '.join(wrong)} cannot be computed in "
                              f"{self.data.label_mode} mode (allowed: {', '.join(allowed)})")
        if instance_model:
            if self.loss.name is not None or self.loss.losses is not None or self.loss.deep_supervision:
                raise ConfigError(f"loss: {self.model.name} computes its own losses (their sum is trained); "
                                  "leave the loss section out")
            if self.model.pointrend is not None:
                raise ConfigError(f"model.pointrend: does not apply to the instance model {self.model.name}")

    @property
    def spatial_dims(self) -> int | None:
        """The run's dimensionality: ``model.spatial_dims`` or the length of a patch / resize shape."""
        if self.model.spatial_dims is not None:
            return self.model.spatial_dims
        if self.data.slices is not None:
            return 2
        for shape in (self.data.patch_size, self.data.resize, self.inference.patch_size):
            if shape is not None:
                return len(shape)
        return None

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir is not None else Path("runs") / self.name


# --------------------------------------------------------------------------------- YAML and overrides


def _parse_override(override: str) -> tuple[str, Any]:
    dotted, sep, text = override.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted or any(not p for p in dotted.split(".")):
        raise ConfigError(f"override {override!r}: expected key.sub=value")
    try:
        return dotted, yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({_one_line(exc)})") from None


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``key.sub=value`` overrides; values are YAML (``5``, ``1e-3``, ``[64,64]``,
    ``null``, ``true``, ``{a: 1}``)."""
    return with_overrides(data, (_parse_override(override) for override in overrides))


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


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically; :func:`load_config` reads it back unchanged."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)
    write_text_atomically(path, text)
    return Path(path)
