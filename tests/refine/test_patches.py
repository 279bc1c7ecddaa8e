"""Boundary patches and their reassembly (medseg.refine, BPR)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.errors import MedsegError
from medseg.ops.boxes import box_iou
from medseg.refine import (
    boundary_patches,
    boundary_score,
    crop_patches,
    mean_patch_probabilities,
    patch_shape,
    refine_label_map,
    refine_mask,
)


def square(size: int = 200, low: int = 50, high: int = 150) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[low:high, low:high] = True
    return mask


def coarse_refiner(starts: np.ndarray, shape: tuple[int, ...], masks: np.ndarray) -> np.ndarray:
    """A refiner that returns the coarse mask patches (reassembly must then be the identity)."""
    return masks.astype(np.float32)


def corners(starts: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """ops-style boxes (x first) of patch starts."""
    ends = starts + np.asarray(shape)
    return torch.from_numpy(np.concatenate([starts[:, ::-1], ends[:, ::-1]], axis=1).astype(np.float32))


def test_boundary_score_follows_the_official_formula() -> None:
    mask = square(20, 5, 15)
    score = boundary_score(mask)
    s = np.zeros((22, 22))
    padded = np.pad(mask, 1).astype(float)
    for dy in range(3):
        for dx in range(3):
            s += np.pad(padded, 1)[dy:dy + 22, dx:dx + 22]
    s = s[1:-1, 1:-1]
    np.testing.assert_allclose(score, np.minimum(np.abs(s - 9), np.abs(s)) / 4.5, atol=1e-6)
    ring = np.zeros_like(mask)
    ring[4:16, 4:16] = True
    ring[6:14, 6:14] = False  # the inner and outer one-pixel rings of the square's edge
    assert np.array_equal(score > 0, ring)
    assert score.max() == pytest.approx(8 / 9)  # s = 4 at a convex inner corner


def test_boxes_cover_the_boundary_are_centred_on_it_and_lie_inside() -> None:
    mask = square()
    score = boundary_score(mask)
    for iou in (0.25, 0.55):
        starts = boundary_patches(mask, 64, iou)
        assert len(starts) > 0 and starts.dtype == np.int64
        centres = starts + 32
        assert np.all(score[tuple(centres.T)] > 0), "a patch centred off the boundary"
        covered = np.zeros_like(mask)
        for y, x in starts:
            covered[y:y + 64, x:x + 64] = True
        assert np.all(covered[score > 0]), "boundary pixels outside every patch"
        assert starts.min() >= 0 and (starts + 64).max() <= 200


def test_nms_keeps_boxes_below_the_threshold_and_denser_at_higher_thresholds() -> None:
    mask = square()
    sparse, dense = boundary_patches(mask, 64, 0.25), boundary_patches(mask, 64, 0.55)
    assert len(dense) > len(sparse)
    for starts, threshold in ((sparse, 0.25), (dense, 0.55)):
        iou = box_iou(corners(starts, (64, 64)), corners(starts, (64, 64)))
        iou.fill_diagonal_(0)
        assert iou.max() <= threshold + 1e-6


def test_border_boxes_are_shifted_inside() -> None:
    mask = np.zeros((100, 120), bool)
    mask[0:30, 0:40] = True  # touches the top-left corner: boxes centred there cross the border
    starts = boundary_patches(mask, 64, 0.25)
    assert starts.min() == 0
    assert np.all(starts + 64 <= np.array([100, 120]))
    # the boundary pixel (0, 39) proposes a box starting at (-32, 7): shifted to row 0, same column
    assert len(starts) == len(np.unique(starts, axis=0))


def test_small_images_get_patches_of_their_own_extent() -> None:
    mask = np.zeros((40, 100), bool)
    mask[10:30, 20:60] = True
    assert patch_shape(mask.shape, 64) == (40, 64)
    starts = boundary_patches(mask, 64)
    assert np.all(starts[:, 0] == 0) and np.all(starts[:, 1] + 64 <= 100)
    assert np.array_equal(refine_mask(mask, coarse_refiner, 64), mask)


def test_empty_and_full_masks_have_no_patches() -> None:
    assert boundary_patches(np.zeros((50, 50), bool)).shape == (0, 2)
    full = np.ones((50, 50), bool)
    assert len(boundary_patches(full, 16)) > 0  # zero padding: the image border is a boundary (official)
    assert boundary_patches(np.zeros((8, 8, 8), bool)).shape == (0, 3)
    with pytest.raises(MedsegError, match="2D or 3D"):
        boundary_patches(np.zeros(10, bool))


def test_reassembly_averages_overlaps_and_keeps_the_rest() -> None:
    starts = np.array([[0, 0], [0, 2]])
    probabilities = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 0.0)]).astype(np.float32)
    window, mean, covered = mean_patch_probabilities(probabilities, starts, (10, 10))
    assert window == (slice(0, 4), slice(0, 6))
    assert np.allclose(mean[:, :2], 1) and np.allclose(mean[:, 2:4], 0.5) and np.allclose(mean[:, 4:], 0)
    assert covered.all()

    mask = square(100, 30, 70)

    def grow(starts: np.ndarray, shape: tuple[int, ...], masks: np.ndarray) -> np.ndarray:
        return np.ones((len(starts), *shape), np.float32)  # everything foreground

    refined = refine_mask(mask, grow, 16)
    covered = np.zeros_like(mask)
    for y, x in boundary_patches(mask, 16):
        covered[y:y + 16, x:x + 16] = True
    assert np.all(refined[covered]) and np.array_equal(refined[~covered], mask[~covered])
    assert refined.sum() > mask.sum()


@pytest.mark.parametrize("dims", [2, 3])
def test_reassembly_is_the_identity_for_the_coarse_refiner(dims: int) -> None:
    rng = np.random.default_rng(0)
    shape = (48, 56) if dims == 2 else (24, 28, 20)
    grid = np.indices(shape)
    centre = np.array(shape)[:, None, None] if dims == 2 else np.array(shape)[:, None, None, None]
    blob = ((grid - centre / 2) ** 2).sum(axis=0) < (min(shape) / 3) ** 2
    assert np.array_equal(refine_mask(blob, coarse_refiner, 16), blob)
    semantic = np.zeros(shape, np.uint8)  # three classes
    semantic[blob] = 1
    semantic[tuple(slice(0, n // 3) for n in shape)] = 2
    semantic[tuple(slice(n // 2, n // 2 + 5) for n in shape)] = 3
    assert np.array_equal(refine_label_map(semantic, coarse_refiner, 16), semantic)
    instances = np.zeros(shape, np.uint16)  # touching instances with arbitrary ids
    for value in (3, 17, 400):
        corner = rng.integers(0, np.array(shape) - 8)
        instances[tuple(slice(c, c + 10) for c in corner)] = value
    out = refine_label_map(instances, coarse_refiner, 16, 0.25)
    assert out.dtype == instances.dtype and np.array_equal(out, instances)


def test_label_conflicts_go_to_the_most_confident_label() -> None:
    labels = np.zeros((40, 40), np.uint8)
    labels[5:20, 5:35] = 1
    labels[20:35, 5:35] = 2

    confidences = iter([0.9, 0.7])  # labels in ascending order, one refiner call each (patches_per_call=1)

    def refiner(starts: np.ndarray, shape: tuple[int, ...], masks: np.ndarray) -> np.ndarray:
        # the label claims every pixel of its patches with its confidence
        return np.full((len(starts), *shape), next(confidences), np.float32)

    out = refine_label_map(labels, refiner, 8, patches_per_call=1)
    # the boundary between the labels is covered by both: label 1 (0.9) wins there over label 2 (0.7)
    assert np.all(out[19:21, 10:30] == 1)
    assert set(np.unique(out)) <= {0, 1, 2}
    assert np.all(out[27, 10:30] == 2)  # label 2's interior keeps it (label 1's patches do not reach)


def test_batching_labels_does_not_change_the_result() -> None:
    rng = np.random.default_rng(1)
    labels = np.zeros((64, 64), np.int32)
    for value in range(1, 12):
        y, x = rng.integers(0, 54, 2)
        labels[y:y + rng.integers(4, 12), x:x + rng.integers(4, 12)] = value
    calls = []

    def smooth(starts: np.ndarray, shape: tuple[int, ...], masks: np.ndarray) -> np.ndarray:
        calls.append(len(starts))  # a refiner that changes the masks: a blur of each patch
        return np.stack([ndimage.uniform_filter(m.astype(np.float32), 5) for m in masks])

    one_by_one = refine_label_map(labels, smooth, 16, patches_per_call=1)
    single_calls = len(calls)
    calls.clear()
    together = refine_label_map(labels, smooth, 16)
    assert len(calls) == 1 and single_calls == len(np.unique(labels)) - 1
    assert np.array_equal(one_by_one, together) and not np.array_equal(together, labels)


def test_crop_patches_reads_the_windows() -> None:
    array = np.arange(2 * 6 * 7).reshape(2, 6, 7)
    patches = crop_patches(array, np.array([[1, 2], [0, 0]]), (3, 4))
    assert patches.shape == (2, 2, 3, 4)
    assert np.array_equal(patches[0], array[:, 1:4, 2:6]) and np.array_equal(patches[1], array[:, :3, :4])
