"""Aggregation of long-form metric rows: statistics against hand computation, NaN counting, JSON safety."""

from __future__ import annotations

import json
import math

import pytest

from medseg.metrics.aggregate import json_safe, per_case_mean, statistics, summarize, values_by_metric

NAN = float("nan")

ROWS = [
    ("a", 1, "dice", 0.5), ("a", 2, "dice", 1.0), ("a", 1, "hd", 2.0), ("a", 2, "hd", NAN),
    ("b", 1, "dice", 0.25), ("b", 2, "dice", 0.75), ("b", 1, "hd", 4.0), ("b", 2, "hd", 6.0),
    ("c", 1, "dice", 0.0), ("c", 2, "dice", 0.5), ("c", 1, "hd", NAN), ("c", 2, "hd", float("inf")),
]


def test_statistics_match_hand_computation() -> None:
    stats = statistics([1.0, 2.0, 4.0, NAN])
    assert stats.mean == pytest.approx(7 / 3)
    # population variance: ((1 - 7/3)^2 + (2 - 7/3)^2 + (4 - 7/3)^2) / 3 = (16/9 + 1/9 + 25/9) / 3 = 14/9
    assert stats.std == pytest.approx(math.sqrt(14 / 9))
    assert stats.median == 2.0
    assert (stats.count, stats.nan) == (3, 1)


def test_statistics_of_no_finite_value_are_nan_and_counted() -> None:
    stats = statistics([NAN, float("-inf")])
    assert math.isnan(stats.mean) and math.isnan(stats.std) and math.isnan(stats.median)
    assert (stats.count, stats.nan) == (0, 2)
    assert statistics([]).nan == 0


def test_summary_pools_classes_and_averages_each_class() -> None:
    summary = summarize(ROWS, missing=["z", "y"], extra=["x"])
    assert summary["cases"] == 3
    assert summary["missing"] == ["y", "z"] and summary["extra"] == ["x"]
    dice = summary["metrics"]["dice"]
    values = [0.5, 1.0, 0.25, 0.75, 0.0, 0.5]
    mean = sum(values) / 6
    assert dice["mean"] == pytest.approx(mean)
    assert dice["std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 6))
    assert dice["median"] == pytest.approx(0.5)
    assert dice["per_class"] == {1: pytest.approx(0.25), 2: pytest.approx(0.75)}
    assert dice["nan"] == 0 and dice["count"] == 6
    hd = summary["metrics"]["hd"]
    assert hd["nan"] == 3 and hd["count"] == 3  # two NaN and one inf, none dropped silently
    assert hd["mean"] == pytest.approx(4.0) and hd["median"] == 4.0
    assert hd["per_class"] == {1: pytest.approx(3.0), 2: pytest.approx(6.0)}


def test_metric_order_is_kept_and_unknown_names_are_skipped() -> None:
    summary = summarize(ROWS, metric_order=["hd", "nsd", "dice"])
    assert list(summary["metrics"]) == ["hd", "dice"]
    assert list(summarize(ROWS)["metrics"]) == ["dice", "hd"]


def test_json_safe_turns_nan_into_null_and_keys_into_strings() -> None:
    rows = [("a", 1, "hd", NAN), ("a", 2, "hd", 3.0)]
    text = json.dumps(json_safe(summarize(rows)), allow_nan=False)
    loaded = json.loads(text)
    assert loaded["metrics"]["hd"]["per_class"] == {"1": None, "2": 3.0}
    assert loaded["metrics"]["hd"]["nan"] == 1


def test_grouping_helpers() -> None:
    grouped = values_by_metric(ROWS)
    assert grouped["dice"][2] == [1.0, 0.75, 0.5]
    means = per_case_mean(ROWS, "hd")
    assert means["a"] == 2.0 and means["b"] == 5.0 and math.isnan(means["c"])
