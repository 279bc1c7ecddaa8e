"""Cascades: stage 1 a low-resolution model, stage 2 a full-resolution model that takes stage 1's
up-sampled coarse segmentation as extra input channels.

After nnU-Net's ``3d_cascade_fullres`` (Isensee et al., "nnU-Net", Nature Methods 2021) and H-DenseUNet
(Li et al., IEEE TMI 2018, whose 3D stage takes the 2D stage's probabilities with the volume). A stage-2
run names its stage 1 with ``data.cascade_from`` (a checkpoint or a run folder); stage 1 is any run,
typically on a coarser grid (``data.spacing``). Conventions:

- **Coarse channels**: one binary map per foreground class, after the image channels: binary 1,
  multiclass ``num_classes - 1`` (the background is implied, as nnU-Net v2 moves the one-hot map of the
  foreground labels into the data), multilabel one per region (:func:`coarse_channel_count`).
- **Up-sampling**: stage 1 predicts as ``medseg predict`` does, so its scores are mapped back to the
  source grid (its preprocessing reverted, logits resampled linearly, then argmax / threshold and its
  postprocessing); stage 2's own preprocessing then resamples those channels linearly with the image.
- **Training inputs**: stage 1 predicts every training and validation case of stage 2 once, cached on
  disk (:mod:`medseg.engine.cascade_cache`). These are plain predictions of one stage-1 model, not
  nnU-Net's five-fold cross-validated ones: on its own training cases stage 1 is better than on new
  cases, so stage 2 sees cleaner coarse maps in training than at test time.
- **Augmentation**: the coarse channels move with the label through the spatial transforms (nearest
  neighbour) and skip the intensity transforms (:func:`augment_with_coarse`; nnU-Net moves the one-hot
  map into the data after the intensity transforms).
- **Prediction**: a stage-2 checkpoint embeds its stage-1 checkpoint (weights, preprocessing and
  inference settings; no training state), so ``medseg predict`` runs both stages from one file.

This module holds the pure parts (no prediction); it imports ``data`` and the checkpoint helpers only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.data.geometry import Geometry
from medseg.data.io import read_image, read_mask
from medseg.engine.checkpoint import BEST_NAME, LAST_NAME
from medseg.errors import MedsegError

__all__ = ["CoarseReader", "augment_with_coarse", "check_stage1", "coarse_channel_count", "coarse_onehot",
           "resolve_stage1", "stage1_record"]

KEY = "data.cascade_from"


class CascadeError(MedsegError):
    """A stage-1 checkpoint that is missing or does not fit the stage-2 run."""


def resolve_stage1(path: str | Path, key: str = KEY) -> Path:
    """The stage-1 checkpoint: ``path`` itself, or in a run folder its ``best.pt``, else ``last.pt``."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST_NAME, LAST_NAME):
            if (path / name).is_file():
                return path / name
        raise CascadeError(f"{key}: run folder {path} holds no {BEST_NAME} or {LAST_NAME}")
    if not path.is_file():
        raise CascadeError(f"{key}: stage-1 checkpoint {path} not found")
    return path


def coarse_channel_count(label_mode: str, num_classes: int) -> int:
    """Coarse-segmentation channels stage 2 takes: one per foreground class (multiclass: ``num_classes -
    1``; binary and multilabel: ``num_classes``)."""
    if label_mode == "instance":
        raise CascadeError("cascades take semantic segmentations, not label_mode instance")
    return num_classes - 1 if label_mode == "multiclass" else num_classes


def coarse_onehot(labels: np.ndarray, label_mode: str, num_classes: int) -> np.ndarray:
    """Stage-1 label maps (``[1, *spatial]`` class map, or ``[R, *spatial]`` multilabel masks) as float32
    foreground channels ``[K, *spatial]`` (:func:`coarse_channel_count`)."""
    count = coarse_channel_count(label_mode, num_classes)
    if label_mode == "multilabel":
        if labels.shape[0] != count:
            raise CascadeError(f"coarse segmentation has {labels.shape[0]} channels, expected {count} "
                               "regions")
        return (labels != 0).astype(np.float32)
    if labels.shape[0] != 1:
        raise CascadeError(f"coarse segmentation has {labels.shape[0]} channels, expected one class map")
    if label_mode == "binary":
        return (labels != 0).astype(np.float32)
    return np.stack([labels[0] == c for c in range(1, num_classes)]).astype(np.float32)


class CoarseReader:
    """The image reader of a stage-2 cache: files in ``coarse_folder`` (stage-1 label maps) are read as
    masks and returned one-hot (:func:`coarse_onehot`), every other file as an image. Picklable, for the
    cache's worker processes."""

    def __init__(self, coarse_folder: str | Path, label_mode: str, num_classes: int) -> None:
        self.coarse_folder = Path(coarse_folder).resolve()
        self.label_mode, self.num_classes = label_mode, int(num_classes)

    def __call__(self, path: Path) -> tuple[np.ndarray, Geometry]:
        path = Path(path)
        if path.resolve().parent != self.coarse_folder:
            return read_image(path)
        reader: Callable[[Path], tuple[np.ndarray, Geometry]] = \
            read_image if self.label_mode == "multilabel" else read_mask
        labels, geometry = reader(path)
        return coarse_onehot(labels, self.label_mode, self.num_classes), geometry


def stage1_record(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The stage-1 checkpoint as embedded in a stage-2 checkpoint: everything prediction needs (model
    record, weights, label mode, classes, preprocessing, inference), no training state."""
    if ckpt.get("cascade"):
        raise CascadeError(f"{KEY}: the stage-1 checkpoint is itself a cascade stage 2 (three stages are "
                           "not supported)")
    keep = ("format", "medseg_version", "model", "state_dict", "label_mode", "class_names", "preprocessing",
            "inference")
    return {key: ckpt[key] for key in keep if key in ckpt} | {"config": {"data": dict(
        (ckpt.get("config") or {}).get("data") or {})}}


def check_stage1(ckpt: Mapping[str, Any], source: str | Path, *, label_mode: str, image_channels: int,
                 spatial_dims: int, num_classes: int | None = None,
                 class_names: list[str] | None = None) -> None:
    """Refuse a stage 1 whose label mode, classes, image channels or dimensionality differ from stage 2's
    (one line naming ``data.cascade_from`` and the checkpoint). Class names are compared when both runs
    list as many (a list given with its background and one derived without it are not compared)."""
    record = ckpt.get("model") or {}
    theirs = {"label mode": ckpt.get("label_mode", "binary"), "image channels": record.get("in_channels"),
              "spatial dims": record.get("spatial_dims")}
    ours: dict[str, Any] = {"label mode": label_mode, "image channels": image_channels,
                            "spatial dims": spatial_dims}
    if num_classes is not None:
        theirs["classes"], ours["classes"] = record.get("num_classes"), num_classes
    if class_names is not None and len(ckpt.get("class_names") or []) == len(class_names):
        theirs["class names"], ours["class names"] = list(ckpt["class_names"]), list(class_names)
    for name, value in ours.items():
        if theirs[name] != value:
            raise CascadeError(f"{KEY}: stage-1 checkpoint {source} has {name} {theirs[name]!r}, this run "
                               f"{value!r}")


def augment_with_coarse(augmenter: Callable[..., tuple[torch.Tensor, torch.Tensor]], image: torch.Tensor,
                        label: torch.Tensor, coarse_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a stage-2 batch: the last ``coarse_channels`` image channels travel with the label (the
    same spatial transforms, nearest neighbour) and skip the intensity transforms."""
    if coarse_channels <= 0:
        return augmenter(image, label)
    pixels, coarse = image[:, :-coarse_channels], image[:, -coarse_channels:]
    joined = torch.cat([label, (coarse > 0.5).to(label.dtype)], dim=1)
    pixels, joined = augmenter(pixels, joined)
    n = label.shape[1]
    return torch.cat([pixels, joined[:, n:].to(pixels.dtype)], dim=1), joined[:, :n]
