"""evaluate_case: every requested metric for every class, one confusion count and one distance computation
per class, probability channels, empty classes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.errors import MedsegError
from medseg.metrics import case, overlap, polyp
from medseg.metrics.case import METRIC_NAMES, evaluate_case
from medseg.metrics.surface import distance_metrics

EXPECTED_NAMES = ("dice", "iou", "voe", "rvd", "accuracy", "precision", "recall", "specificity", "fpr",
                  "fnr", "fbeta", "mae", "hd", "hd95", "asd", "assd", "msd", "nsd", "s_measure",
                  "e_measure_mean", "e_measure_max", "weighted_fbeta")


def label_maps(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two label maps with classes 0, 1, 2 from smoothed noise."""
    rng = np.random.default_rng(seed)

    def labels() -> np.ndarray:
        smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        return np.digitize(smooth, [0.3 * smooth.std(), 1.0 * smooth.std()])

    return labels(), labels()


def test_metric_names_are_the_contract() -> None:
    assert METRIC_NAMES == EXPECTED_NAMES


def test_all_metrics_for_every_class_2d() -> None:
    pred, gt = label_maps((40, 36), seed=0)
    probabilities = np.random.default_rng(1).dirichlet(np.ones(3), size=pred.shape).transpose(2, 0, 1)
    spacing = (0.8, 1.3)
    rows = evaluate_case(pred, gt, classes=[0, 1, 2], spacing=spacing, probabilities=probabilities,
                         nsd_tolerance=2.0)
    assert [(c, m) for c, m, _ in rows] == [(c, m) for c in (0, 1, 2) for m in EXPECTED_NAMES]
    values = {(c, m): v for c, m, v in rows}
    for c in (0, 1, 2):
        p, g, prob = pred == c, gt == c, probabilities[c]
        assert values[c, "dice"] == pytest.approx(overlap.dice(p, g))
        assert values[c, "rvd"] == pytest.approx(overlap.rvd(p, g))
        assert values[c, "fbeta"] == pytest.approx(overlap.fbeta(p, g))
        assert values[c, "fpr"] == pytest.approx(overlap.fpr(p, g))
        assert values[c, "fnr"] == pytest.approx(overlap.fnr(p, g))
        assert values[c, "mae"] == pytest.approx(overlap.mae(prob, g))
        distances = distance_metrics(p, g, spacing, tolerance=2.0)
        assert {m: values[c, m] for m in distances} == pytest.approx(distances)
        assert values[c, "s_measure"] == pytest.approx(polyp.s_measure(prob, g))
        e_mean, e_max = polyp.e_measure(prob, g)
        assert values[c, "e_measure_mean"] == pytest.approx(e_mean)
        assert values[c, "e_measure_max"] == pytest.approx(e_max)
        assert values[c, "weighted_fbeta"] == pytest.approx(polyp.weighted_fbeta(prob, g))


def test_all_metrics_3d_torch_inputs_without_probabilities() -> None:
    pred, gt = label_maps((12, 14, 10), seed=2)
    spacing = (2.0, 0.7, 0.7)
    rows = evaluate_case(torch.from_numpy(pred), torch.from_numpy(gt), classes=[1, 2], spacing=spacing)
    assert len(rows) == 2 * len(EXPECTED_NAMES)
    values = {(c, m): v for c, m, v in rows}
    # without probabilities the mask is the probability: MAE = 1 - accuracy
    assert values[1, "mae"] == pytest.approx(1 - overlap.accuracy(pred == 1, gt == 1))
    assert values[2, "hd95"] == pytest.approx(distance_metrics(pred == 2, gt == 2, spacing)["hd95"])


def test_counts_and_distances_once_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"confusion": 0, "distances": 0}
    original_of, original_distances = case.Confusion.of.__func__, case.distance_metrics

    def counting_of(cls: type, pred: np.ndarray, gt: np.ndarray) -> case.Confusion:
        calls["confusion"] += 1
        return original_of(cls, pred, gt)

    def counting_distances(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls["distances"] += 1
        return original_distances(*args, **kwargs)

    monkeypatch.setattr(case.Confusion, "of", classmethod(counting_of))
    monkeypatch.setattr(case, "distance_metrics", counting_distances)
    pred, gt = label_maps((20, 20), seed=3)
    evaluate_case(pred, gt, classes=[1, 2], spacing=None)
    assert calls == {"confusion": 2, "distances": 2}


def test_requested_subset_in_order_and_skipped_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(case, "distance_metrics", None)  # never called without a distance metric
    pred, gt = label_maps((16, 16), seed=4)
    rows = evaluate_case(pred, gt, classes=[2], spacing=(1.0, 1.0), metrics=["mae", "dice", "e_measure_max"])
    assert [m for _, m, _ in rows] == ["mae", "dice", "e_measure_max"]


def test_unknown_metric_and_shape_mismatch_raise() -> None:
    pred, gt = label_maps((8, 8), seed=5)
    with pytest.raises(MedsegError, match="unknown metric"):
        evaluate_case(pred, gt, classes=[1], spacing=None, metrics=["dice", "hd99"])
    with pytest.raises(MedsegError, match="differs"):
        evaluate_case(pred, gt[:4], classes=[1], spacing=None)
    with pytest.raises(MedsegError, match="no probability channel"):
        evaluate_case(pred, gt, classes=[2], spacing=None, metrics=["mae"], probabilities=np.zeros((2, 8, 8)))


def test_single_probability_channel_is_the_foreground() -> None:
    pred, gt = np.zeros((6, 6), int), np.zeros((6, 6), int)
    gt[1:3, 1:3] = pred[1:3, 1:4] = 1
    prob = np.where(gt == 1, 0.75, 0.0)[None]
    result = evaluate_case(pred, gt, classes=[0, 1], spacing=None, metrics=["mae"], probabilities=prob)
    rows = {(c, m): v for c, m, v in result}
    assert rows[1, "mae"] == pytest.approx(4 * 0.25 / 36)
    assert rows[0, "mae"] == pytest.approx(4 * 0.25 / 36)  # 1 - p against the background mask
    as_bytes = evaluate_case(pred, gt, classes=[0, 1], spacing=None, metrics=["mae"],
                             probabilities=np.round(prob * 255).astype(np.uint8))
    assert [v for _, _, v in as_bytes] == pytest.approx([4 * (1 - 191 / 255) / 36] * 2)


def test_probability_rounding_overshoot_is_clipped_and_logits_raise() -> None:
    pred, gt = label_maps((8, 8), seed=6)
    prob = np.full((3, 8, 8), 1 / 3, np.float32)
    prob[1] = 1.0000001
    rows = evaluate_case(pred, gt, classes=[1], spacing=None, metrics=["mae", "s_measure"],
                         probabilities=prob)
    assert rows[0][2] == pytest.approx(overlap.mae(np.ones((8, 8)), gt == 1))
    prob[1] = 3.0
    with pytest.raises(MedsegError, match=r"\[0, 1\]"):
        evaluate_case(pred, gt, classes=[1], spacing=None, metrics=["mae"], probabilities=prob)


def test_empty_classes() -> None:
    pred, gt = np.zeros((10, 10), int), np.zeros((10, 10), int)
    gt[2:5, 2:5] = 1
    names = ["dice", "iou", "voe", "hd", "hd95", "assd", "nsd"]
    rows = {(c, m): v for c, m, v in evaluate_case(pred, gt, classes=[1, 3], spacing=None, metrics=names)}
    assert rows[1, "dice"] == 0 and rows[1, "iou"] == 0 and rows[1, "voe"] == 1 and rows[1, "nsd"] == 0
    assert all(math.isnan(rows[1, m]) for m in ("hd", "hd95", "assd"))
    assert [rows[3, m] for m in names] == [1, 1, 0, 0, 0, 0, 1]  # class 3 absent from both
    worst = {(c, m): v for c, m, v in evaluate_case(pred, gt, classes=[1], spacing=None, metrics=["hd"],
                                                    empty_distance=99.0)}
    assert worst[1, "hd"] == 99.0
