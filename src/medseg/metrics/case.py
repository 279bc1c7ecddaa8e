"""Every metric of one case, class by class: the confusion counts and the surface distances once per class.

Classes are evaluated one-vs-rest on label maps: class c's masks are ``pred_labels == c`` and
``gt_labels == c``. MAE and the polyp measures use class c's probability map when ``probabilities`` is
given, else the binary prediction mask as a 0/1 probability. Empty-mask conventions are those of
:mod:`medseg.metrics.overlap`, :mod:`medseg.metrics.surface` and :mod:`medseg.metrics.polyp`; distances to
an empty mask are ``empty_distance`` (NaN by default: reported and counted, never dropped).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.metrics.overlap import Confusion, as_numpy, mae
from medseg.metrics.polyp import e_measure, s_measure, to_probability, weighted_fbeta
from medseg.metrics.surface import DISTANCE_METRICS, distance_metrics

OVERLAP_METRICS: dict[str, Callable[[Confusion], float]] = {
    "dice": Confusion.dice,
    "iou": Confusion.iou,
    "voe": Confusion.voe,
    "rvd": Confusion.rvd,
    "accuracy": Confusion.accuracy,
    "precision": Confusion.precision,
    "recall": Confusion.recall,
    "specificity": Confusion.specificity,
    "fpr": Confusion.fpr,
    "fnr": Confusion.fnr,
    "fbeta": Confusion.fbeta,
}
PROBABILITY_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "mae": mae,
    "s_measure": s_measure,
    "weighted_fbeta": weighted_fbeta,
}
E_MEASURES = ("e_measure_mean", "e_measure_max")
METRIC_NAMES: tuple[str, ...] = (*OVERLAP_METRICS, "mae", *DISTANCE_METRICS, "s_measure", *E_MEASURES,
                                 "weighted_fbeta")


def check_metric_names(metrics: Iterable[str] | None) -> tuple[str, ...]:
    """The requested metric names in order (all of :data:`METRIC_NAMES` for None); unknown names raise."""
    names = METRIC_NAMES if metrics is None else tuple(metrics)
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise MedsegError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRIC_NAMES)}")
    return names


def _class_probability(probabilities: np.ndarray | None, label: int, pred: np.ndarray) -> np.ndarray:
    """Class ``label``'s probability map as float64 in [0, 1]: channel ``label`` (a single channel is the
    foreground probability of a binary task: class 1 takes it, class 0 its complement); without
    probabilities, the 0/1 prediction mask. Float rounding overshoot up to 1e-6 is clipped."""
    if probabilities is None:
        return pred.astype(np.float64)
    if probabilities.shape[1:] != pred.shape:
        raise MedsegError(f"probabilities {probabilities.shape} do not match the labels' shape {pred.shape}")
    single = probabilities.shape[0] == 1 and label in (0, 1)
    if not single and not 0 <= label < probabilities.shape[0]:
        raise MedsegError(f"no probability channel for class {label} ({probabilities.shape[0]} channels)")
    channel = probabilities[0 if single else label]
    if np.issubdtype(channel.dtype, np.floating):
        channel = np.where(np.abs(channel - 0.5) <= 0.5 + 1e-6, np.clip(channel, 0.0, 1.0), channel)
    prob = to_probability(channel)
    return 1.0 - prob if single and label == 0 else prob


def _class_values(pred: np.ndarray, gt: np.ndarray, probability: Callable[[], np.ndarray],
                  names: Sequence[str], spacing: Sequence[float], nsd_tolerance: float,
                  empty_distance: float) -> dict[str, float]:
    """The requested metrics of one class (each group computed once, when one of its metrics is asked)."""
    values: dict[str, float] = {}
    if any(m in OVERLAP_METRICS for m in names):
        confusion = Confusion.of(pred, gt)
        values |= {m: f(confusion) for m, f in OVERLAP_METRICS.items() if m in names}
    if any(m in DISTANCE_METRICS for m in names):
        values |= distance_metrics(pred, gt, spacing, nsd_tolerance, empty_distance=empty_distance)
    wanted = [m for m in PROBABILITY_METRICS if m in names]
    if wanted or any(m in E_MEASURES for m in names):
        prob = probability()  # a channel view, or the mask as floats: built only when needed
        values |= {m: PROBABILITY_METRICS[m](prob, gt) for m in wanted}
        if any(m in E_MEASURES for m in names):
            values |= dict(zip(E_MEASURES, e_measure(prob, gt), strict=True))
    return values


def evaluate_case(pred_labels: Any, gt_labels: Any, *, classes: Iterable[int],
                  spacing: Sequence[float] | None, metrics: Iterable[str] | None = None,
                  probabilities: Any = None, nsd_tolerance: float = 1.0,
                  empty_distance: float = math.nan) -> list[tuple[int, str, float]]:
    """``[(class, metric, value), ...]`` for every class in ``classes`` and every requested metric.

    Args:
        pred_labels, gt_labels: integer label maps of one shape ``[*spatial]`` (numpy or torch).
        classes: the class labels to evaluate, each one-vs-rest.
        spacing: voxel spacing per array axis (the ground truth's), for the surface distances; None is 1.
        metrics: names from :data:`METRIC_NAMES` (default: all), in the order of the output.
        probabilities: optional ``[C, *spatial]`` class probabilities for MAE and the polyp measures.
        nsd_tolerance: NSD tolerance τ in the units of ``spacing``.
        empty_distance: the distance reported when exactly one mask is empty (NaN: counted by the summary).
    """
    names = check_metric_names(metrics)
    pred_labels, gt_labels = as_numpy(pred_labels), as_numpy(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise MedsegError(f"prediction shape {pred_labels.shape} differs from ground truth {gt_labels.shape}")
    probs = None if probabilities is None else as_numpy(probabilities)
    spacing = [1.0] * gt_labels.ndim if spacing is None else [float(s) for s in spacing]
    rows: list[tuple[int, str, float]] = []
    for label in classes:
        pred, gt = pred_labels == label, gt_labels == label
        probability = functools.partial(_class_probability, probs, label, pred)
        values = _class_values(pred, gt, probability, names, spacing, nsd_tolerance, empty_distance)
        rows += [(int(label), m, float(values[m])) for m in names]
    return rows
