"""Box ops against plain-Python references: IoU, greedy NMS (ties included), box coding, anchors, pasting."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import MedsegError
from medseg.ops import (
    AnchorGenerator,
    BoxCoder,
    batched_nms,
    box_iou,
    cell_anchors,
    clip_boxes_to_image,
    nms,
    paste_masks_in_image,
    remove_small_boxes,
)


def random_boxes(n: int, d: int = 2, size: float = 50.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, d, generator=g) * size
    side = torch.rand(n, d, generator=g) * size / 2 + 1
    return torch.cat([low, low + side], dim=1)


def iou_loop(a: list[float], b: list[float]) -> float:
    d = len(a) // 2
    inter, va, vb = 1.0, 1.0, 1.0
    for i in range(d):
        inter *= max(0.0, min(a[d + i], b[d + i]) - max(a[i], b[i]))
        va *= a[d + i] - a[i]
        vb *= b[d + i] - b[i]
    return inter / (va + vb - inter)


def greedy_nms_loop(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    """The textbook loop: repeatedly keep the best remaining box (lowest index among equal scores)."""
    remaining = list(range(len(boxes)))
    keep = []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        keep.append(best)
        remaining = [i for i in remaining if i != best and iou_loop(boxes[best], boxes[i]) <= threshold]
    return keep


@pytest.mark.parametrize("d", [2, 3])
def test_box_iou_matches_a_loop(d: int) -> None:
    a, b = random_boxes(13, d, seed=1), random_boxes(9, d, seed=2)
    iou = box_iou(a, b)
    expected = torch.tensor([[iou_loop(x, y) for y in b.tolist()] for x in a.tolist()])
    torch.testing.assert_close(iou, expected, atol=1e-6, rtol=1e-5)
    assert (iou > 0).any() and (iou == 0).any()


@pytest.mark.parametrize(("seed", "d", "threshold"), [(0, 2, 0.5), (1, 2, 0.3), (2, 3, 0.2), (3, 2, 0.7)])
def test_nms_keeps_the_same_set_as_a_greedy_loop(seed: int, d: int, threshold: float) -> None:
    boxes = random_boxes(120, d, seed=seed)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 12, (120,), generator=g).float() / 12  # many ties
    kept = nms(boxes, scores, threshold).tolist()
    expected = greedy_nms_loop(boxes.tolist(), scores.tolist(), threshold)
    assert kept == expected
    assert 1 < len(kept) < 120


def test_batched_nms_is_nms_per_group() -> None:
    boxes = random_boxes(80, seed=4)
    scores = torch.rand(80, generator=torch.Generator().manual_seed(4))
    groups = torch.randint(0, 3, (80,), generator=torch.Generator().manual_seed(5))
    kept = set(batched_nms(boxes, scores, groups, 0.4).tolist())
    expected = set()
    for g in range(3):
        idx = torch.where(groups == g)[0]
        expected |= {int(idx[i]) for i in greedy_nms_loop(boxes[idx].tolist(), scores[idx].tolist(), 0.4)}
    assert kept == expected
    assert len(kept) > len(set(nms(boxes, scores, 0.4).tolist()))


def test_batched_nms_on_many_boxes_runs_groups_apart_with_the_same_result() -> None:
    boxes = random_boxes(1500, size=200.0, seed=9)
    scores = torch.rand(1500, generator=torch.Generator().manual_seed(9))
    groups = torch.randint(0, 4, (1500,), generator=torch.Generator().manual_seed(10))
    kept = batched_nms(boxes, scores, groups, 0.5)  # > 1000 boxes: one NMS per group
    offsets = groups.float()[:, None] * (boxes.max() + 1)
    assert kept.tolist() == nms(boxes + offsets, scores, 0.5).tolist()  # the offset trick in one pass
    assert (scores[kept][:-1] >= scores[kept][1:]).all()


def test_nms_of_nothing_and_mismatched_input() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    with pytest.raises(MedsegError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)


def test_box_coding_round_trip_and_known_values() -> None:
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    refs, targets = random_boxes(50, seed=6), random_boxes(50, seed=7)
    deltas = coder.encode(targets, refs)
    torch.testing.assert_close(coder.decode(deltas, refs), targets, atol=1e-4, rtol=1e-5)
    # one hand-computed case: reference 0..10, target 5..25 -> dx = 10 * (15 - 5) / 10, dw = 5 log 2
    d = coder.encode(torch.tensor([[5.0, 0.0, 25.0, 10.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    torch.testing.assert_close(d, torch.tensor([[10.0, 0.0, 5 * math.log(2), 0.0]]))


def test_box_decoding_clamps_the_log_size() -> None:
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    out = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(1000.0))


def test_class_specific_decoding_has_four_columns_per_class() -> None:
    coder = BoxCoder()
    refs = random_boxes(5, seed=8)
    deltas = torch.randn(5, 12, generator=torch.Generator().manual_seed(8)) * 0.1
    out = coder.decode(deltas, refs)
    assert out.shape == (5, 12)
    torch.testing.assert_close(out[:, 4:8], coder.decode(deltas[:, 4:8], refs))


def test_cell_anchors_follow_torchvision_rounding() -> None:
    anchors = cell_anchors((32,), (0.5, 1.0, 2.0))
    # w = 32 / sqrt(r), h = 32 * sqrt(r), halves rounded: r = 0.5 -> 45.25 x 22.63 -> (-23, -11, 23, 11)
    assert anchors.tolist() == [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0],
                                [-11.0, -23.0, 11.0, 23.0]]


def test_grid_anchors_are_shifted_by_the_stride() -> None:
    gen = AnchorGenerator(((32,), (64,)), (1.0,))
    feats = [torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 2, 3)]
    anchors = gen((16, 24), feats)
    assert anchors.shape == (4 * 6 + 2 * 3, 4)
    assert anchors[1].tolist() == [-12.0, -16.0, 20.0, 16.0]  # x shift of one stride (4)
    assert anchors[6].tolist() == [-16.0, -12.0, 16.0, 20.0]  # next row
    assert anchors[24 + 4].tolist() == [-24.0, -24.0, 40.0, 40.0]  # level 2: stride 8, row 1, col 1


def test_clip_and_remove_small() -> None:
    boxes = torch.tensor([[-5.0, 2.0, 30.0, 8.0], [3.0, 3.0, 3.0005, 9.0]])
    clipped = clip_boxes_to_image(boxes, (6, 20))
    assert clipped[0].tolist() == [0.0, 2.0, 20.0, 6.0]
    assert remove_small_boxes(clipped, 1e-3).tolist() == [0]


def test_paste_masks_puts_a_full_mask_into_its_box() -> None:
    masks = torch.ones(2, 28, 28)
    boxes = torch.tensor([[10.0, 5.0, 30.0, 20.0], [-10.0, -10.0, 5.0, 5.0]])
    pasted = paste_masks_in_image(masks, boxes, (40, 50))
    assert pasted.shape == (2, 40, 50)
    inside = pasted[0] > 0.5
    ys, xs = torch.where(inside)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 19, 10, 29)  # the pixels of [10, 30) x [5, 20)
    assert (pasted[0, 12, 20] - 1).abs() < 1e-6 and pasted[0, 30, 40] == 0
    assert (pasted[1] > 0.5)[:5, :5].all() and not (pasted[1] > 0.5)[5:].any()
    assert paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (7, 9)).shape == (0, 7, 9)
