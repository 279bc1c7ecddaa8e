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
)
from medseg.data.geometry import DataError
from medseg.data.io import read_mask
from medseg.engine.display import display_image
from medseg.engine.pairing import (  # re-exported: medseg.engine.evaluate named them before the split
    IMAGE_FOLDERS,
    LABEL_FOLDERS,
    CasePair,
    Matching,
    Prediction,
    _fitted_prediction,
    ground_truth,
    match_cases,
    read_pair,
    read_prediction,
    read_truth,
)
from medseg.engine.report import Overlay, ReportInfo, write_report
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.metrics.aggregate import Row, json_safe, summarize
from medseg.metrics.case import METRIC_NAMES, check_metric_names, evaluate_case
from medseg.metrics.overlap import dice

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_FOLDERS", "LABEL_FOLDERS", "CaseJob", "CasePair", "CaseResult", "Matching", "Prediction",
           "Summary", "evaluate_folders", "evaluate_job", "ground_truth",
           "match_cases", "metrics_csv", "parallel_map", "read_pair", "read_prediction", "read_truth"]

#: Below this many cases the cases are evaluated in this process (no pool start-up).
POOL_MIN_CASES = 8
#: Worst and best cases shown as overlays in the report.
OVERLAY_CASES = 5

T = TypeVar("T")
R = TypeVar("R")


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


def matched_cases(pred_dir: Path, gt_dir: Path) -> Matching:
    """The pairs of ``pred_dir`` and ``gt_dir`` (:func:`match_cases`), the unmatched cases logged; no pair
    at all is an error."""
    matching = match_cases(pred_dir, gt_dir)
    if not matching.pairs:
        raise MedsegError(f"no case of {pred_dir} matches a ground-truth case of {gt_dir} "
                          f"({len(matching.extra)} predictions, {len(matching.missing)} ground-truth cases)")
    _log_unmatched(matching)
    return matching


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
    matching = matched_cases(pred_dir, gt_dir)
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
