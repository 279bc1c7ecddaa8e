"""Aggregation of per-case metric values into the evaluation summary.

Input: long-form rows ``(case, class, metric, value)`` as written to ``metrics.csv``. Output: the
``summary.json`` structure

    {"cases": N,
     "metrics": {name: {"mean", "std", "median", "count", "nan", "per_class": {class: mean}}},
     "missing": [...], "extra": [...]}

Conventions:

- Statistics of a metric pool every ``(case, class)`` value; ``per_class`` averages one class over cases.
- Only finite values enter the mean, standard deviation (population, ``ddof=0``, as ``numpy.std``) and
  median. Non-finite values (NaN: e.g. a distance to an empty mask; +-inf: a configured worst value of
  infinity) are never dropped silently: ``nan`` counts them and ``count`` counts the finite ones.
- A metric (or class) without a single finite value has mean, std and median ``NaN``, written as ``null``
  in JSON (:func:`json_safe`), since JSON has no NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: One long-form value: ``(case id, class label, metric name, value)``.
Row = tuple[str, int, str, float]


@dataclass(frozen=True)
class Statistics:
    """Mean, population std and median of the finite values, their count, and the non-finite count."""

    mean: float
    std: float
    median: float
    count: int
    nan: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "median": self.median, "count": self.count,
                "nan": self.nan}


def statistics(values: Iterable[float]) -> Statistics:
    """Statistics over the finite ``values``; the non-finite ones are counted in ``nan``."""
    array = np.asarray(list(values), dtype=np.float64)
    finite = array[np.isfinite(array)]
    nan = int(array.size - finite.size)
    if finite.size == 0:
        return Statistics(math.nan, math.nan, math.nan, 0, nan)
    return Statistics(float(finite.mean()), float(finite.std()), float(np.median(finite)), int(finite.size),
                      nan)


def values_by_metric(rows: Iterable[Row]) -> dict[str, dict[int, list[float]]]:
    """``{metric: {class: [values over cases]}}`` in the order metrics and classes first appear."""
    grouped: dict[str, dict[int, list[float]]] = {}
    for _, label, metric, value in rows:
        grouped.setdefault(metric, {}).setdefault(int(label), []).append(float(value))
    return grouped


def per_case_mean(rows: Iterable[Row], metric: str) -> dict[str, float]:
    """The mean of ``metric`` over the classes of each case (finite values only; NaN when none)."""
    by_case: dict[str, list[float]] = {}
    for case, _, name, value in rows:
        if name == metric:
            by_case.setdefault(case, []).append(float(value))
    return {case: statistics(values).mean for case, values in by_case.items()}


def summarize(rows: Sequence[Row], *, missing: Sequence[str] = (), extra: Sequence[str] = (),
              metric_order: Sequence[str] | None = None) -> dict[str, Any]:
    """The summary of the rows (see the module docstring); not yet JSON-safe (NaN stays NaN).

    Args:
        rows: ``(case, class, metric, value)`` for every evaluated case.
        missing: ground-truth cases without a prediction.
        extra: predictions without a ground truth.
        metric_order: the order of the metrics in the summary (default: first appearance in ``rows``);
            metrics of ``rows`` that it does not name follow in order of appearance.
    """
    grouped = values_by_metric(rows)
    names = list(dict.fromkeys([*(m for m in metric_order or () if m in grouped), *grouped]))
    metrics = {}
    for name in names:
        by_class = grouped[name]
        pooled = statistics(v for values in by_class.values() for v in values)
        per_class = {label: statistics(values).mean for label, values in sorted(by_class.items())}
        metrics[name] = {**pooled.as_dict(), "per_class": per_class}
    return {"cases": len({row[0] for row in rows}), "metrics": metrics, "missing": sorted(missing),
            "extra": sorted(extra)}


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and mapping keys as strings (JSON has neither NaN
    nor integer keys); tuples become lists and numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
