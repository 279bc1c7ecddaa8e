"""Instance segmentation metrics from instance label maps (numpy only).

Inputs: a predicted and a ground-truth instance label map of one shape (2D or 3D; any integer or bool
dtype; numpy or torch): 0 is background, every other value is one object. Ids need not be consecutive and
an id whose pixels are not connected is still one object; the maps are not relabelled. Every object is of
one category (class-agnostic evaluation). For AP the prediction may instead be a list (or a stacked array
``[P, *spatial]``) of boolean masks that may overlap, as Mask R-CNN outputs them; its instances are numbered
1..P in list order.

Scores (AP only): ``None`` (every predicted instance scores 1), a mapping ``{id: score}`` that covers every
predicted id (extra ids, e.g. of instances that a later one overwrote, are ignored), or a sequence of
scores in the order of the predicted ids (ascending ids for a label map, list order for masks).

Overlaps: :func:`instance_overlap` counts the pixels of every (prediction, truth) pair in one joint
histogram of the two label maps (no loop over pairs) and keeps the pairs that overlap (sparse); the dense
IoU matrix is built from it on demand.

Metrics and their matching rules:

- **AP** (COCO, pycocotools ``COCOeval`` with ``iouType="segm"``, one category, area range "all"): at each
  IoU threshold of :data:`COCO_THRESHOLDS` (``numpy.linspace(0.5, 0.95, 10)`` as pycocotools builds it,
  so its 0.9 is 0.8999999999999999) the detections of an image are taken by descending score (stable
  sort: ties in id order) and each one is matched greedily to the unmatched ground-truth object of highest
  IoU with IoU >= the threshold (ties: the later object, as pycocotools); each object is matched at most
  once. Across images the detections of all images are pooled and sorted by score globally (ties: image
  order, then the per-image order), precision is made monotone (the running maximum from the right) and
  read at the 101 recall points 0, 0.01, ..., 1 (the first detection reaching each recall; 0 past the
  last recall reached); AP at a threshold is the mean of those 101 values. ``ap`` is the mean over the 10
  thresholds, ``ap50`` and ``ap75`` the values at 0.5 and 0.75. AP of a data set is computed over the
  whole set (:class:`InstanceEvaluation`), never as a mean of per-image APs. pycocotools keeps at most
  100 detections per image by default; here ``max_detections=None`` keeps all (nuclei images hold
  hundreds of objects): pass 100 for COCO's number.
- **DSB2018 score** (Kaggle Data Science Bowl 2018): per image, the mean over the thresholds
  :data:`DSB_THRESHOLDS` (0.5, 0.55, ..., 0.95 as the nearest doubles of those decimals) of
  TP / (TP + FP + FN), where a prediction and an object match when their IoU is strictly greater than the
  threshold (Kaggle: "an IoU *above* the threshold"; an IoU of exactly 0.75 is no hit at 0.75, unlike
  COCO's >=). IoU > 0.5 makes the matching unique for label maps, so no assignment is needed; a data
  set's score is the mean over its images.
- **AJI**, aggregated Jaccard index (Kumar et al. 2017, as in the MoNuSeg and HoVer-Net code): each
  ground-truth object is paired with the prediction of maximal IoU (ties: the lowest predicted id; a
  prediction may be the best of several objects: it is then counted in each pair, as in Kumar et al.;
  AJI+ would forbid it); AJI = sum of the pairs' intersections / (sum of the pairs' unions + the areas of
  the objects that overlap no prediction + the areas of the predictions paired with no object).
- **PQ**, panoptic quality (Kirillov et al. 2019): matches at IoU > 0.5 (unique), TP matched pairs,
  FP unmatched predictions, FN unmatched objects; SQ = mean IoU of the matches, RQ = TP / (TP + FP/2 +
  FN/2), PQ = SQ x RQ.
- **Object Dice** (Sirinukunwattana et al. 2017, GlaS challenge): 1/2 [sum_i |G_i|/sum|G| Dice(G_i, S*(G_i))
  + sum_j |S_j|/sum|S| Dice(G*(S_j), S_j)], where S*(G_i) is the prediction that overlaps G_i most
  (largest intersection; ties: the lowest id) and G*(S_j) likewise; an object overlapping nothing
  contributes Dice 0.

Empty conventions (per image; as the project's "both empty is perfect, one empty is worst" for Dice):

| situation | dsb, aji, pq, sq, rq, object_dice | ap, ap50, ap75 |
|---|---|---|
| no object and no prediction | 1 | 1 |
| no object, some predictions | 0 | 0 |
| objects, no prediction | 0 | 0 |
| objects and predictions, no match at IoU > 0.5 | dsb 0 (at every threshold), pq = sq = rq = 0 | |

For AP over a set the empty rows apply to the whole set: a set without any ground-truth object has AP 1
without predictions and 0 with some (pycocotools reports -1, "undefined", for both). As soon as the set
holds one object, images without objects only add their false positives to the global ranking and images
with neither add nothing, exactly as in pycocotools.

Disjointness: the DSB score, AJI, PQ and object Dice need a label map prediction (disjoint instances);
lists of overlapping masks are for AP only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.metrics.overlap import as_numpy

#: COCO's IoU thresholds, built as pycocotools builds them (``0.8999999999999999`` included).
COCO_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
#: COCO's 101 recall points.
RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1)
#: The DSB2018 thresholds 0.5, 0.55, ..., 0.95 (nearest doubles of the decimals).
DSB_THRESHOLDS = np.round(0.5 + 0.05 * np.arange(10), 2)
#: Per-case metrics of :func:`evaluate_instances` that a data set's summary averages over cases.
CASE_METRICS = ("dsb", "aji", "pq", "sq", "rq", "object_dice", "tp50", "fp50", "fn50", "n_gt", "n_pred")
#: Per-image AP of :func:`evaluate_instances` (a data set's AP is pooled, see :class:`InstanceEvaluation`).
AP_METRICS = ("ap", "ap50", "ap75")

#: Instance scores: ``{id: score}``, scores in the order of the predicted ids, or ``None`` (all 1).
Scores = Mapping[Any, float] | Sequence[float] | None

_DENSE_HISTOGRAM = 1 << 22  # joint histograms up to this many bins use bincount, larger ones np.unique


# ----------------------------------------------------------------------------------------------------
# Overlaps
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstanceOverlap:
    """The instances of a prediction and a truth and the pixels of every overlapping pair.

    Attributes:
        pred_ids, gt_ids: the instance ids, ascending (mask lists: 1..P).
        pred_areas, gt_areas: pixels of each instance.
        pred_index, gt_index: for each overlapping pair, indices into ``pred_ids`` and ``gt_ids``
            (sorted by prediction, then truth).
        intersection: pixels the pair has in common (> 0).
        disjoint: whether the predicted instances do not overlap each other (always for a label map).
    """

    pred_ids: np.ndarray
    gt_ids: np.ndarray
    pred_areas: np.ndarray
    gt_areas: np.ndarray
    pred_index: np.ndarray
    gt_index: np.ndarray
    intersection: np.ndarray
    disjoint: bool = True

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def n_gt(self) -> int:
        return int(self.gt_ids.size)

    @property
    def pair_iou(self) -> np.ndarray:
        """IoU of each overlapping pair."""
        union = self.pred_areas[self.pred_index] + self.gt_areas[self.gt_index] - self.intersection
        return self.intersection / union

    def intersection_matrix(self) -> np.ndarray:
        """Dense ``[P, G]`` pixel counts of every pair."""
        matrix = np.zeros((self.n_pred, self.n_gt), dtype=np.int64)
        matrix[self.pred_index, self.gt_index] = self.intersection
        return matrix

    def iou_matrix(self) -> np.ndarray:
        """Dense ``[P, G]`` IoU of every pair (0 where they do not overlap)."""
        matrix = np.zeros((self.n_pred, self.n_gt), dtype=np.float64)
        matrix[self.pred_index, self.gt_index] = self.pair_iou
        return matrix


def _label_array(labels: Any, role: str) -> np.ndarray:
    array = as_numpy(labels)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise MedsegError(f"the {role} instance label map must hold integers, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise MedsegError(f"the {role} instance label map holds negative ids (min {array.min()})")
    return array


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(index, ids)``: the flat map with background 0 and instance ``ids[i - 1]`` as ``i`` (ids
    ascending)."""
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64)
    top = int(flat.max())
    if top < max(1 << 16, flat.size):  # a lookup table: O(N), no sort
        flat = flat.astype(np.intp, copy=False)
        present = np.bincount(flat, minlength=top + 1)
        present[0] = 0
        ids = np.flatnonzero(present)
        table = np.zeros(top + 1, dtype=np.intp)
        table[ids] = np.arange(1, ids.size + 1)
        return table[flat], ids.astype(np.int64)
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.ravel().astype(np.intp)
    if ids[0] == 0:
        return inverse, ids[1:].astype(np.int64)
    return inverse + 1, ids.astype(np.int64)


def _histogram(codes: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The occupied bins of ``codes`` (ascending) and their counts."""
    if bins <= _DENSE_HISTOGRAM:
        counts = np.bincount(codes, minlength=bins)
        occupied = np.flatnonzero(counts)
        return occupied, counts[occupied]
    return np.unique(codes, return_counts=True)


def _is_mask_list(pred: Any, gt_ndim: int) -> bool:
    if isinstance(pred, (list, tuple)):
        return True
    return as_numpy(pred).ndim == gt_ndim + 1


def instance_overlap(pred: Any, gt: Any) -> InstanceOverlap:
    """The overlaps of a predicted label map (or mask list, see the module docstring) with a truth map.

    One joint histogram of (prediction index, truth index) over the pixels where both are foreground;
    areas from one histogram per map.
    """
    gt_map = _label_array(gt, "ground-truth")
    gt_flat, gt_ids = _compact(gt_map)
    n_gt = gt_ids.size
    gt_areas = np.bincount(gt_flat, minlength=n_gt + 1)[1:].astype(np.int64)
    if _is_mask_list(pred, gt_map.ndim):
        masks = [as_numpy(m) for m in pred] if isinstance(pred, (list, tuple)) else list(as_numpy(pred))
        for i, mask in enumerate(masks):
            if mask.shape != gt_map.shape:
                raise MedsegError(f"predicted mask {i} has shape {mask.shape}, the ground truth "
                                  f"{gt_map.shape}")
        stack = np.stack([m.astype(bool) for m in masks]).reshape(len(masks), -1) if masks else \
            np.zeros((0, gt_map.size), dtype=bool)
        n_pred = stack.shape[0]
        pred_ids = np.arange(1, n_pred + 1, dtype=np.int64)
        pred_areas = stack.sum(axis=1, dtype=np.int64)
        which, pixel = np.nonzero(stack)
        truth = gt_flat[pixel]
        keep = truth > 0
        codes = which[keep].astype(np.int64) * n_gt + (truth[keep] - 1)
        disjoint = bool(n_pred < 2 or stack.sum(axis=0).max() <= 1)
    else:
        pred_map = _label_array(pred, "predicted")
        if pred_map.shape != gt_map.shape:
            raise MedsegError(f"prediction and ground truth shapes differ: {pred_map.shape} vs "
                              f"{gt_map.shape}")
        pred_flat, pred_ids = _compact(pred_map)
        n_pred = pred_ids.size
        pred_areas = np.bincount(pred_flat, minlength=n_pred + 1)[1:].astype(np.int64)
        both = (pred_flat > 0) & (gt_flat > 0)
        codes = (pred_flat[both] - 1).astype(np.int64) * n_gt + (gt_flat[both] - 1)
        disjoint = True
    occupied, counts = _histogram(codes, n_pred * n_gt)
    pred_index, gt_index = np.divmod(occupied, max(n_gt, 1))
    return InstanceOverlap(pred_ids, gt_ids, pred_areas, gt_areas, pred_index.astype(np.intp),
                           gt_index.astype(np.intp), counts.astype(np.int64), disjoint)


def iou_matrix(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(iou [P, G], pred_ids, gt_ids)`` of a predicted and a ground-truth label map."""
    overlap = instance_overlap(pred, gt)
    return overlap.iou_matrix(), overlap.pred_ids, overlap.gt_ids


# ----------------------------------------------------------------------------------------------------
# Per-image metrics of label maps
# ----------------------------------------------------------------------------------------------------

def _label_map_only(overlap: InstanceOverlap, metric: str) -> None:
    if not overlap.disjoint:
        raise MedsegError(f"{metric} needs disjoint predicted instances (a label map), not overlapping masks")


def _both_empty(overlap: InstanceOverlap) -> bool:
    return overlap.n_pred == 0 and overlap.n_gt == 0


def matches_above(overlap: InstanceOverlap, threshold: float) -> np.ndarray:
    """The overlapping pairs (indices into the pairs) with IoU strictly above ``threshold`` >= 0.5: a
    unique matching for disjoint instances (two objects cannot both hold more than half of a prediction)."""
    _label_map_only(overlap, "matching at an IoU threshold")
    if threshold < 0.5:
        raise MedsegError(f"matching without an assignment needs an IoU threshold >= 0.5, got {threshold}")
    return np.flatnonzero(overlap.pair_iou > threshold)


def dsb_score(overlap: InstanceOverlap, thresholds: Sequence[float] = tuple(DSB_THRESHOLDS)) -> float:
    """The DSB2018 score of one image: mean over ``thresholds`` of TP / (TP + FP + FN), matches at IoU > t;
    1 when the image has neither objects nor predictions."""
    _label_map_only(overlap, "the DSB2018 score")
    if _both_empty(overlap):
        return 1.0
    iou = overlap.pair_iou
    total = overlap.n_pred + overlap.n_gt
    values = []
    for threshold in thresholds:
        if threshold < 0.5:
            raise MedsegError(f"DSB2018 thresholds must be >= 0.5, got {threshold}")
        tp = int(np.count_nonzero(iou > threshold))
        values.append(tp / (total - tp))  # TP + FP + FN = P + G - TP
    return float(np.mean(values))


def panoptic_quality(overlap: InstanceOverlap) -> dict[str, float]:
    """``{"pq", "sq", "rq", "tp", "fp", "fn"}`` with matches at IoU > 0.5 (see the module docstring)."""
    _label_map_only(overlap, "panoptic quality")
    if _both_empty(overlap):
        return {"pq": 1.0, "sq": 1.0, "rq": 1.0, "tp": 0.0, "fp": 0.0, "fn": 0.0}
    matched = overlap.pair_iou[matches_above(overlap, 0.5)]
    tp = matched.size
    fp, fn = overlap.n_pred - tp, overlap.n_gt - tp
    sq = float(matched.sum() / tp) if tp else 0.0
    rq = tp / (tp + fp / 2 + fn / 2)
    return {"pq": sq * rq, "sq": sq, "rq": float(rq), "tp": float(tp), "fp": float(fp), "fn": float(fn)}


def _best_per(key: np.ndarray, value: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each distinct ``key``, the pair (an index into the pairs) of largest ``value`` (ties: the
    smallest ``other``)."""
    if key.size == 0:
        return np.zeros(0, dtype=np.intp)
    order = np.lexsort((other, -value, key))
    first = np.ones(order.size, dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return order[first]


def aggregated_jaccard_index(overlap: InstanceOverlap) -> float:
    """AJI (Kumar et al. 2017; see the module docstring); 1 when there are neither objects nor predictions."""
    _label_map_only(overlap, "AJI")
    if _both_empty(overlap):
        return 1.0
    pairs = _best_per(overlap.gt_index, overlap.pair_iou, overlap.pred_index)
    pred, gt, common = overlap.pred_index[pairs], overlap.gt_index[pairs], overlap.intersection[pairs]
    union = int((overlap.pred_areas[pred] + overlap.gt_areas[gt] - common).sum())
    union += int(overlap.gt_areas.sum() - overlap.gt_areas[gt].sum())  # objects overlapping no prediction
    used = np.unique(pred)
    union += int(overlap.pred_areas.sum() - overlap.pred_areas[used].sum())  # predictions paired with none
    return float(common.sum() / union)


def object_dice(overlap: InstanceOverlap) -> float:
    """Object-level Dice (Sirinukunwattana et al. 2017; see the module docstring); 1 when there are neither
    objects nor predictions, 0 when only one side has instances."""
    _label_map_only(overlap, "object Dice")
    if _both_empty(overlap):
        return 1.0
    if overlap.n_pred == 0 or overlap.n_gt == 0:
        return 0.0
    pa, ga = overlap.pred_areas, overlap.gt_areas

    def side(key: np.ndarray, other: np.ndarray, areas: np.ndarray) -> float:
        pairs = _best_per(key, overlap.intersection, other)
        dice = 2 * overlap.intersection[pairs] / (pa[overlap.pred_index[pairs]] + ga[overlap.gt_index[pairs]])
        return float((areas[key[pairs]] * dice).sum() / areas.sum())

    truth_side = side(overlap.gt_index, overlap.pred_index, ga)
    return 0.5 * (truth_side + side(overlap.pred_index, overlap.gt_index, pa))


# ----------------------------------------------------------------------------------------------------
# AP
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageDetections:
    """What AP needs of one image: its detections' scores (descending), whether each matched an object at
    each COCO threshold (``[T, D]``), and its number of objects."""

    scores: np.ndarray
    matched: np.ndarray
    n_gt: int


def score_array(overlap: InstanceOverlap, scores: Scores) -> np.ndarray:
    """The score of each predicted instance (in ``pred_ids`` order) from ``scores`` (module docstring)."""
    if scores is None:
        return np.ones(overlap.n_pred)
    if isinstance(scores, Mapping):
        try:
            by_id = {int(key): float(value) for key, value in scores.items()}
        except (TypeError, ValueError):
            raise MedsegError("instance scores must map integer ids to numbers") from None
        lacking = [int(i) for i in overlap.pred_ids if int(i) not in by_id]
        if lacking:
            shown = ", ".join(map(str, lacking[:5])) + (" ..." if len(lacking) > 5 else "")
            raise MedsegError(f"no score for predicted instance(s) {shown}")
        values = np.array([by_id[int(i)] for i in overlap.pred_ids], dtype=np.float64)
    else:
        try:
            values = np.asarray([float(v) for v in scores], dtype=np.float64)
        except (TypeError, ValueError):
            raise MedsegError("instance scores must be numbers") from None
        if values.size != overlap.n_pred:
            raise MedsegError(f"{values.size} scores for {overlap.n_pred} predicted instances")
    if not np.all(np.isfinite(values)):
        raise MedsegError("instance scores must be finite")
    return values


def match_detections(overlap: InstanceOverlap, scores: Scores = None,
                     max_detections: int | None = None) -> ImageDetections:
    """COCO's greedy matching of one image at every threshold of :data:`COCO_THRESHOLDS`."""
    values = score_array(overlap, scores)
    order = np.argsort(-values, kind="mergesort")
    if max_detections is not None:
        order = order[:max_detections]
    limits = [min(float(t), 1 - 1e-10) for t in COCO_THRESHOLDS]
    starts = np.searchsorted(overlap.pred_index, np.arange(overlap.n_pred + 1))
    gts, ious = overlap.gt_index.tolist(), overlap.pair_iou.tolist()
    matched = np.zeros((len(limits), order.size), dtype=bool)
    taken: list[set[int]] = [set() for _ in limits]
    for d, p in enumerate(order.tolist()):
        candidates = list(zip(gts[starts[p]:starts[p + 1]], ious[starts[p]:starts[p + 1]], strict=True))
        for t, limit in enumerate(limits):
            best, best_iou = -1, limit
            for g, iou in candidates:
                if g in taken[t] or iou < best_iou:
                    continue
                best, best_iou = g, iou  # >=: a later object of equal IoU wins, as in pycocotools
            if best >= 0:
                taken[t].add(best)
                matched[t, d] = True
    return ImageDetections(values[order], matched, overlap.n_gt)


def average_precision(images: Iterable[ImageDetections]) -> np.ndarray:
    """AP at each threshold of :data:`COCO_THRESHOLDS` over ``images`` pooled (101-point interpolation)."""
    images = list(images)
    n_gt = sum(image.n_gt for image in images)
    scores = np.concatenate([image.scores for image in images]) if images else np.zeros(0)
    if n_gt == 0:
        return np.full(COCO_THRESHOLDS.size, 0.0 if scores.size else 1.0)
    matched = np.concatenate([image.matched for image in images], axis=1) if images else \
        np.zeros((COCO_THRESHOLDS.size, 0), dtype=bool)
    matched = matched[:, np.argsort(-scores, kind="mergesort")]
    tp = np.cumsum(matched, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched, axis=1, dtype=np.float64)
    ap = np.zeros(COCO_THRESHOLDS.size)
    for t in range(COCO_THRESHOLDS.size):
        if matched.shape[1] == 0:
            continue
        recall = tp[t] / n_gt
        precision = tp[t] / (tp[t] + fp[t] + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        reached = at < precision.size
        interpolated = np.zeros(RECALL_POINTS.size)
        interpolated[reached] = precision[at[reached]]
        ap[t] = interpolated.mean()
    return ap


def ap_summary(per_threshold: np.ndarray) -> dict[str, float]:
    """``{"ap", "ap50", "ap75"}`` of the APs at :data:`COCO_THRESHOLDS`."""
    return {"ap": float(per_threshold.mean()), "ap50": float(per_threshold[0]),
            "ap75": float(per_threshold[5])}


# ----------------------------------------------------------------------------------------------------
# One case and a data set
# ----------------------------------------------------------------------------------------------------

def _evaluate(overlap: InstanceOverlap, scores: Scores,
              max_detections: int | None) -> tuple[dict[str, float], ImageDetections]:
    detections = match_detections(overlap, scores, max_detections)
    quality = panoptic_quality(overlap)
    values = {
        "dsb": dsb_score(overlap), "aji": aggregated_jaccard_index(overlap),
        "pq": quality["pq"], "sq": quality["sq"], "rq": quality["rq"], "object_dice": object_dice(overlap),
        "tp50": quality["tp"], "fp50": float(overlap.n_pred - quality["tp"]),
        "fn50": float(overlap.n_gt - quality["tp"]), "n_gt": float(overlap.n_gt),
        "n_pred": float(overlap.n_pred), **ap_summary(average_precision([detections])),
    }
    return values, detections


def evaluate_instances(pred_map: Any, gt_map: Any, scores: Scores = None,
                       max_detections: int | None = None) -> dict[str, float]:
    """Every instance metric of one case: :data:`CASE_METRICS` (TP/FP/FN at IoU > 0.5, instance counts)
    and :data:`AP_METRICS` of this image alone. Conventions in the module docstring."""
    overlap = instance_overlap(pred_map, gt_map)
    _label_map_only(overlap, "evaluate_instances")
    return _evaluate(overlap, scores, max_detections)[0]


@dataclass
class InstanceEvaluation:
    """A data set evaluated case by case: per-case values, their means, and AP pooled over the set.

    ``summary()["mean"]`` averages the :data:`CASE_METRICS` over the cases (finite values); AP is computed
    once over the detections of all cases (COCO), not as a mean of per-image APs.
    """

    max_detections: int | None = None
    cases: dict[str, dict[str, float]] = field(default_factory=dict)
    _detections: list[ImageDetections] = field(default_factory=list, repr=False)

    def add(self, case_id: str, pred_map: Any, gt_map: Any,
            scores: Scores = None) -> dict[str, float]:
        """Evaluate one case (a new ``case_id``); returns its :func:`evaluate_instances` values."""
        if case_id in self.cases:
            raise MedsegError(f"case {case_id} evaluated twice")
        overlap = instance_overlap(pred_map, gt_map)
        _label_map_only(overlap, "InstanceEvaluation")
        values, detections = _evaluate(overlap, scores, self.max_detections)
        self.cases[case_id] = values
        self._detections.append(detections)
        return values

    def average_precision(self) -> dict[str, Any]:
        """``{"ap", "ap50", "ap75", "per_threshold": {threshold: ap}, "images", "gt_instances",
        "pred_instances"}`` over every case added."""
        per_threshold = average_precision(self._detections)
        return {**ap_summary(per_threshold),
                "per_threshold": {f"{t:.2f}": float(v) for t, v in zip(COCO_THRESHOLDS, per_threshold,
                                                                       strict=True)},
                "images": len(self._detections), "gt_instances": sum(d.n_gt for d in self._detections),
                "pred_instances": sum(int(d.scores.size) for d in self._detections)}

    def summary(self) -> dict[str, Any]:
        """``{"cases", "mean": {metric: mean over cases}, "ap": average_precision()}``."""
        mean = {}
        for name in CASE_METRICS:
            finite = [v[name] for v in self.cases.values() if math.isfinite(v[name])]
            mean[name] = float(np.mean(finite)) if finite else math.nan
        return {"cases": len(self.cases), "mean": mean, "ap": self.average_precision()}
