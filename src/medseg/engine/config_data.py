"""The ``data`` section of the run configuration (:mod:`medseg.engine.config`): where the cases are, how
they are preprocessed, split, sampled and batched, and the synthetic data set of the demo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from medseg.config_types import ConfigError, bounded
from medseg.data.preprocess import parse_label_mapping
from medseg.data.slices import SliceAxis
from medseg.errors import MedsegError

LabelMode = Literal["binary", "multiclass", "multilabel", "instance"]


@dataclass
class SyntheticDataConfig:
    """Generate the synthetic data set of :mod:`medseg.data.synthetic` into ``data.root`` before training
    (skipped when it is already there): ``polyp`` (2D RGB PNG pairs), ``nuclei`` (2D RGB PNG images with
    16-bit instance label maps) or ``lesion`` (3D NIfTI)."""

    kind: Literal["polyp", "nuclei", "lesion"] = "polyp"
    n_cases: int = bounded(200, ge=1)
    size: tuple[int, ...] = bounded((256, 256), ge=8)
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
    ``layout`` other than ``auto`` requires ``root`` to be of that layout (checked when the data is loaded).
    ``label_mode: instance``: label maps with 0 for the background and one id per object (8/16-bit
    PNG/TIFF, NIfTI), kept as ids through preprocessing (nearest resampling, no mapping) and
    augmentation, for instance models (Mask R-CNN); objects of fewer than ``min_instance_pixels`` pixels
    in a training patch are not targets. ``binarize_labels``: every nonzero label value becomes 1 (a
    binary model on instance label maps, e.g. U-Net + watershed).
    ``slices`` k (2.5D, :mod:`medseg.data.slices`): a 2D model gets the ``2k + 1`` neighbouring slices of
    each 3D volume as channels (``in_channels`` = image channels x (2k + 1)) and predicts the centre slice
    (edge slices repeated); ``patch_size`` is then the 2D patch of a slice, ``spacing`` / ``resize`` stay
    3D. ``slice_axis``: ``auto`` (across the coarsest spacing of the preprocessed training volumes, axial on
    a tie), ``axial`` (array axis 0, the file's last voxel axis), ``coronal`` (1), ``sagittal`` (2) or
    ``triplanar`` (one 2D model trained on slices of all three, predictions averaged as probabilities).
    """

    root: str | None = None
    layout: Literal["auto", "paired", "decathlon", "list"] = "auto"
    channels_suffix: bool | None = None
    allow_outside_root: bool = False
    synthetic: SyntheticDataConfig | None = None
    patch_size: tuple[int, ...] | None = bounded(None, ge=1)
    resize: tuple[int, ...] | None = bounded(None, ge=1)
    spacing: tuple[float, ...] | None = bounded(None, gt=0)
    crop_nonzero: bool = False
    normalization: Literal["auto", "ct", "zscore", "rgb", "none"] = "auto"
    label_mode: LabelMode = "binary"
    num_classes: int | None = bounded(None, ge=1)
    class_names: list[str] | None = None
    label_mapping: dict[Any, Any] | None = None
    binarize_labels: bool = False
    min_instance_pixels: int = bounded(4, ge=1)
    val_fraction: float = bounded(0.2, gt=0, lt=1)
    fold: int | None = bounded(None, ge=0)
    folds: int = bounded(5, ge=2)
    splits_file: str | None = None
    cache_dir: str | None = None
    foreground_fraction: float = bounded(0.33, ge=0, le=1)
    batch_size: int = bounded(2, ge=1)
    num_workers: int = bounded(2, ge=0)
    slices: int | None = bounded(None, ge=0)
    slice_axis: SliceAxis = "auto"

    def check(self, key: str) -> None:
        if self.slices is None and self.slice_axis != "auto":
            raise ConfigError(f"{key}.slice_axis: applies to 2.5D input only; set {key}.slices (e.g. 2)")
        if self.slices is not None and self.label_mode == "instance":
            raise ConfigError(f"{key}.slices: 2.5D input is for semantic models, not label_mode instance")
        if self.slices is not None and self.patch_size is None:
            raise ConfigError(f"{key}.slices: 2.5D training draws 2D patches of slices; set {key}.patch_size "
                              "(2 values, e.g. the in-plane size)")
        if self.fold is not None and self.fold >= self.folds:
            raise ConfigError(f"{key}.fold: {self.fold} must be below {key}.folds ({self.folds})")
        if self.label_mode == "binary" and self.num_classes not in (None, 1):
            raise ConfigError(f"{key}.num_classes: binary segmentation has 1 output channel, got "
                              f"{self.num_classes} (use label_mode multiclass or multilabel)")
        if self.label_mode == "instance":
            if self.num_classes not in (None, 2):
                raise ConfigError(f"{key}.num_classes: instance mode has one object class (num_classes 2, "
                                  f"counting the background), got {self.num_classes}")
            for name in ("label_mapping", "binarize_labels"):
                if getattr(self, name):
                    raise ConfigError(f"{key}.{name}: instance label maps keep their ids; unset it (or use "
                                      "label_mode binary for a foreground mask)")
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
        (``dataset_classes``, background included); multilabel ``num_classes`` or the regions' count;
        instance 2 (the object class and the background, as Mask R-CNN counts them)."""
        if self.label_mode == "binary":
            return 1
        if self.label_mode == "instance":
            return 2
        if self.num_classes is not None:
            return self.num_classes
        if self.label_mode == "multilabel" and self.label_mapping is not None:
            return len(self.label_mapping)
        return dataset_classes
