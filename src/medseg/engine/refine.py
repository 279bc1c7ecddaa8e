"""BPR as a pipeline (Tang et al. 2021): training patches from any model's coarse predictions
(``medseg refine prepare``) and a trained refiner applied to a folder of coarse predictions
(``medseg refine``). The patch and reassembly logic is :mod:`medseg.refine`, the network
:mod:`medseg.models.bpr` (trained with ``medseg train configs/bpr-*.yaml``).

**The patch data set** (a paired folder that ``medseg train`` reads and caches like any other):

- ``images/{case}-{label}-{k}.mha``: ``[C + 1, *patch]``, the image channels then the coarse mask of one
  object (0 or 255). The image channels are on a 0..255 scale: 8-bit images as they are, other images
  rescaled per case and channel from their 0.5..99.5 percentiles, so that the presets' ``rgb``
  normalisation (divide by 255) gives images in [0, 1] and the mask in {0, 1} (the network then maps the
  mask to ``(m - 0.5) / 0.5``). ``uint8`` for 8-bit images, else ``float32``.
- ``masks/{case}-{label}-{k}.png`` (``.mha`` in 3D): the ground truth of the object in the patch, 0/1.
- ``patches.json``: the settings and, per patch, its source case, label and start; ``splits.json``: a
  train/validation split by source case (``data.splits_file`` of the presets), so that patches of one
  image never sit on both sides.

An object is a class of a semantic map (its ground truth: that class) or an instance of an instance map
(``instances=True``; its ground truth: the ground-truth instance of highest IoU, as the official
``split_patches.py``); objects whose IoU with their ground truth is below ``min_iou`` (0.5) are dropped.

**Refining** rebuilds exactly that input for every boundary patch of every label of a coarse map (the
checkpoint's preprocessing, e.g. the resize to 128x128, is applied to each patch and reverted on the
probabilities), and writes the refined map under the coarse file's name with its geometry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medseg.data.datasets import image_files, load_dataset, train_val_split, write_splits
from medseg.data.geometry import DataError, Geometry
from medseg.data.io import case_id, lossless_mask_path, read_image, read_mask, write_image, write_mask
from medseg.data.preprocess import Preprocessor
from medseg.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
from medseg.engine.device import resolve_device
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.models.registry import get_entry
from medseg.refine import INFERENCE_IOU, TRAINING_IOU, boundary_patches, crop_patches, patch_shape
from medseg.refine.patches import DEFAULT_PATCH_SIZE, refine_label_map

logger = logging.getLogger(__name__)

__all__ = ["PATCHES_FILE", "PatchModelRefiner", "PrepareSummary", "byte_scale", "prepare_patches",
           "refine_paths"]

PATCHES_FILE = "patches.json"
MASK_VALUE = 255
"""The coarse mask's value in the patch images (0..255 scale, like the image channels)."""


def byte_scale(image: np.ndarray) -> np.ndarray:
    """Image channels on a 0..255 scale: ``uint8`` images unchanged, others rescaled per channel from their
    0.5 and 99.5 percentiles (clipped) to float32 0..255."""
    if image.dtype == np.uint8:
        return image
    out = np.empty(image.shape, np.float32)
    for c, channel in enumerate(image):
        low, high = np.percentile(channel, [0.5, 99.5]) if channel.size else (0.0, 1.0)
        out[c] = np.clip((channel - low) / max(float(high - low), 1e-8), 0, 1) * 255
    return out


def patch_inputs(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``[N, C + 1, *patch]`` network inputs (before the preprocessing) from byte-scaled image patches
    ``[N, C, *patch]`` and binary mask patches ``[N, *patch]``."""
    dtype = np.uint8 if image.dtype == np.uint8 else np.float32
    mask_channel = (masks[:, None] * MASK_VALUE).astype(dtype)
    return np.concatenate([image.astype(dtype, copy=False), mask_channel], axis=1)


def _read_case_image(paths: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
    arrays = [read_image(p) for p in paths]
    return np.concatenate([a for a, _ in arrays]), arrays[0][1]


def _coarse_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(folder, "the coarse predictions must be a folder")
    return {case_id(path): path for path in image_files(folder)}


def _check_same_shape(coarse_path: Path, coarse: np.ndarray, shape: Sequence[int], what: str) -> None:
    if tuple(coarse.shape) != tuple(shape):
        raise DataError(coarse_path, f"coarse prediction of shape {tuple(coarse.shape)} does not match its "
                                     f"{what} of shape {tuple(shape)}")


# ------------------------------------------------------------------------------------------ prepare


@dataclass
class PrepareSummary:
    """What :func:`prepare_patches` wrote: cases, objects kept and dropped, patches and the folder."""

    cases: int
    objects: int
    dropped: int
    patches: int
    out: Path


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _objects(coarse: np.ndarray, truth: np.ndarray, instances: bool
             ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(label, coarse object, its ground truth)`` per non-zero label of the coarse map."""
    for value in np.unique(coarse[coarse != 0]).tolist():
        obj = coarse == value
        if not instances:
            yield value, obj, truth == value
            continue
        overlapping = [t for t in np.unique(truth[obj]).tolist() if t != 0]
        candidates = [truth == t for t in overlapping]
        yield value, obj, max(candidates, key=lambda t: _iou(obj, t)) if candidates else np.zeros_like(obj)


def prepare_patches(coarse: str | Path, dataset: str | Path, out: str | Path, *, instances: bool = False,
                    patch_size: int = DEFAULT_PATCH_SIZE, iou_threshold: float = TRAINING_IOU,
                    min_iou: float = 0.5, val_fraction: float = 0.2, seed: int = 0, progress: bool = True
                    ) -> PrepareSummary:
    """Write BPR's training patches (see the module docstring) from the coarse predictions in ``coarse``
    (files named by case id, as ``medseg predict`` writes them) of the cases of ``dataset``."""
    coarse, out = Path(coarse), Path(out)
    data = load_dataset(dataset)
    files = _coarse_files(coarse)
    cases = [c for c in data.cases if c.case_id in files and c.label is not None]
    if not cases:
        raise DataError(coarse, f"no coarse prediction is named after a labelled case of {data.root}")
    for folder in (out / "images", out / "masks"):
        if folder.is_dir() and any(folder.iterdir()):
            raise DataError(folder, "already holds patches; choose an empty output folder")
    records: list[dict[str, Any]] = []
    objects = dropped = 0
    for case in tqdm(cases, desc="boundary patches", unit="case", disable=not progress):
        image, _ = _read_case_image(case.images)
        truth = read_mask(case.label)[0][0]
        path = files[case.case_id]
        mask = read_mask(path)[0][0]
        _check_same_shape(path, mask, image.shape[1:], "image")
        _check_same_shape(path, mask, truth.shape, "ground truth")
        image = byte_scale(image)
        extension = ".png" if mask.ndim == 2 else ".mha"
        for value, obj, target in _objects(mask, truth, instances):
            objects += 1
            if _iou(obj, target) < min_iou:
                dropped += 1
                continue
            starts = boundary_patches(obj, patch_size, iou_threshold)
            shape = patch_shape(obj.shape, patch_size)
            obj_patches = crop_patches(obj[None], starts, shape)[:, 0]
            inputs = patch_inputs(crop_patches(image, starts, shape), obj_patches)
            targets = crop_patches(target[None].astype(np.uint8), starts, shape)
            for k, start in enumerate(starts):
                name = f"{case.case_id}-{value}-{k}"
                write_image(out / "images" / f"{name}.mha", inputs[k])
                write_mask(out / "masks" / f"{name}{extension}", targets[k])
                records.append({"id": name, "case": case.case_id, "label": value, "start": start.tolist()})
    if not records:
        raise DataError(coarse, f"no boundary patches: {dropped} of {objects} coarse objects have IoU < "
                                f"{min_iou} with the ground truth, the others no boundary")
    settings = {"patch_size": patch_size, "iou_threshold": iou_threshold, "min_iou": min_iou,
                "instances": instances, "mask_value": MASK_VALUE, "coarse": str(coarse),
                "dataset": str(data.root)}
    write_text_atomically(out / PATCHES_FILE, json.dumps({**settings, "patches": records}, indent=1) + "\n")
    source_cases = sorted({r["case"] for r in records})
    if len(source_cases) >= 2:
        split = train_val_split(source_cases, val_fraction, seed)
        val_cases = set(split["val"])
        write_splits(out / "splits.json", [{
            "train": [r["id"] for r in records if r["case"] not in val_cases],
            "val": [r["id"] for r in records if r["case"] in val_cases]}])
    return PrepareSummary(len(cases), objects, dropped, len(records), out)


# ------------------------------------------------------------------------------------------ refine


class PatchModelRefiner:
    """A :data:`medseg.refine.PatchRefineFn` running a trained BPR network on one image's patches.

    ``set_image`` gives the byte-scaled image ``[C, *spatial]``; each call builds the ``[C + 1]`` patch
    inputs, applies the training preprocessing per patch, runs the network in batches and returns the
    foreground (class 1) softmax probabilities on the patch grid.
    """

    def __init__(self, model: torch.nn.Module, preprocessor: Preprocessor, device: torch.device,
                 batch_size: int = 16, in_channels: int = 4, spatial_dims: int = 2) -> None:
        self.model = model.to(device).eval()
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.preprocessor = preprocessor
        self.device = device
        self.batch_size = batch_size
        self.image: np.ndarray | None = None
        self.patches_run = 0

    def set_image(self, image: np.ndarray) -> None:
        self.image = image

    @torch.no_grad()
    def __call__(self, starts: np.ndarray, shape: tuple[int, ...], masks: np.ndarray) -> np.ndarray:
        if self.image is None:
            raise MedsegError("PatchModelRefiner: set_image first")
        inputs = patch_inputs(crop_patches(self.image, starts, shape), masks)
        geometry = Geometry.identity(shape)
        out = np.empty((len(starts), *shape), np.float32)
        for begin in range(0, len(inputs), self.batch_size):
            chunk = inputs[begin:begin + self.batch_size]
            cases = [self.preprocessor(patch, None, geometry) for patch in chunk]
            batch = torch.from_numpy(np.stack([c.image for c in cases])).to(self.device)
            probabilities = torch.softmax(self.model(batch).float(), dim=1)[:, 1:2].cpu().numpy()
            for i, (probability, case) in enumerate(zip(probabilities, cases, strict=True)):
                out[begin + i] = self.preprocessor.revert(probability, case, order=1)[0]
        self.patches_run += len(starts)
        return out


def load_refiner(checkpoint: str | Path, device: torch.device, batch_size: int = 16) -> PatchModelRefiner:
    """A trained BPR checkpoint as a :class:`PatchModelRefiner`; other models are refused."""
    ckpt = load_checkpoint(checkpoint)
    record = ckpt.get("model") or {}
    name = str(record.get("name", ""))
    try:
        is_bpr = get_entry(name).name == "bpr"
    except MedsegError:
        is_bpr = False
    if not is_bpr:
        raise MedsegError(f"{checkpoint}: not a BPR refiner checkpoint (model {record.get('name')!r}; train "
                          "one with configs/bpr-polyp.yaml)")
    if int(record.get("num_classes", 0)) != 2:
        raise MedsegError(f"{checkpoint}: a BPR refiner has 2 classes, this one {record.get('num_classes')}")
    model = build_model_from_checkpoint(ckpt)
    preprocessor = Preprocessor.from_dict(ckpt.get("preprocessing") or {})
    return PatchModelRefiner(model, preprocessor, device, batch_size, int(record["in_channels"]),
                             int(record["spatial_dims"]))


def refine_paths(checkpoint: str | Path, images: str | Path, coarse: str | Path, out: str | Path, *,
                 patch_size: int = DEFAULT_PATCH_SIZE, iou_threshold: float = INFERENCE_IOU,
                 batch_size: int = 16, device: str = "auto", progress: bool = True) -> list[Path]:
    """Refine every coarse prediction in ``coarse`` whose case id names an image in ``images`` with the BPR
    checkpoint; binary masks, semantic and instance label maps alike (each label in turn, see
    :func:`medseg.refine.refine_label_map`). Writes ``out/{coarse file name}`` atomically with the coarse
    file's geometry and returns the paths."""
    images, coarse, out = Path(images), Path(coarse), Path(out)
    if not images.is_dir():
        raise DataError(images, "the images must be a folder")
    image_by_id = {case_id(p): p for p in image_files(images)}
    pairs = [(image_by_id[i], p) for i, p in sorted(_coarse_files(coarse).items()) if i in image_by_id]
    if not pairs:
        raise DataError(coarse, f"no coarse prediction is named after an image of {images}")
    refiner = load_refiner(checkpoint, resolve_device(device), batch_size)
    written = []
    for image_path, coarse_path in tqdm(pairs, desc="refine", unit="case", disable=not progress):
        image, _ = read_image(image_path)
        if image.shape[0] != refiner.in_channels - 1:
            raise DataError(image_path, f"{image.shape[0]} channels; the refiner was trained on "
                                        f"{refiner.in_channels - 1} image channels")
        labels, geometry = read_mask(coarse_path)
        _check_same_shape(coarse_path, labels[0], image.shape[1:], "image")
        if labels[0].ndim != refiner.spatial_dims:
            raise DataError(coarse_path, f"{labels[0].ndim}D; the refiner is {refiner.spatial_dims}D")
        refiner.set_image(byte_scale(image))
        refined = refine_label_map(labels[0], refiner, patch_size, iou_threshold)
        target = lossless_mask_path(out / coarse_path.name)
        write_mask(target, refined[None], geometry)
        written.append(target)
    return written


def read_patch_settings(folder: str | Path) -> Mapping[str, Any]:
    """The settings of a patch data set written by :func:`prepare_patches`."""
    path = Path(folder) / PATCHES_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read the patch settings ({exc})") from None
    return {k: v for k, v in data.items() if k != "patches"}
