"""Overlap metrics of one class: all from one confusion count (TP, FP, FN, TN), plus MAE on probabilities.

Masks are boolean arrays (numpy or torch) of the same shape; ``pred`` is the prediction A, ``gt`` the
ground truth B. Every metric is a plain float.

Empty-mask conventions (a metric is never silently dropped; NaN is counted by the summary):

- both masks empty: dice, iou, precision, recall, specificity, accuracy and fbeta are 1; voe, rvd, fpr and
  fnr are 0;
- one mask empty: dice, iou and fbeta are 0, voe is 1; precision is 0 when only the prediction is empty
  (nothing found), recall is 0 (and fnr 1) when only the truth is empty (everything predicted is false);
- rvd = (|A| - |B|) / |B| is -1 for an empty prediction and NaN (undefined) for an empty truth with a
  non-empty prediction;
- specificity is 1 and fpr 0 when there are no negatives (TN + FP = 0).

So ``fpr = 1 - specificity`` and ``fnr = 1 - recall`` hold everywhere, empty masks included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import MedsegError


def as_numpy(array: Any, dtype: Any = None) -> np.ndarray:
    """A numpy view (or copy) of a numpy array or torch tensor, optionally cast to ``dtype``."""
    if hasattr(array, "detach"):  # a torch tensor; metrics never need torch itself
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    return array if dtype is None or array.dtype == dtype else array.astype(dtype)


def as_mask_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean numpy arrays of one shape (non-zero is foreground)."""
    pred, gt = as_numpy(pred, bool), as_numpy(gt, bool)
    if pred.shape != gt.shape:
        raise MedsegError(f"prediction and ground truth shapes differ: {pred.shape} vs {gt.shape}")
    return pred, gt


def _ratio(numerator: float, denominator: float, if_empty: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float(if_empty)


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of one class: true/false positives and negatives (prediction A vs truth B)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def of(cls, pred: Any, gt: Any) -> Confusion:
        """Count once: |A ∩ B|, |A| and |B| (three ``count_nonzero`` and one ``&`` over the volume)."""
        pred, gt = as_mask_pair(pred, gt)
        tp = int(np.count_nonzero(pred & gt))
        n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
        return cls(tp=tp, fp=n_pred - tp, fn=n_gt - tp, tn=pred.size - n_pred - n_gt + tp)

    @property
    def both_empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    def dice(self) -> float:
        """Dice similarity coefficient 2|A∩B| / (|A| + |B|) (Dice 1945); 1 when both are empty."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, 1.0)

    def iou(self) -> float:
        """Jaccard index |A∩B| / |A∪B|; 1 when both are empty."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, 1.0)

    def voe(self) -> float:
        """Volumetric overlap error 1 - IoU; 0 when both are empty."""
        return 1.0 - self.iou()

    def rvd(self) -> float:
        """Signed relative volume difference (|A| - |B|) / |B|; 0 when both are empty, NaN when only B is."""
        if self.both_empty:
            return 0.0
        return _ratio(self.fp - self.fn, self.tp + self.fn, float("nan"))

    def accuracy(self) -> float:
        """Pixel accuracy (TP + TN) / N."""
        return _ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn, 1.0)

    def precision(self) -> float:
        """TP / (TP + FP); 1 when both are empty, 0 when only the prediction is empty."""
        return _ratio(self.tp, self.tp + self.fp, 1.0 if self.both_empty else 0.0)

    def recall(self) -> float:
        """Recall (sensitivity) TP / (TP + FN); 1 when both are empty, 0 when only the truth is empty."""
        return _ratio(self.tp, self.tp + self.fn, 1.0 if self.both_empty else 0.0)

    def specificity(self) -> float:
        """TN / (TN + FP); 1 when there are no negatives."""
        return _ratio(self.tn, self.tn + self.fp, 1.0)

    def fpr(self) -> float:
        """False positive rate (fall-out) FP / (FP + TN) = 1 - specificity; 0 when there are no negatives."""
        return _ratio(self.fp, self.fp + self.tn, 0.0)

    def fnr(self) -> float:
        """False negative rate (miss rate) FN / (FN + TP) = 1 - recall; 0 when both are empty, 1 when only
        the truth is empty (as recall is 0 there)."""
        return _ratio(self.fn, self.fn + self.tp, 0.0 if self.both_empty else 1.0)

    def fbeta(self, beta: float = 1.0) -> float:
        """F-beta (1 + β²)TP / ((1 + β²)TP + β²FN + FP) (van Rijsbergen 1979); 1 when both are empty."""
        b2 = beta * beta
        return _ratio((1 + b2) * self.tp, (1 + b2) * self.tp + b2 * self.fn + self.fp, 1.0)


def _from_counts(name: str) -> Callable[[Any, Any], float]:
    """The metric ``name`` of two masks: :class:`Confusion` counted once, then its method ``name``."""
    method = getattr(Confusion, name)

    def metric(pred: Any, gt: Any) -> float:
        return method(Confusion.of(pred, gt))

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = f"{method.__doc__} Masks: prediction A and truth B of one shape."
    return metric


dice = _from_counts("dice")
iou = _from_counts("iou")
voe = _from_counts("voe")
rvd = _from_counts("rvd")
accuracy = _from_counts("accuracy")
precision = _from_counts("precision")
recall = _from_counts("recall")
specificity = _from_counts("specificity")
fpr = _from_counts("fpr")
fnr = _from_counts("fnr")


def fbeta(pred: Any, gt: Any, beta: float = 1.0) -> float:
    """F-beta score; see :meth:`Confusion.fbeta`."""
    return Confusion.of(pred, gt).fbeta(beta)


def mae(prob: Any, gt: Any) -> float:
    """Mean absolute error mean |P - G| between a probability map in [0, 1] (or a mask) and the truth mask,
    as in the polyp benchmarks (Fan et al. 2020, PraNet)."""
    prob = as_numpy(prob)
    gt = as_numpy(gt, bool)
    if prob.shape != gt.shape:
        raise MedsegError(f"probability and ground truth shapes differ: {prob.shape} vs {gt.shape}")
    if prob.size == 0:
        return float("nan")
    return float(np.abs(prob.astype(np.float64) - gt).mean())
