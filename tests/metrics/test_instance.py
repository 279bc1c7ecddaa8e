"""Instance metrics: the IoU matrix against a pair loop, hand-made cases with known answers for every
metric (shifted squares, a merged prediction, missing and extra objects, empty images), the > vs >=
threshold rules, AP interpolation and pooling over images, and AP against pycocotools when available.

pycocotools is not a dependency: the oracle tests run when it is importable, or when
``MEDSEG_PYCOCOTOOLS_PATH`` names a folder holding it (``pip install --target DIR pycocotools``), else
they skip.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Any

import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.metrics.instance import (
    COCO_THRESHOLDS,
    DSB_THRESHOLDS,
    InstanceEvaluation,
    aggregated_jaccard_index,
    average_precision,
    dsb_score,
    evaluate_instances,
    instance_overlap,
    iou_matrix,
    match_detections,
    object_dice,
    panoptic_quality,
)


def squares(shape: tuple[int, int], *boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    """A label map with boxes ``(id, row, col, height, width)`` painted in order."""
    labels = np.zeros(shape, dtype=np.int32)
    for identifier, row, col, height, width in boxes:
        labels[row:row + height, col:col + width] = identifier
    return labels


def random_scene(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    """A truth of ``n`` random boxes (non-consecutive ids) and a prediction that shifts, drops and adds."""
    gt = np.zeros(shape, dtype=np.int64)
    pred = np.zeros(shape, dtype=np.int64)
    ids = rng.choice(np.arange(1, 500), size=2 * n + 4, replace=False)
    for k in range(n):
        corner = [int(rng.integers(0, s - 4)) for s in shape]
        size = [int(rng.integers(3, max(4, s // 3))) for s in shape]
        box = tuple(slice(c, c + z) for c, z in zip(corner, size, strict=True))
        gt[box] = ids[k]
        if rng.random() < 0.8:
            moved = tuple(slice(max(0, b.start + int(rng.integers(-2, 3))), b.stop + int(rng.integers(-2, 3)))
                          for b in box)
            pred[moved] = ids[n + k]
    for k in range(int(rng.integers(0, 3))):
        corner = [int(rng.integers(0, s - 3)) for s in shape]
        pred[tuple(slice(c, c + 3) for c in corner)] = ids[2 * n + k]
    return pred, gt


# ----------------------------------------------------------------------------------------------------
# IoU matrix
# ----------------------------------------------------------------------------------------------------

def brute_force_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    pred_ids = [int(i) for i in np.unique(pred) if i != 0]
    gt_ids = [int(i) for i in np.unique(gt) if i != 0]
    matrix = np.zeros((len(pred_ids), len(gt_ids)))
    for a, p in enumerate(pred_ids):
        for b, g in enumerate(gt_ids):
            inter = np.count_nonzero((pred == p) & (gt == g))
            matrix[a, b] = inter / np.count_nonzero((pred == p) | (gt == g))
    return matrix, pred_ids, gt_ids


@pytest.mark.parametrize("shape", [(40, 50), (12, 16, 14)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_matrix_matches_a_loop_over_pairs(shape: tuple[int, ...], seed: int) -> None:
    pred, gt = random_scene(np.random.default_rng(seed), shape, n=6)
    expected, pred_ids, gt_ids = brute_force_iou(pred, gt)
    matrix, found_pred, found_gt = iou_matrix(pred, gt)
    assert found_pred.tolist() == pred_ids and found_gt.tolist() == gt_ids
    np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-15)


def test_iou_matrix_with_huge_ids_and_unsigned_dtypes() -> None:
    """Ids beyond the lookup-table range (np.unique path) and uint16/uint64 maps give the same matrix."""
    pred, gt = random_scene(np.random.default_rng(5), (30, 30), n=5)
    expected, _, _ = brute_force_iou(pred, gt)
    big_pred = np.where(pred > 0, pred + 10_000_000, 0).astype(np.uint64)
    matrix, ids, _ = iou_matrix(big_pred, gt.astype(np.uint16))
    np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-15)
    assert ids.min() > 10_000_000


def test_iou_matrix_of_masks_that_overlap() -> None:
    gt = squares((20, 20), (1, 0, 0, 10, 10))
    masks = [gt == 1, squares((20, 20), (1, 0, 0, 10, 5)) == 1]  # the second lies inside the first
    overlap = instance_overlap(masks, gt)
    assert not overlap.disjoint
    np.testing.assert_allclose(overlap.iou_matrix(), [[1.0], [0.5]])
    with pytest.raises(MedsegError, match="disjoint"):
        dsb_score(overlap)


def test_bad_label_maps_raise() -> None:
    with pytest.raises(MedsegError, match="integers"):
        iou_matrix(np.zeros((4, 4), dtype=np.float32), np.zeros((4, 4), dtype=np.int32))
    with pytest.raises(MedsegError, match="negative"):
        iou_matrix(-np.ones((4, 4), dtype=np.int32), np.zeros((4, 4), dtype=np.int32))
    with pytest.raises(MedsegError, match="shapes differ"):
        iou_matrix(np.zeros((4, 4), dtype=np.int32), np.zeros((4, 5), dtype=np.int32))


# ----------------------------------------------------------------------------------------------------
# Hand-made cases
# ----------------------------------------------------------------------------------------------------

def test_square_shifted_by_two_of_fourteen_iou_exactly_three_quarters() -> None:
    """IoU 12/16 = 0.75: COCO counts it at 0.75 (>=), the DSB2018 score does not (>)."""
    gt = squares((20, 20), (1, 0, 0, 14, 14))
    pred = squares((20, 20), (7, 0, 2, 14, 14))
    values = evaluate_instances(pred, gt)
    assert values["dsb"] == pytest.approx(5 / 10)  # hits at 0.5, ..., 0.7 only
    assert values["ap"] == pytest.approx(6 / 10)   # hits at 0.5, ..., 0.75
    assert values["ap75"] == pytest.approx(1.0) and values["ap50"] == pytest.approx(1.0)
    assert values["pq"] == pytest.approx(0.75) and values["sq"] == pytest.approx(0.75)
    assert values["rq"] == 1.0
    assert values["aji"] == pytest.approx(0.75)
    assert values["object_dice"] == pytest.approx(2 * 168 / 392)


def test_iou_exactly_nine_tenths_follows_each_definition() -> None:
    """IoU 18/20: COCO's threshold 0.8999999999999999 counts it, the DSB2018 0.9 (strictly above) not."""
    gt = squares((19, 21), (1, 0, 0, 19, 19))
    pred = squares((19, 21), (2, 0, 1, 19, 19))
    assert COCO_THRESHOLDS[8] < 0.9 == DSB_THRESHOLDS[8]
    values = evaluate_instances(pred, gt)
    assert values["dsb"] == pytest.approx(8 / 10)
    assert values["ap"] == pytest.approx(9 / 10)


def test_merged_prediction_covering_two_objects() -> None:
    gt = squares((10, 20), (1, 0, 0, 10, 10), (2, 0, 10, 10, 10))
    pred = squares((10, 20), (5, 0, 0, 10, 20))  # IoU 0.5 with each
    values = evaluate_instances(pred, gt)
    assert values["dsb"] == 0.0  # 0.5 is not above 0.5
    assert (values["pq"], values["tp50"], values["fp50"], values["fn50"]) == (0.0, 0.0, 1.0, 2.0)
    assert values["aji"] == pytest.approx(200 / 400)  # the prediction is the best of both objects
    assert values["object_dice"] == pytest.approx(2 / 3)
    assert values["ap50"] == pytest.approx(51 / 101 * 1.0)  # matched once at >= 0.5: recall 0.5, precision 1
    assert values["ap75"] == 0.0


def test_prediction_shifted_between_two_objects() -> None:
    gt = squares((10, 40), (1, 0, 0, 10, 10), (2, 0, 10, 10, 10))
    pred = squares((10, 40), (3, 0, 2, 10, 10))  # 80 px of object 1 (IoU 2/3), 20 px of object 2 (IoU 1/9)
    values = evaluate_instances(pred, gt)
    assert values["dsb"] == pytest.approx(4 * 0.5 / 10)  # hits at 0.5, 0.55, 0.6, 0.65: 1 / (1 + 0 + 1)
    assert values["aji"] == pytest.approx((80 + 20) / (120 + 180))
    assert values["pq"] == pytest.approx(2 / 3 * 2 / 3)
    assert values["object_dice"] == pytest.approx(0.5 * ((0.8 + 0.2) / 2 + 0.8))


def test_missing_object() -> None:
    gt = squares((10, 30), (1, 0, 0, 10, 10), (2, 0, 20, 10, 5))
    pred = squares((10, 30), (9, 0, 0, 10, 10))
    values = evaluate_instances(pred, gt)
    assert values["dsb"] == pytest.approx(0.5)
    assert values["aji"] == pytest.approx(100 / 150)
    assert values["rq"] == pytest.approx(2 / 3) and values["sq"] == 1.0
    assert values["object_dice"] == pytest.approx(0.5 * (100 / 150 + 1.0))
    assert values["ap"] == pytest.approx(51 / 101)  # recall stops at 0.5


def test_extra_object_ranked_last_and_first() -> None:
    gt = squares((10, 30), (1, 0, 0, 10, 10))
    pred = squares((10, 30), (1, 0, 0, 10, 10), (2, 0, 20, 10, 5))
    last = evaluate_instances(pred, gt, scores={1: 0.9, 2: 0.1})
    assert last["dsb"] == pytest.approx(0.5)
    assert last["aji"] == pytest.approx(100 / 150)
    assert last["rq"] == pytest.approx(2 / 3)
    assert last["object_dice"] == pytest.approx(0.5 * (1.0 + 100 / 150))
    assert last["ap"] == pytest.approx(1.0)  # the false positive comes after full recall
    first = evaluate_instances(pred, gt, scores={1: 0.1, 2: 0.9})
    assert first["ap"] == pytest.approx(0.5)  # precision 1/2 at recall 1, interpolated to recall 0
    assert first["dsb"] == last["dsb"]  # scores only change AP


def test_interpolation_matters() -> None:
    """Two false positives ranked above two exact hits: raw precision 0, 0, 1/3, 1/2; interpolated 1/2
    at every recall point (without interpolation the AP would be (50/3 + 25)/101 = 0.41)."""
    gt = squares((20, 40), (1, 0, 0, 5, 5), (2, 10, 0, 5, 5))
    pred = squares((20, 40), (3, 0, 0, 5, 5), (4, 10, 0, 5, 5), (1, 0, 30, 4, 4), (2, 10, 30, 4, 4))
    values = evaluate_instances(pred, gt, scores={1: 0.9, 2: 0.8, 3: 0.7, 4: 0.6})
    assert values["ap"] == pytest.approx(0.5, abs=1e-12)
    assert values["ap50"] == pytest.approx(0.5, abs=1e-12)


def test_greedy_matching_by_score_each_object_once() -> None:
    """Two predictions over one object: the higher score takes it, the other is a false positive."""
    gt = squares((10, 20), (1, 0, 0, 10, 10))
    masks = [squares((10, 20), (1, 0, 0, 10, 8)) == 1, squares((10, 20), (1, 0, 0, 10, 10)) == 1]
    overlap = instance_overlap(masks, gt)
    better_first = match_detections(overlap, [0.3, 0.9])
    assert better_first.matched[:, 0].all() and not better_first.matched[:, 1].any()
    worse_first = match_detections(overlap, [0.9, 0.3])  # IoU 0.8 first: hits up to 0.8, then the exact one
    thresholds_hit = COCO_THRESHOLDS <= 0.8
    np.testing.assert_array_equal(worse_first.matched[:, 0], thresholds_hit)
    np.testing.assert_array_equal(worse_first.matched[:, 1], ~thresholds_hit)


def test_ties_follow_pycocotools() -> None:
    """An equal IoU with two objects goes to the later object (pycocotools' >=), leaving the earlier one to
    the next detection; equal scores keep the id order (a stable sort)."""
    gt = squares((10, 20), (1, 0, 0, 10, 10), (2, 0, 10, 10, 10))
    masks = [squares((10, 20), (1, 0, 0, 10, 20)) == 1, gt == 1]  # IoU 0.5 with both; then object 1 exactly
    detections = match_detections(instance_overlap(masks, gt), [0.9, 0.5])
    assert detections.matched[0].tolist() == [True, True]  # at 0.5 the merged mask took object 2
    assert average_precision([detections])[0] == pytest.approx(1.0)
    one = squares((10, 20), (1, 0, 0, 10, 10))
    pred = squares((10, 20), (1, 0, 12, 5, 5), (2, 0, 0, 10, 10))  # id 1 a false positive, id 2 a hit
    values = evaluate_instances(pred, one, scores={1: 0.5, 2: 0.5})
    assert values["ap"] == pytest.approx(0.5)  # the false positive ranks first


def test_three_dimensional_label_maps() -> None:
    gt = np.zeros((6, 10, 10), dtype=np.int32)
    gt[0:4, 0:4, 0:4], gt[0:4, 5:10, 5:10] = 1, 2
    pred = np.zeros_like(gt)
    pred[0:4, 0:4, 0:4] = 3  # exact; object 2 missed
    values = evaluate_instances(pred, gt)
    assert values["dsb"] == pytest.approx(0.5)
    assert values["aji"] == pytest.approx(64 / (64 + 100))


# ----------------------------------------------------------------------------------------------------
# Empty images
# ----------------------------------------------------------------------------------------------------

PER_IMAGE = ("dsb", "aji", "pq", "sq", "rq", "object_dice", "ap", "ap50", "ap75")


def test_no_object_and_no_prediction_is_perfect() -> None:
    empty = np.zeros((8, 8), dtype=np.int32)
    values = evaluate_instances(empty, empty)
    assert all(values[name] == 1.0 for name in PER_IMAGE), values
    assert values["n_gt"] == values["n_pred"] == 0


@pytest.mark.parametrize("side", ["prediction only", "truth only"])
def test_one_side_empty_scores_zero(side: str) -> None:
    empty = np.zeros((8, 8), dtype=np.int32)
    full = squares((8, 8), (3, 1, 1, 3, 3))
    pred, gt = (full, empty) if side == "prediction only" else (empty, full)
    values = evaluate_instances(pred, gt)
    assert all(values[name] == 0.0 for name in PER_IMAGE), values
    assert values["fp50" if side == "prediction only" else "fn50"] == 1.0


def test_sets_without_any_object() -> None:
    empty = np.zeros((8, 8), dtype=np.int32)
    quiet = InstanceEvaluation()
    quiet.add("a", empty, empty)
    assert quiet.average_precision()["ap"] == 1.0
    noisy = InstanceEvaluation()
    noisy.add("a", empty, empty)
    noisy.add("b", squares((8, 8), (1, 0, 0, 2, 2)), empty)
    assert noisy.average_precision()["ap"] == 0.0


# ----------------------------------------------------------------------------------------------------
# A data set
# ----------------------------------------------------------------------------------------------------

def test_ap_is_pooled_over_images_not_averaged() -> None:
    """Image a: one exact hit (score 0.5); image b: one missed object and a false positive (score 0.9).
    Pooled: the false positive ranks first: precision 1/2 up to recall 1/2 (the per-image mean: 0.5)."""
    obj = squares((10, 20), (1, 0, 0, 5, 5))
    evaluation = InstanceEvaluation()
    evaluation.add("a", obj, obj, {1: 0.5})
    evaluation.add("b", squares((10, 20), (1, 0, 12, 5, 5)), obj, {1: 0.9})
    evaluation.add("empty", np.zeros_like(obj), np.zeros_like(obj))  # adds nothing to AP
    ap = evaluation.average_precision()
    assert ap["ap"] == pytest.approx(51 * 0.5 / 101, abs=1e-12)
    assert (ap["images"], ap["gt_instances"], ap["pred_instances"]) == (3, 2, 2)
    summary = evaluation.summary()
    assert summary["cases"] == 3
    assert summary["mean"]["dsb"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    with pytest.raises(MedsegError, match="twice"):
        evaluation.add("a", obj, obj)


def test_scores_must_cover_every_prediction() -> None:
    pred = squares((8, 8), (1, 0, 0, 2, 2), (4, 4, 4, 2, 2))
    with pytest.raises(MedsegError, match="no score for predicted instance"):
        evaluate_instances(pred, pred, scores={1: 0.5})
    with pytest.raises(MedsegError, match="1 scores for 2"):
        evaluate_instances(pred, pred, scores=[0.5])
    values = evaluate_instances(pred, pred, scores={"1": 0.5, "4": 0.2, "99": 1.0})  # JSON keys, extra id
    assert values["ap"] == pytest.approx(1.0)


def test_max_detections_keeps_the_best_scores() -> None:
    gt = squares((10, 30), (1, 0, 0, 5, 5), (2, 0, 10, 5, 5))
    overlap = instance_overlap(gt, gt)
    detections = match_detections(overlap, {1: 0.2, 2: 0.7}, max_detections=1)
    assert detections.scores.tolist() == [0.7]
    assert average_precision([detections])[0] == pytest.approx(51 / 101)


# ----------------------------------------------------------------------------------------------------
# pycocotools as the oracle
# ----------------------------------------------------------------------------------------------------

def _pycocotools() -> Any:
    path = os.environ.get("MEDSEG_PYCOCOTOOLS_PATH")
    if path and path not in sys.path:
        sys.path.append(path)  # appended: the project's numpy stays first
    try:
        from pycocotools import coco, cocoeval, mask
    except ImportError:
        pytest.skip("pycocotools not installed (set MEDSEG_PYCOCOTOOLS_PATH to a folder holding it)")
    return coco, cocoeval, mask


Image = tuple[list[np.ndarray], list[np.ndarray], list[float]]


def coco_ap(images: list[Image], max_dets: int) -> np.ndarray:
    """pycocotools' AP per threshold for images of (truth masks, detection masks, scores)."""
    coco, cocoeval, mask = _pycocotools()

    def rle(m: np.ndarray) -> dict:
        return mask.encode(np.asfortranarray(m.astype(np.uint8)))

    gt_anns, dt_anns, infos = [], [], []
    for i, (truths, dets, scores) in enumerate(images, start=1):
        height, width = truths[0].shape if truths else dets[0].shape
        infos.append({"id": i, "height": height, "width": width})
        for m in truths:
            code = rle(m)
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i, "category_id": 1, "segmentation": code,
                            "area": float(mask.area(code)), "bbox": mask.toBbox(code).tolist(), "iscrowd": 0})
        dt_anns += [{"image_id": i, "category_id": 1, "segmentation": rle(m), "score": s}
                    for m, s in zip(dets, scores, strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = coco.COCO()
        truth.dataset = {"images": infos, "annotations": gt_anns, "categories": [{"id": 1}]}
        truth.createIndex()
        evaluation = cocoeval.COCOeval(truth, truth.loadRes(dt_anns), "segm")
        evaluation.params.maxDets = [max_dets]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, 0, 0, 0]  # [T, R]
    return precision.mean(axis=1)


@pytest.mark.parametrize("max_dets", [100, 3])
def test_ap_agrees_with_pycocotools_on_random_sets(max_dets: int) -> None:
    rng = np.random.default_rng(7)
    ours = InstanceEvaluation(max_detections=max_dets if max_dets < 100 else None)
    images = []
    for k in range(6):
        pred, gt = random_scene(rng, (40, 44), n=int(rng.integers(1, 7)))
        pred_ids = [int(i) for i in np.unique(pred) if i]
        if not pred_ids:
            continue
        scores = {i: float(rng.choice([0.3, 0.5, 0.8, 0.9])) for i in pred_ids}  # ties on purpose
        ours.add(f"case{k}", pred, gt, scores)
        images.append(([gt == i for i in np.unique(gt) if i], [pred == i for i in pred_ids],
                       [scores[i] for i in pred_ids]))
    expected = coco_ap(images, max_dets)
    per_threshold = np.array(list(ours.average_precision()["per_threshold"].values()))
    np.testing.assert_allclose(per_threshold, expected, rtol=0, atol=1e-12)
    assert 0.05 < per_threshold.mean() < 0.95  # a case where matching and ranking matter


def test_ap_agrees_with_pycocotools_on_overlapping_masks_and_interpolation() -> None:
    gt = squares((20, 40), (1, 0, 0, 5, 5), (2, 10, 0, 5, 5), (3, 10, 20, 6, 6))
    truths = [gt == i for i in (1, 2, 3)]
    dets = [squares((20, 40), (1, 0, 30, 4, 4)) == 1, gt == 1, squares((20, 40), (1, 0, 0, 5, 4)) == 1,
            squares((20, 40), (1, 10, 0, 5, 5)) == 1, squares((20, 40), (1, 10, 21, 6, 6)) == 1]
    scores = [0.95, 0.6, 0.7, 0.4, 0.8]
    pair = squares((10, 20), (1, 0, 0, 10, 10), (2, 0, 10, 10, 10))  # a second image: equal IoUs
    merged = [squares((10, 20), (1, 0, 0, 10, 20)) == 1, pair == 1]
    expected = coco_ap([(truths, dets, scores), ([pair == 1, pair == 2], merged, [0.9, 0.5])], 100)
    ours = average_precision([match_detections(instance_overlap(dets, gt), scores),
                              match_detections(instance_overlap(merged, pair), [0.9, 0.5])])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_direct_functions_agree_with_evaluate_instances() -> None:
    pred, gt = random_scene(np.random.default_rng(3), (30, 30), n=5)
    overlap = instance_overlap(pred, gt)
    values = evaluate_instances(pred, gt)
    assert values["dsb"] == dsb_score(overlap)
    assert values["aji"] == aggregated_jaccard_index(overlap)
    assert values["pq"] == panoptic_quality(overlap)["pq"]
    assert values["object_dice"] == object_dice(overlap)
