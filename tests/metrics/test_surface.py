"""Surface distances against MONAI, a full-volume reference, hand-computed values, empty conventions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.metrics import surface
from medseg.metrics.surface import distance_metrics, surface_distances


def blobs(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 2.5,
          level: float = 0.5) -> np.ndarray:
    """Random smooth shapes: Gaussian-smoothed noise above ``level`` standard deviations."""
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return smooth > level * smooth.std()


def monai_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], tolerance: float) -> dict:
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    y_pred = torch.from_numpy(np.stack([~pred, pred])[None]).float()
    y = torch.from_numpy(np.stack([~gt, gt])[None]).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "hd": compute_hausdorff_distance(y_pred, y, spacing=spacing).item(),
            "hd95": compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing).item(),
            "asd": compute_average_surface_distance(y_pred, y, spacing=spacing).item(),
            "assd": compute_average_surface_distance(y_pred, y, symmetric=True, spacing=spacing).item(),
            "nsd": compute_surface_dice(y_pred, y, [tolerance], spacing=spacing).item(),
        }


def full_volume_distances(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...],
                          connectivity: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The naive computation: erosion and distance transforms of the whole volume, no crop."""
    structure = ndimage.generate_binary_structure(pred.ndim, connectivity)
    edge_pred = pred & ~ndimage.binary_erosion(pred, structure)
    edge_gt = gt & ~ndimage.binary_erosion(gt, structure)
    return (ndimage.distance_transform_edt(~edge_gt, sampling=spacing)[edge_pred],
            ndimage.distance_transform_edt(~edge_pred, sampling=spacing)[edge_gt])


def cases(ndim: int) -> list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    """Random blob pairs, single voxels, border-touching masks and far-apart objects, anisotropic spacing."""
    rng = np.random.default_rng(ndim)
    shape = (40, 48) if ndim == 2 else (20, 26, 22)
    out = []
    for _ in range(3):
        spacing = tuple(rng.uniform(0.4, 3.0, ndim).round(3))
        out.append((blobs(rng, shape), blobs(rng, shape), spacing))
    spacing = (2.5, 0.7, 0.9)[-ndim:]
    single = np.zeros(shape, bool)
    single[(5,) * ndim] = True
    other_single = np.zeros(shape, bool)
    other_single[(9, 3, 7)[-ndim:]] = True
    border = blobs(rng, shape)
    border[0] = True  # a whole face on the image border
    border[(slice(None),) * (ndim - 1) + (-1,)] = True
    far = np.zeros(shape, bool)
    far[:3, :3] = True  # a small false positive far from the truth's objects
    far[-5:-1, -6:-1] = True
    far |= blobs(rng, shape, level=3.0)
    out += [(single, blobs(rng, shape), spacing), (single, other_single, spacing),
            (border, blobs(rng, shape), spacing), (far, blobs(rng, shape), spacing)]
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_matches_monai(ndim: int) -> None:
    for pred, gt, spacing in cases(ndim):
        assert pred.any() and gt.any()
        tolerance = 1.5 * min(spacing)
        ours = distance_metrics(pred, gt, spacing, tolerance)
        for name, value in monai_metrics(pred, gt, spacing, tolerance).items():
            assert ours[name] == pytest.approx(value, rel=1e-6), (name, spacing)
        assert ours["msd"] == ours["hd"]


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("margin", [1, 4, 1000])
@pytest.mark.parametrize("connectivity", [1, 3])
@pytest.mark.parametrize("max_cells", [1, 64])
def test_crop_equals_full_volume(ndim: int, margin: int, connectivity: int, max_cells: int,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaf crops, windows and the nearest-neighbour fallback give the full-volume distances exactly."""
    monkeypatch.setattr(surface, "WINDOW_MARGIN", margin)
    monkeypatch.setattr(surface, "MAX_CELLS", max_cells)
    connectivity = min(connectivity, ndim)
    rng = np.random.default_rng(10 * ndim + margin)
    for pred, gt, spacing in cases(ndim):
        got = surface_distances(pred, gt, spacing, connectivity)
        expected = full_volume_distances(pred, gt, spacing, connectivity)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(np.sort(g), np.sort(e), rtol=1e-12)
    shape = (30, 31) if ndim == 2 else (14, 15, 16)
    for _ in range(4):  # scattered speckles: many small leaves
        pred, gt = rng.random(shape) < 0.01, ndimage.binary_dilation(rng.random(shape) < 0.005)
        if pred.any() and gt.any():
            spacing = tuple(rng.uniform(0.3, 3.0, ndim))
            for g, e in zip(surface_distances(pred, gt, spacing, connectivity),
                            full_volume_distances(pred, gt, spacing, connectivity), strict=True):
                np.testing.assert_allclose(np.sort(g), np.sort(e), rtol=1e-12)


@pytest.mark.parametrize("flip", [False, True])
def test_window_does_not_certify_a_distance_beyond_its_side(flip: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A window side one voxel inside the crop: the truth voxel just beyond it is the nearest (0.2), closer
    than the nearest one inside the window (0.3)."""
    monkeypatch.setattr(surface, "WINDOW_MARGIN", 1)
    pred, gt = np.zeros((6, 2), bool), np.zeros((6, 2), bool)
    pred[2, 0] = True
    gt[0, 0] = gt[5, 0] = gt[3, 1] = gt[4, 1] = True  # leaves: row 0 and rows 2..5 (window: rows 1..5)
    if flip:
        pred, gt = pred[::-1], gt[::-1]
    to_gt, to_pred = surface_distances(pred, gt, spacing=(0.1, 1.0))
    assert to_gt.tolist() == pytest.approx([0.2])
    assert sorted(to_pred) == pytest.approx(sorted([0.2, 0.3, math.hypot(0.1, 1.0), math.hypot(0.2, 1.0)]))


def test_padding_the_volume_changes_nothing() -> None:
    pred, gt, spacing = cases(3)[0]
    padded = [np.pad(m, ((3, 40), (0, 25), (17, 2))) for m in (pred, gt)]
    assert distance_metrics(*padded, spacing) == distance_metrics(pred, gt, spacing)


def test_hand_computed_single_voxels() -> None:
    pred, gt = np.zeros((5, 6, 3), bool), np.zeros((5, 6, 3), bool)
    pred[0, 0, 0] = gt[2, 3, 0] = True
    result = distance_metrics(pred, gt, spacing=(2.0, 1.0, 5.0), tolerance=5.0)
    # √(4² + 3²) = 5
    assert result["hd"] == result["hd95"] == result["asd"] == result["assd"] == pytest.approx(5.0)
    assert result["nsd"] == 1.0
    assert distance_metrics(pred, gt, spacing=(2.0, 1.0, 5.0), tolerance=4.99)["nsd"] == 0.0


def test_hand_computed_squares() -> None:
    """A 4x4 square against the same square shifted by one column, unit spacing."""
    pred, gt = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    pred[2:6, 1:5] = True
    gt[2:6, 2:6] = True
    # surfaces: 12 border pixels each; on the shared rows 2 and 5 the 6 pixels of the common columns lie on
    # the other surface (0); the 4 pixels of the unshared column and the 2 of the inner column are at 1
    a_to_b, b_to_a = surface_distances(pred, gt)
    assert sorted(a_to_b) == sorted(b_to_a) == [0.0] * 6 + [1.0] * 6
    result = distance_metrics(pred, gt, tolerance=0.5)
    assert result["hd"] == 1.0 and result["asd"] == result["assd"] == pytest.approx(6 / 12)
    assert result["hd95"] == 1.0 and result["nsd"] == pytest.approx(12 / 24)


def test_empty_conventions() -> None:
    empty, mask = np.zeros((6, 7), bool), np.zeros((6, 7), bool)
    mask[2:4, 3:5] = True
    assert distance_metrics(empty, empty) == {"hd": 0, "hd95": 0, "asd": 0, "assd": 0, "msd": 0, "nsd": 1}
    for pred, gt in ((empty, mask), (mask, empty)):
        result = distance_metrics(pred, gt, (1.0, 2.0))
        assert result["nsd"] == 0.0
        assert all(math.isnan(result[k]) for k in ("hd", "hd95", "asd", "assd", "msd"))
        worst = distance_metrics(pred, gt, (1.0, 2.0), empty_distance=100.0)
        assert worst == {"hd": 100, "hd95": 100, "asd": 100, "assd": 100, "msd": 100, "nsd": 0}
    to_gt, to_pred = surface_distances(mask, empty)
    assert len(to_pred) == 0 and np.isinf(to_gt).all() and len(to_gt) == 4
    assert math.isnan(surface.hausdorff(empty, mask))
    assert surface.normalized_surface_dice(empty, empty) == 1.0


def test_single_metric_functions_agree_with_distance_metrics() -> None:
    pred, gt, spacing = cases(2)[1]
    result = distance_metrics(pred, gt, spacing, tolerance=2.0)
    assert surface.hausdorff(pred, gt, spacing) == result["hd"]
    assert surface.hausdorff95(pred, gt, spacing) == result["hd95"]
    assert surface.average_surface_distance(pred, gt, spacing) == result["asd"]
    assert surface.average_symmetric_surface_distance(pred, gt, spacing) == result["assd"]
    assert surface.msd(pred, gt, spacing) == result["msd"]
    assert surface.normalized_surface_dice(pred, gt, spacing, 2.0) == result["nsd"]
    assert surface.hausdorff(torch.from_numpy(pred), torch.from_numpy(gt), spacing) == result["hd"]


def test_bad_spacing_raises() -> None:
    mask = np.ones((3, 3), bool)
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(mask, mask, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(mask, mask, (1.0, 0.0))
    assert surface_distances(mask, mask, 2.0)[0].tolist() == [0.0] * 8
