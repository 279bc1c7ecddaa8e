"""Pairing predictions with their ground truth by case id, and reading a pair (``medseg evaluate``,
semantic and instance).

A ground-truth mask named with a mask word (``case_001_mask.png``) also matches ``case_001``; the ground
truth is a folder of masks, or a data set root (``labelsTr/`` of the Decathlon / nnU-Net layout,
``masks/`` of paired folders) whose images then serve as the background of the report's overlays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.datasets import (
    Case,
    image_files,
    is_nnunet_folder,
    load_dataset,
    match_masks,
    nested_case_id,
)
from medseg.data.geometry import DataError
from medseg.data.io import case_id, read_image, read_mask
from medseg.engine.inference import probabilities_to_labels

logger = logging.getLogger(__name__)

#: Folders of a data set root that hold the ground truth, and the sibling folders that hold images.
LABEL_FOLDERS = ("labelsTr", "masks", "mask", "labels", "label", "gt", "ground_truth", "groundtruth")
IMAGE_FOLDERS = ("imagesTr", "images", "image", "imgs")
#: Raster formats whose 8-bit predictions may be grey probability maps (binary tasks).
RASTER_FORMATS = ("png", "jpeg", "bmp", "tiff")


@dataclass(frozen=True)
class CasePair:
    """One case to evaluate: its id, prediction, ground truth and (when found) image."""

    case_id: str
    prediction: Path
    truth: Path
    image: Path | None = None


@dataclass
class Matching:
    """The pairs to evaluate, the unmatched cases on each side and the cases that cannot be paired."""

    pairs: list[CasePair]
    missing: list[str]
    extra: list[str]
    problems: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Truth:
    case_id: str
    label: Path
    image: Path | None


def _find_child(folder: Path, names: Sequence[str]) -> Path | None:
    wanted = {n.lower(): i for i, n in enumerate(names)}
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.lower() in wanted]
    return min(found, key=lambda p: wanted[p.name.lower()]) if found else None


def _images_by_id(folder: Path | None) -> dict[str, Path]:
    """Images of ``folder`` by case id (in an nnU-Net layout folder the channel suffix is stripped: the
    first channel wins; elsewhere every file, sub-folders included, is a case under its own name)."""
    if folder is None:
        return {}
    if is_nnunet_folder(folder):
        images: dict[str, Path] = {}
        for path in image_files(folder):
            images.setdefault(case_id(path, strip_channel=True), path)
        return images
    return {nested_case_id(path, folder): path for path in image_files(folder, recursive=True)}


def _with_images(labels_root: Path, labels: Sequence[Path], images: dict[str, Path]) -> list[_Truth]:
    """The label files (found under ``labels_root``) with their images: the image of the same case id, or
    the one whose name the label's name repeats before a mask word (``case_mask.png`` -> ``case.png``),
    whose id it then takes."""
    owners = match_masks([Case(i, [p]) for i, p in images.items()], labels, labels_root)
    owner_of = {label: i for i, found in owners.items() if len(found) == 1 for label in found}
    truth = []
    for label in labels:
        owner = owner_of.get(label)
        identifier = owner or nested_case_id(label, labels_root)
        truth.append(_Truth(identifier, label, images[owner] if owner else None))
    return truth


def _dataset_truth(root: Path, labels_dir: Path) -> list[_Truth]:
    """The cases of a data set root; label files that the data set leaves out are added on their own."""
    try:
        cases = load_dataset(root, strict=False).cases
    except DataError as error:
        logger.info("%s: not read as a data set (%s); using %s/ alone", root, error.problem, labels_dir.name)
        cases = []
    truth = [_Truth(c.case_id, c.label, c.images[0]) for c in cases if c.label is not None]
    used = {t.label.resolve() for t in truth}
    rest = [p for p in image_files(labels_dir, recursive=True) if p.resolve() not in used]
    return truth + _with_images(labels_dir, rest, _images_by_id(_find_child(root, IMAGE_FOLDERS)))


def ground_truth(gt_dir: Path) -> list[_Truth]:
    """The ground-truth masks of ``gt_dir`` (a masks folder or a data set root) with their images."""
    labels_dir = _find_child(gt_dir, LABEL_FOLDERS)
    if labels_dir is not None:
        return _dataset_truth(gt_dir, labels_dir)
    return _with_images(gt_dir, image_files(gt_dir, recursive=True),
                        _images_by_id(_find_child(gt_dir.parent, IMAGE_FOLDERS)))


def match_cases(pred_dir: str | Path, gt_dir: str | Path) -> Matching:
    """Pair the predictions of ``pred_dir`` with the ground truth of ``gt_dir`` by case id."""
    pred_dir, truth = Path(pred_dir), ground_truth(Path(gt_dir))
    problems: dict[str, str] = {}
    predictions: dict[str, Path] = {}
    for path in image_files(pred_dir):
        identifier = case_id(path)
        if identifier in predictions:
            problems[identifier] = f"two predictions: {predictions[identifier].name} and {path.name}"
        predictions.setdefault(identifier, path)
    by_id: dict[str, list[_Truth]] = {}
    for item in truth:
        by_id.setdefault(item.case_id, []).append(item)
    # Exact ids first, then ground-truth names that carry a mask word (``case_mask.png``).
    unmatched = [Case(i, [p]) for i, p in predictions.items() if i not in by_id]
    by_label = {t.label: t for t in truth}
    for identifier, labels in match_masks(unmatched, [t.label for t in truth if t.case_id not in predictions]
                                          ).items():
        for label in labels:
            by_id.setdefault(identifier, []).append(by_label[label])
    pairs, used = [], set()
    for identifier, path in sorted(predictions.items()):
        found = by_id.get(identifier, [])
        used.update(t.label for t in found)
        if len(found) > 1:
            names = " and ".join(t.label.name for t in found)
            problems.setdefault(identifier, f"two ground-truth masks: {names}")
        elif found and identifier not in problems:
            pairs.append(CasePair(identifier, path, found[0].label, found[0].image))
    missing = sorted({t.case_id for t in truth if t.label not in used})
    extra = sorted(i for i in predictions if not by_id.get(i))
    return Matching(pairs, missing, extra, problems)


# ----------------------------------------------------------------------------------------------------
# Reading one case
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    """A prediction as labels ``[*spatial]`` and, for probability maps, ``[C, *spatial]``: one channel
    (the foreground probability of a binary task) or one channel per label value (channel c = label c)."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


def _probability_prediction(path: Path, array: np.ndarray, classes: Sequence[int]) -> Prediction:
    """A float map in [0, 1]: one channel = foreground probability, several = per-label probabilities."""
    if array.shape[0] == 1:
        if tuple(classes) != (1,):
            raise DataError(path, f"a one-channel probability map fits a binary task, not classes "
                                  f"{list(classes)}")
        return Prediction(probabilities_to_labels(array, "binary", inclusive=True), array.astype(np.float64))
    if max(classes) >= array.shape[0]:
        raise DataError(path, f"{array.shape[0]} probability channels cannot hold label {max(classes)}")
    return Prediction(probabilities_to_labels(array, "multiclass"), array.astype(np.float64))


def read_prediction(path: Path, classes: Sequence[int]) -> Prediction:
    """Read a label map or a probability map (see the module docstring for how they are told apart)."""
    binary = tuple(classes) == (1,)
    try:
        labels, geometry = read_mask(path)
    except DataError as error:
        array, geometry = read_image(path)
        if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) \
                and array.min() >= 0 and array.max() <= 1:
            return _probability_prediction(path, array, classes)
        if binary and array.dtype == np.uint8 and geometry.source_format in RASTER_FORMATS:
            grey = array[:3].mean(axis=0, keepdims=True) / 255.0
            return Prediction(probabilities_to_labels(grey, "binary", inclusive=True), grey)
        raise error
    values = labels[0]
    if binary and values.dtype == np.uint8 and geometry.source_format in RASTER_FORMATS \
            and not np.isin(values, (0, 1)).all():
        grey = labels / 255.0
        return Prediction(probabilities_to_labels(grey, "binary", inclusive=True), grey)
    return Prediction(values)


def _fit_shape(path: Path, array: np.ndarray, shape: tuple[int, ...], leading: int = 0) -> np.ndarray:
    """``array`` (``leading`` axes before the spatial ones) reshaped to the spatial ``shape`` when the two
    differ only by axes of size 1; else a :class:`DataError` naming both shapes."""
    spatial = array.shape[leading:]
    if spatial == shape:
        return array
    if tuple(s for s in spatial if s != 1) == tuple(s for s in shape if s != 1):
        return array.reshape(*array.shape[:leading], *shape)
    raise DataError(path, f"size mismatch: prediction {'x'.join(map(str, spatial))}, ground truth "
                          f"{'x'.join(map(str, shape))}")


def read_truth(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The ground-truth labels ``[*spatial]`` and spacing (array order)."""
    labels, geometry = read_mask(path)
    return labels[0], tuple(float(s) for s in geometry.spacing)


def _fitted_prediction(path: Path, classes: Sequence[int], shape: tuple[int, ...]) -> Prediction:
    """The prediction of ``path`` fitted to the truth's spatial ``shape`` (see :func:`_fit_shape`)."""
    prediction = read_prediction(path, classes)
    labels = _fit_shape(path, prediction.labels, shape)
    probabilities = prediction.probabilities
    if probabilities is not None:
        probabilities = _fit_shape(path, probabilities, shape, leading=1)
    return Prediction(labels, probabilities)


def read_pair(pair: CasePair, classes: Sequence[int]) -> tuple[Prediction, np.ndarray, tuple[float, ...]]:
    """Prediction (fitted to the truth's shape), truth labels and the truth's spacing of one case."""
    truth, spacing = read_truth(pair.truth)
    return _fitted_prediction(pair.prediction, classes, truth.shape), truth, spacing
