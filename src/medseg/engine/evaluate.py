"""``medseg evaluate``: compare a folder of predictions with the ground truth, case by case.

Cases are matched by case id across formats (``case_001.nii.gz`` with ``case_001.mha``); a ground-truth
mask named with a mask word (``case_001_mask.png``) also matches ``case_001``. The ground truth is a
folder of masks, or a data set root (``labelsTr/`` of the Decathlon / nnU-Net layout, ``masks/`` of
paired folders) whose images then serve as the background of the report's overlays.

Conventions:

- Distances use the ground truth's spacing (``Geometry.spacing``, array order); a prediction's own
  spacing is ignored, its shape must equal the truth's (axes of size 1 aside), else the case is left out
  and reported as a problem.
- Classes: the ``labels`` given, else every non-zero label of the ground truth (union over the cases).
  Each truth is read once: without ``labels`` a case is first evaluated for its own truth's labels and
  again, for the union, only when those differ; the report's overlays come from the evaluated arrays
  (only the images of the shown cases are read).
- Predictions are label maps or probability maps. A float map with values in [0, 1] that are not all
  whole numbers is a probability map: one channel is the foreground probability (binary task, label
  ``p >= 0.5``), several channels are per-label probabilities (channel ``c`` is label ``c``, labels by
  argmax). In a binary task an 8-bit raster prediction (PNG, JPEG, ...) with values other than {0, 1, 255}
  is a grey probability map ``value / 255`` (what polyp networks save). Probabilities feed MAE and the
  polyp measures; the other metrics see the thresholded labels.
- Ground-truth cases without a prediction (``missing``) and predictions without a truth (``extra``) are
  listed in the summary and logged, and left out of the statistics, as are unreadable cases.

Outputs in ``out_dir`` (default ``PRED/evaluation``), each written atomically: ``metrics.csv``
(``case,class,metric,value``), ``summary.json`` (:mod:`medseg.metrics.aggregate`) and ``report.html``
(:mod:`medseg.engine.report`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import multiprocessing
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from medseg.data.cases import read_case
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
from medseg.engine.display import display_image
from medseg.engine.inference import probabilities_to_labels
from medseg.engine.report import Overlay, ReportInfo, write_report
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.metrics.aggregate import Row, json_safe, summarize
from medseg.metrics.case import METRIC_NAMES, check_metric_names, evaluate_case
from medseg.metrics.overlap import dice

logger = logging.getLogger(__name__)

#: Folders of a data set root that hold the ground truth, and the sibling folders that hold images.
LABEL_FOLDERS = ("labelsTr", "masks", "mask", "labels", "label", "gt", "ground_truth", "groundtruth")
IMAGE_FOLDERS = ("imagesTr", "images", "image", "imgs")
#: Raster formats whose 8-bit predictions may be grey probability maps (binary tasks).
RASTER_FORMATS = ("png", "jpeg", "bmp", "tiff")
#: Below this many cases the cases are evaluated in this process (no pool start-up).
POOL_MIN_CASES = 8
#: Worst and best cases shown as overlays in the report.
OVERLAY_CASES = 5

T = TypeVar("T")
R = TypeVar("R")


# ----------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------
# Evaluating cases (in worker processes when there are many)
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaseJob:
    """Everything a worker needs to evaluate one case; ``classes`` ``None``: the labels of the case's own
    truth (a guess at the union over all truths, checked afterwards: see :func:`_evaluate_cases`)."""

    pair: CasePair
    classes: tuple[int, ...] | None
    metrics: tuple[str, ...]
    nsd_tolerance: float


@dataclass(frozen=True)
class _Packed:
    """A label map kept compressed (zlib) until the report needs it."""

    data: bytes
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, array: np.ndarray) -> _Packed:
        array = np.ascontiguousarray(array)
        return cls(zlib.compress(array.tobytes(), 1), array.shape, array.dtype.str)

    def array(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.data), dtype=self.dtype).reshape(self.shape)


@dataclass(frozen=True)
class OverlayView:
    """What the report draws of one case, taken from the arrays the case was evaluated with (so that no
    file is read again for the report): truth and prediction restricted to the classes, in 2D; of a 3D
    case the slice along the first axis with the most wrong voxels (:func:`error_slice`)."""

    truth: _Packed
    prediction: _Packed
    empty_prediction: bool
    aspect: float
    slice_index: int | None = None
    slices: int = 0


def overlay_view(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                 classes: Sequence[int]) -> OverlayView:
    """The :class:`OverlayView` of a case's prediction and truth labels ``[*spatial]``."""
    keep = np.isin(truth, classes)
    truth = np.where(keep, truth, 0)
    predicted = np.where(np.isin(prediction, classes), prediction, 0)
    empty, index = not predicted.any(), None
    if truth.ndim == 3:
        index = error_slice(predicted, truth)
        truth, predicted, spacing = truth[index], predicted[index], spacing[1:]
    return OverlayView(_Packed.of(truth), _Packed.of(predicted), empty, spacing[0] / spacing[1], index,
                       keep.shape[0])


@dataclass(frozen=True)
class CaseResult:
    """The rows of one case, its mean Dice over the classes (for ranking), or the problem that stopped it;
    the classes it was evaluated for, its truth's non-zero labels (``None``: the truth was not read) and
    its overlay view."""

    case_id: str
    rows: list[Row]
    dice: float
    problem: str | None = None
    classes: tuple[int, ...] | None = None
    truth_labels: frozenset[int] | None = None
    view: OverlayView | None = None


def evaluate_job(job: CaseJob) -> CaseResult:
    """Evaluate one case, reading its truth once; a bad file, a size mismatch or probabilities that do not
    fit the classes become the result's ``problem``."""
    identifier, found, classes = job.pair.case_id, None, job.classes
    try:
        truth, spacing = read_truth(job.pair.truth)
        if classes is None:
            found = frozenset(int(v) for v in np.unique(truth) if v != 0)
            classes = tuple(sorted(found)) or (1,)
        prediction = _fitted_prediction(job.pair.prediction, classes, truth.shape)
        values = evaluate_case(prediction.labels, truth, classes=list(classes), spacing=spacing,
                               metrics=list(job.metrics), probabilities=prediction.probabilities,
                               nsd_tolerance=job.nsd_tolerance)
    except MedsegError as error:
        problem = f"{error.path.name}: {error.problem}" if isinstance(error, DataError) else str(error)
        return CaseResult(identifier, [], float("nan"), problem, classes, found)
    rows = [(identifier, int(label), name, float(value)) for label, name, value in values]
    ranking = float(np.mean([dice(prediction.labels == c, truth == c) for c in classes]))
    return CaseResult(identifier, rows, ranking, None, classes, found,
                      overlay_view(prediction.labels, truth, spacing, classes))


def truth_labels(path: Path) -> set[int] | str:
    """The non-zero labels of a ground-truth file, or the reason it cannot be read."""
    try:
        labels, _ = read_mask(path)
    except DataError as error:
        return f"{error.path.name}: {error.problem}"
    return {int(v) for v in np.unique(labels) if v != 0}


@contextlib.contextmanager
def _executor(workers: int, n_items: int) -> Iterator[Executor | None]:
    """A process pool (fork: workers inherit the imported modules, no start-up cost) for many items."""
    if workers < 2 or n_items < POOL_MIN_CASES or "fork" not in multiprocessing.get_all_start_methods():
        yield None
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: workers use numpy only
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            yield pool


def parallel_map(fn: Callable[[T], R], items: Sequence[T], *, workers: int, progress: bool,
                 description: str) -> list[R]:
    """``[fn(item) for item in items]``, in a process pool when there are many, with a progress bar."""
    bar = tqdm(total=len(items), desc=description, unit="case", file=sys.stderr,
               disable=None if progress else True)
    with bar, _executor(workers, len(items)) as pool:
        if pool is None:
            results = []
            for item in items:
                results.append(fn(item))
                bar.update()
            return results
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        ordered: list[Any] = [None] * len(items)
        for future in as_completed(futures):
            ordered[futures[future]] = future.result()
            bar.update()
        return ordered


def _evaluate_cases(pairs: Sequence[CasePair], labels: Sequence[int] | None, metrics: tuple[str, ...],
                    nsd_tolerance: float, workers: int, progress: bool
                    ) -> tuple[tuple[int, ...], list[CaseResult]]:
    """The classes and the result of every pair, each truth read once where possible.

    With ``labels`` every case is evaluated for those. Without, the classes are the union of the truths'
    non-zero labels: each case is first evaluated for the labels of its own truth, and only the cases
    whose labels are not the union are evaluated again (reading their files again), for the union.
    """
    given = None if labels is None else tuple(sorted({int(c) for c in labels}))
    jobs = [CaseJob(p, given, metrics, nsd_tolerance) for p in pairs]
    results = parallel_map(evaluate_job, jobs, workers=workers, progress=progress, description="evaluate")
    if given is not None:
        return given, results
    union: set[int] = set().union(*(r.truth_labels for r in results if r.truth_labels is not None))
    if not union:
        logger.warning("the ground truth holds no foreground label; evaluating label 1")
    classes = tuple(sorted(union)) or (1,)
    again = [i for i, r in enumerate(results) if r.truth_labels is not None and r.classes != classes]
    redone = parallel_map(evaluate_job, [replace(jobs[i], classes=classes) for i in again], workers=workers,
                          progress=progress, description="evaluate (all classes)")
    for i, result in zip(again, redone, strict=True):
        results[i] = result
    return classes, results


# ----------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------

@dataclass
class Summary:
    """The result of :func:`evaluate_folders`.

    Attributes:
        data: the summary (``cases``, ``metrics``, ``missing``, ``extra``, ``problems``, ...), NaN kept.
        rows: ``(case, class, metric, value)`` for every evaluated case.
        dice: the mean Dice over the classes of each evaluated case (the ranking of the overlays).
        files: the written files by name (``metrics.csv``, ``summary.json``, ``report.html``).
    """

    data: dict[str, Any]
    rows: list[Row]
    dice: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return self.data["missing"]

    @property
    def extra(self) -> list[str]:
        return self.data["extra"]

    @property
    def problems(self) -> dict[str, str]:
        return self.data["problems"]

    def to_json(self) -> dict[str, Any]:
        """The summary as written to ``summary.json`` (NaN as ``null``, keys as strings)."""
        return json_safe(self.data)


def metric_names(metrics: Sequence[str] | None) -> tuple[str, ...]:
    """The metric names (all of them for ``None``) without repeats; unknown names raise."""
    if metrics is not None and not metrics:
        raise MedsegError(f"no metric asked for; known: {', '.join(METRIC_NAMES)}")
    return tuple(dict.fromkeys(check_metric_names(metrics)))


def _check_folder(path: Path, role: str) -> Path:
    if not path.exists():
        raise MedsegError(f"{role} folder {path} does not exist")
    if not path.is_dir():
        raise MedsegError(f"{role} {path} is not a folder")
    return path


def _log_unmatched(matching: Matching) -> None:
    def listed(ids: Sequence[str]) -> str:
        return ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")

    if matching.missing:
        logger.warning("%d ground-truth case%s without a prediction (missing): %s", len(matching.missing),
                       "s" if len(matching.missing) > 1 else "", listed(matching.missing))
    if matching.extra:
        logger.warning("%d prediction%s without a ground truth (extra): %s", len(matching.extra),
                       "s" if len(matching.extra) > 1 else "", listed(matching.extra))


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, out_dir: str | Path | None = None,
                     metrics: Sequence[str] | None = None, labels: Sequence[int] | None = None,
                     nsd_tolerance: float = 1.0, progress: bool = True, workers: int = 2) -> Summary:
    """Evaluate every prediction of ``pred_dir`` against ``gt_dir`` and write CSV, JSON and HTML report.

    Args:
        pred_dir: folder of predictions (label or probability maps, any supported format).
        gt_dir: folder of ground-truth masks, or a data set root (``labelsTr/``, ``masks/``).
        out_dir: where to write ``metrics.csv``, ``summary.json`` and ``report.html``
            (default ``pred_dir/evaluation``); ``None`` files are written there too.
        metrics: metric names (default: all of :data:`medseg.metrics.case.METRIC_NAMES`).
        labels: the classes to evaluate (default: every non-zero label of the ground truth).
        nsd_tolerance: the NSD tolerance in physical units (mm).
        progress: show progress bars (on terminals).
        workers: processes evaluating cases when there are many (1: in this process).

    Raises:
        MedsegError: a missing folder, an unknown metric, bad labels or no case to evaluate at all.
    """
    pred_dir = _check_folder(Path(pred_dir), "prediction")
    gt_dir = _check_folder(Path(gt_dir), "ground-truth")
    names = metric_names(metrics)
    if nsd_tolerance < 0:
        raise MedsegError(f"the NSD tolerance must be >= 0, got {nsd_tolerance}")
    if labels is not None and (not labels or any(int(c) < 1 for c in labels)):
        raise MedsegError(f"labels must be positive label values, got {list(labels)}")
    matching = match_cases(pred_dir, gt_dir)
    if not matching.pairs:
        raise MedsegError(f"no case of {pred_dir} matches a ground-truth case of {gt_dir} "
                          f"({len(matching.extra)} predictions, {len(matching.missing)} ground-truth cases)")
    _log_unmatched(matching)
    problems = dict(matching.problems)
    pairs = matching.pairs
    classes, results = _evaluate_cases(pairs, labels, names, float(nsd_tolerance), workers, progress)
    rows: list[Row] = []
    ranking: dict[str, float] = {}
    views: dict[str, OverlayView] = {}
    for result in results:
        if result.problem is not None:
            problems[result.case_id] = result.problem
        else:
            rows += result.rows
            ranking[result.case_id] = result.dice
            if result.view is not None:
                views[result.case_id] = result.view
    problems = dict(sorted(problems.items()))
    if not rows:  # one error line, not a warning per case before it
        first, problem = next(iter(problems.items()))
        raise MedsegError(f"no case could be evaluated ({len(problems)} with problems), e.g. {first}: "
                          f"{problem}")
    for identifier, problem in problems.items():
        logger.warning("%s: %s (case left out)", identifier, problem)
    data = summarize(rows, missing=matching.missing, extra=matching.extra, metric_order=names)
    data.update(classes=list(classes), problems=problems, prediction_folder=str(pred_dir),
                ground_truth_folder=str(gt_dir), nsd_tolerance=float(nsd_tolerance))
    summary = Summary(data, rows, ranking)
    out = Path(out_dir) if out_dir is not None else pred_dir / "evaluation"
    write_outputs(summary, out, {p.case_id: p for p in pairs}, views)
    return summary


# ----------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------

def metrics_csv(rows: Sequence[Row]) -> str:
    """The long-form CSV ``case,class,metric,value`` (full float precision; NaN as ``nan``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "class", "metric", "value"])
    writer.writerows((case, label, metric, repr(float(value))) for case, label, metric, value in rows)
    return buffer.getvalue()


def _display_image(pair: CasePair, shape: tuple[int, ...], index: int | None) -> np.ndarray | None:
    """The picture (:func:`~medseg.engine.display.display_image`) of the case's image, of a 3D image its
    slice ``index`` (first channel), or ``None`` when absent, unreadable or of another shape than the
    truth."""
    if pair.image is None:
        return None
    try:
        image = read_case(Case(pair.case_id, [pair.image]))[0]
    except DataError as error:
        logger.info("overlay without its image: %s", error)
        return None
    if image.shape[1:] != shape:
        return None
    return display_image(image if index is None else image[:1, index])


def error_slice(prediction: np.ndarray, truth: np.ndarray) -> int:
    """The index along the first axis with the most voxels where prediction and truth differ (the
    slice with the most truth foreground when they agree everywhere, else the middle one)."""
    axes = tuple(range(1, truth.ndim))
    errors = np.count_nonzero(prediction != truth, axis=axes)
    if errors.any():
        return int(np.argmax(errors))
    foreground = np.count_nonzero(truth, axis=axes)
    return int(np.argmax(foreground)) if foreground.any() else truth.shape[0] // 2


def make_overlay(pair: CasePair, classes: Sequence[int], score: float,
                 view: OverlayView | None = None) -> Overlay | None:
    """The picture of one case: image (or the truth as grey), truth and prediction, 3D: the worst slice;
    from its :class:`OverlayView` when given, else from the files."""
    if view is None:
        try:
            prediction, truth, spacing = read_pair(pair, classes)
        except DataError as error:
            logger.info("no overlay of %s: %s", pair.case_id, error)
            return None
        view = overlay_view(prediction.labels, truth, spacing, classes)
    truth, predicted = view.truth.array(), view.prediction.array()
    full_shape = truth.shape if view.slice_index is None else (view.slices, *truth.shape)
    image = _display_image(pair, full_shape, view.slice_index)
    caption = f"{pair.case_id} — Dice {score:.3f}" + (" — empty prediction" if view.empty_prediction else "")
    if view.slice_index is not None:
        caption += f" — slice {view.slice_index} of {view.slices} (axis 0)"
    return Overlay(pair.case_id, score, caption, image, truth, predicted, aspect=view.aspect)


def _ranked_overlays(summary: Summary, pairs: dict[str, CasePair], classes: Sequence[int],
                     views: dict[str, OverlayView]) -> tuple[list[Overlay], list[Overlay]]:
    order = sorted(summary.dice, key=lambda c: (summary.dice[c], c))
    worst = order[:OVERLAY_CASES]
    best = [c for c in reversed(order) if c not in worst][:OVERLAY_CASES]

    def pictures(ids: Sequence[str]) -> list[Overlay]:
        found = (make_overlay(pairs[c], classes, summary.dice[c], views.get(c)) for c in ids)
        return [o for o in found if o is not None]

    return pictures(worst), pictures(best)


def write_outputs(summary: Summary, out_dir: Path, pairs: dict[str, CasePair],
                  views: dict[str, OverlayView] | None = None) -> None:
    """Write ``metrics.csv``, ``summary.json`` and ``report.html`` into ``out_dir`` (the overlays from
    the cases' ``views`` where given, else from their files)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegError(f"cannot create the output folder {out_dir}: {exc.strerror}") from None
    files = {name: out_dir / name for name in ("metrics.csv", "summary.json", "report.html")}
    classes = summary.data["classes"]
    worst, best = _ranked_overlays(summary, pairs, classes, views or {})
    info = ReportInfo(prediction_folder=summary.data["prediction_folder"],
                      ground_truth_folder=summary.data["ground_truth_folder"],
                      date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    try:
        write_text_atomically(files["metrics.csv"], metrics_csv(summary.rows))
        write_text_atomically(files["summary.json"], json.dumps(summary.to_json(), indent=1) + "\n")
        write_report(files["report.html"], summary.data, summary.rows, worst, best, info)
    except OSError as exc:
        raise MedsegError(f"cannot write into {out_dir}: {exc.strerror}") from None
    summary.files = files


# ----------------------------------------------------------------------------------------------------
# Instance segmentation (``medseg evaluate --instance``)
# ----------------------------------------------------------------------------------------------------

def evaluate_instance_folders(pred_dir: str | Path, gt_dir: str | Path, out_dir: str | Path | None = None,
                              progress: bool = True, max_detections: int | None = None) -> Summary:
    """Evaluate instance label maps of ``pred_dir`` against ``gt_dir``: ``metrics.csv`` and ``summary.json``.

    Cases are paired as by :func:`evaluate_folders` (:func:`match_cases`). Predictions and truths are
    instance label maps (0 background, one id per object; 16-bit PNG/TIFF, NIfTI or any lossless format
    read by :func:`medseg.data.io.read_mask`; JPEG cannot hold ids and is refused). Scores for AP come
    from an optional sidecar ``{case}_instances.json`` beside the prediction,
    ``{"scores": {"<id>": <score>, ...}}`` naming every predicted id; without one every predicted
    instance scores 1 (ids of the sidecar that the map lacks are ignored). ``read_mask`` turns a 2D map of
    exactly {0, 255} into {0, 1}: a one-object map with id 255 then has id 1. Metrics and conventions:
    :mod:`medseg.metrics.instance`.

    ``metrics.csv`` holds ``case,class,metric,value`` rows (class 1: one category) of
    :data:`~medseg.metrics.instance.CASE_METRICS`; ``summary.json`` their statistics over cases
    (:func:`~medseg.metrics.aggregate.summarize`) and ``ap``: COCO AP, AP50, AP75 and AP per threshold
    computed once over the detections of all cases (not a mean of per-image APs). Unreadable cases, bad
    sidecars and size mismatches are left out and listed in ``problems``.
    """
    from medseg.metrics.instance import CASE_METRICS, InstanceEvaluation

    pred_dir = _check_folder(Path(pred_dir), "prediction")
    gt_dir = _check_folder(Path(gt_dir), "ground-truth")
    if max_detections is not None and max_detections < 1:
        raise MedsegError(f"max_detections must be positive, got {max_detections}")
    matching = match_cases(pred_dir, gt_dir)
    if not matching.pairs:
        raise MedsegError(f"no case of {pred_dir} matches a ground-truth case of {gt_dir} "
                          f"({len(matching.extra)} predictions, {len(matching.missing)} ground-truth cases)")
    _log_unmatched(matching)
    problems = dict(matching.problems)
    evaluation = InstanceEvaluation(max_detections=max_detections)

    def evaluate_pair(pair: CasePair) -> None:
        try:
            truth, _ = read_truth(pair.truth)
            labels, geometry = read_mask(pair.prediction)
            if geometry.source_format == "jpeg":
                raise DataError(pair.prediction, "JPEG is lossy and cannot hold instance ids")
            prediction = _fit_shape(pair.prediction, labels[0], truth.shape)
            sidecar = pair.prediction.parent / f"{pair.case_id}_instances.json"
            scores = None
            if sidecar.is_file():
                try:
                    content = json.loads(sidecar.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise DataError(sidecar, f"not readable as JSON ({exc})") from None
                expected = 'expected {"scores": {"<instance id>": <score>, ...}}'
                if not isinstance(content, dict) or not isinstance(content.get("scores"), dict):
                    raise DataError(sidecar, expected)
                try:
                    scores = {int(key): float(value) for key, value in content["scores"].items()}
                except (TypeError, ValueError):
                    raise DataError(sidecar, f"{expected} with integer ids and numbers") from None
                if not np.all(np.isfinite(list(scores.values()))):
                    raise DataError(sidecar, "scores must be finite numbers")
                lacking = [int(i) for i in np.unique(prediction) if i > 0 and int(i) not in scores]
                if lacking:
                    shown = ", ".join(map(str, lacking[:5])) + (" ..." if len(lacking) > 5 else "")
                    raise DataError(sidecar, f"no score for predicted instance(s) {shown}")
            try:
                evaluation.add(pair.case_id, prediction, truth, scores)
            except MedsegError as error:  # the maps themselves (e.g. negative ids)
                raise DataError(pair.prediction, str(error)) from None
        except DataError as error:
            problems[pair.case_id] = f"{error.path.name}: {error.problem}"

    parallel_map(evaluate_pair, matching.pairs, workers=1, progress=progress, description="evaluate")
    problems = dict(sorted(problems.items()))
    if not evaluation.cases:
        first, problem = next(iter(problems.items()))
        raise MedsegError(f"no case could be evaluated ({len(problems)} with problems), e.g. {first}: "
                          f"{problem}")
    for identifier, problem in problems.items():
        logger.warning("%s: %s (case left out)", identifier, problem)
    rows: list[Row] = [(case, 1, name, values[name]) for case, values in evaluation.cases.items()
                       for name in CASE_METRICS]
    data = summarize(rows, missing=matching.missing, extra=matching.extra, metric_order=CASE_METRICS)
    data.update(ap=evaluation.average_precision(), classes=[1], problems=problems, mode="instance",
                prediction_folder=str(pred_dir), ground_truth_folder=str(gt_dir),
                max_detections=max_detections)
    summary = Summary(data, rows, {})
    out = Path(out_dir) if out_dir is not None else pred_dir / "evaluation"
    files = {name: out / name for name in ("metrics.csv", "summary.json")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(files["metrics.csv"], metrics_csv(rows))
        write_text_atomically(files["summary.json"], json.dumps(summary.to_json(), indent=1) + "\n")
    except OSError as exc:
        raise MedsegError(f"cannot write into {out}: {exc.strerror}") from None
    summary.files = files
    return summary
