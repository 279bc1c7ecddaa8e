"""Overlap metrics: hand-computed values on tiny arrays, empty-mask conventions, MONAI's Dice and IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medseg.metrics import overlap
from medseg.metrics.overlap import Confusion

# A = prediction, B = truth: TP = 2, FP = 2, FN = 1, TN = 1 (N = 6)
PRED = np.array([[1, 1, 1], [0, 1, 0]], bool)
GT = np.array([[1, 0, 0], [1, 1, 0]], bool)
HAND = {
    "dice": 4 / 7,  # 2·2 / (4 + 3)
    "iou": 2 / 5,  # 2 / |A ∪ B| = 2 / 5
    "voe": 3 / 5,
    "rvd": 1 / 3,  # (4 - 3) / 3
    "accuracy": 3 / 6,  # (TP + TN) / N
    "precision": 2 / 4,
    "recall": 2 / 3,
    "specificity": 1 / 3,  # TN / (TN + FP) = 1 / 3
    "fpr": 2 / 3,  # FP / (FP + TN)
    "fnr": 1 / 3,  # FN / (FN + TP)
    "fbeta": 4 / 7,  # F1 = Dice
}


def test_confusion_counts() -> None:
    assert Confusion.of(PRED, GT) == Confusion(tp=2, fp=2, fn=1, tn=1)


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_computed_values(name: str) -> None:
    assert getattr(overlap, name)(PRED, GT) == pytest.approx(HAND[name], abs=1e-12)


def test_fbeta_weights_recall_by_beta() -> None:
    # (1 + β²)TP / ((1 + β²)TP + β²FN + FP): β = 2 → 10 / (10 + 4 + 2); β = 0.5 → 2.5 / (2.5 + 0.25 + 2)
    assert overlap.fbeta(PRED, GT, beta=2.0) == pytest.approx(10 / 16)
    assert overlap.fbeta(PRED, GT, beta=0.5) == pytest.approx(2.5 / 4.75)


def test_rvd_is_signed() -> None:
    assert overlap.rvd(GT, PRED) == pytest.approx((3 - 4) / 4)


def test_mae_on_probabilities_and_masks() -> None:
    prob = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.0]])
    # |0.9-1| + 0.2 + 0.6 + |0.1-1| + |0.7-1| + 0 = 0.1 + 0.2 + 0.6 + 0.9 + 0.3 = 2.1
    assert overlap.mae(prob, GT) == pytest.approx(2.1 / 6)
    assert overlap.mae(PRED, GT) == pytest.approx(3 / 6)  # a mask: (FP + FN) / N
    assert overlap.mae(torch.tensor(prob, dtype=torch.float32), torch.from_numpy(GT)) == pytest.approx(0.35)


def test_both_empty_convention() -> None:
    empty = np.zeros((3, 4), bool)
    expected = dict(dice=1, iou=1, voe=0, rvd=0, accuracy=1, precision=1, recall=1, specificity=1, fbeta=1,
                    fpr=0, fnr=0)
    assert {name: getattr(overlap, name)(empty, empty) for name in expected} == expected


def test_one_empty_convention() -> None:
    empty = np.zeros_like(GT)
    assert overlap.dice(empty, GT) == 0 and overlap.iou(empty, GT) == 0 and overlap.voe(empty, GT) == 1
    assert overlap.precision(empty, GT) == 0 and overlap.recall(empty, GT) == 0
    assert overlap.rvd(empty, GT) == -1
    assert overlap.fbeta(empty, GT, 2.0) == 0
    assert overlap.dice(GT, empty) == 0 and overlap.recall(GT, empty) == 0
    assert overlap.precision(GT, empty) == 0
    assert math.isnan(overlap.rvd(GT, empty))
    assert overlap.fnr(empty, GT) == 1 and overlap.fpr(empty, GT) == 0  # everything missed, nothing false
    assert overlap.fnr(GT, empty) == 1 and overlap.fpr(GT, empty) == 3 / 6  # as recall: 0 on an empty truth


def test_fpr_and_fnr_of_a_4x4_case_by_hand() -> None:
    # truth: the top-left 2x2 block (4 pixels); prediction: its top row plus two pixels outside
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = True
    pred[3, 2:] = True
    # TP 2, FN 2 (the second row of the block), FP 2, TN 16 - 6 = 10
    assert Confusion.of(pred, gt) == Confusion(tp=2, fp=2, fn=2, tn=10)
    assert overlap.fpr(pred, gt) == 2 / 12 and overlap.fnr(pred, gt) == 2 / 4
    assert overlap.fpr(pred, gt) == pytest.approx(1 - overlap.specificity(pred, gt), abs=1e-15)
    assert overlap.fnr(pred, gt) == pytest.approx(1 - overlap.recall(pred, gt), abs=1e-15)


def test_specificity_without_negatives_is_one() -> None:
    full = np.ones((2, 2), bool)
    assert overlap.specificity(full, full) == 1.0 and overlap.fpr(full, full) == 0.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        overlap.dice(np.zeros((2, 3)), np.zeros((3, 2)))


@pytest.mark.parametrize("shape", [(17, 23), (9, 11, 13)])
def test_dice_and_iou_match_monai(shape: tuple[int, ...]) -> None:
    from monai.metrics import compute_dice, compute_iou

    rng = np.random.default_rng(len(shape))
    pred, gt = rng.random(shape) < 0.4, rng.random(shape) < 0.3
    y_pred = torch.from_numpy(np.stack([~pred, pred])[None]).float()
    y = torch.from_numpy(np.stack([~gt, gt])[None]).float()
    expected_dice = compute_dice(y_pred, y, include_background=False).item()
    expected_iou = compute_iou(y_pred, y, include_background=False).item()
    assert overlap.dice(pred, gt) == pytest.approx(expected_dice, rel=1e-6)
    assert overlap.iou(pred, gt) == pytest.approx(expected_iou, rel=1e-6)
