"""PointRend's point utilities: sampling (2D/3D, bilinear/nearest), uncertainty, point selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.blocks.point_sampling import (
    MIN_TRAINING_POINTS,
    grid_point_coords,
    point_sample,
    points_for_size,
    training_points,
    uncertain_grid_points,
    uncertainty,
)
from medseg.errors import MedsegError


def centre_coords(size: list[int]) -> torch.Tensor:
    """Every pixel centre of a grid of ``size`` (array order), in flat order: ``[1, prod(size), dims]``."""
    count = 1
    for s in size:
        count *= s
    return grid_point_coords(torch.arange(count)[None], size)


@pytest.mark.parametrize("size", [[5, 7], [3, 4, 6]])
def test_sampling_at_pixel_centres_returns_the_map(size: list[int]) -> None:
    features = torch.randn(1, 3, *size)
    sampled = point_sample(features, centre_coords(size))
    torch.testing.assert_close(sampled, features.flatten(2))


@pytest.mark.parametrize("size, finer", [([5, 7], [13, 21]), ([3, 4, 6], [6, 9, 12])])
def test_sampling_at_a_finer_grid_equals_interpolation(size: list[int], finer: list[int]) -> None:
    """Bilinear (trilinear) with align_corners=False, the borders clamped as F.interpolate does."""
    features = torch.randn(2, 4, *size)
    coords = centre_coords(finer).expand(2, -1, -1)
    expected = F.interpolate(features, size=finer, mode="bilinear" if len(size) == 2 else "trilinear",
                             align_corners=False)
    torch.testing.assert_close(point_sample(features, coords), expected.flatten(2))


def test_coordinates_are_in_grid_sample_order_last_axis_first() -> None:
    d, h, w = 3, 4, 5
    z, y, x = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    volume = (100 * z + 10 * y + x).float()[None, None]
    point = torch.tensor([[[(3 + 0.5) / w, (2 + 0.5) / h, (1 + 0.5) / d]]])  # x = 3, y = 2, z = 1
    assert point_sample(volume, point).item() == pytest.approx(123.0)
    assert point_sample(volume[:, :, 0], point[..., :2]).item() == pytest.approx(23.0)  # slice z = 0


def test_nearest_sampling_keeps_labels() -> None:
    labels = torch.randint(0, 5, (1, 1, 6, 8)).float()
    coords = torch.rand(1, 200, 2)
    sampled = point_sample(labels, coords, mode="nearest")[0, 0]
    rows = (coords[0, :, 1] * 6).floor().long().clamp(max=5)
    cols = (coords[0, :, 0] * 8).floor().long().clamp(max=7)
    torch.testing.assert_close(sampled, labels[0, 0, rows, cols])


def test_mismatched_points_are_a_clear_error() -> None:
    with pytest.raises(MedsegError, match="do not fit"):
        point_sample(torch.randn(1, 2, 4, 4), torch.rand(1, 10, 3))


def test_uncertainty_is_minus_the_top_two_margin_or_minus_abs() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, -2.0]]).T.reshape(1, 3, 2)
    assert uncertainty(logits).flatten().tolist() == pytest.approx([-2.0, -0.5])
    binary = torch.tensor([[[-4.0, 0.25, 2.0]]])
    assert uncertainty(binary).flatten().tolist() == pytest.approx([-4.0, -0.25, -2.0])
    multilabel = torch.tensor([[[5.0, -3.0], [0.1, 4.0]]])  # channels x points
    assert uncertainty(multilabel, multilabel=True).flatten().tolist() == pytest.approx([-0.1, -3.0])


def test_training_points_scale_with_the_area() -> None:
    assert points_for_size([512, 1024]) == 2048
    assert points_for_size([352, 352]) == 484
    assert points_for_size([128, 128, 128]) == 8192
    assert points_for_size([32, 32]) == MIN_TRAINING_POINTS


def test_the_beta_share_of_training_points_lies_in_the_most_uncertain_region() -> None:
    """Binary logits 20 (x - 0.5): the most uncertain band is around x = 0.5. The 0.75 N most uncertain of
    3 N uniform candidates fall within |x - 0.5| < ~0.125; the band |x - 0.5| < 0.15 (30% of the area)
    must hold at least beta N of the points (uniform points would put ~0.3 N there), and the
    (1 - beta) N uniform points must put some outside it."""
    n, beta = 2048, 0.75
    x = (torch.arange(16) + 0.5) / 16
    logits = (20 * (x - 0.5)).expand(2, 1, 16, 16).contiguous()
    coords = training_points(logits, n, oversample=3, importance=beta)
    assert coords.shape == (2, n, 2) and coords.min() >= 0 and coords.max() <= 1
    inside = ((coords[..., 0] - 0.5).abs() < 0.15).sum(dim=1)
    assert (inside >= beta * n).all()
    outside = n - inside
    assert ((outside > 0.1 * n) & (outside < 0.25 * n)).all()  # uniform: 0.7 of 0.25 N expected
    uniform = training_points(logits, n, oversample=3, importance=0.0)
    assert ((uniform[..., 0] - 0.5).abs() < 0.15).sum(dim=1).max() < 0.4 * n


def test_training_points_in_3d_and_bad_ratios() -> None:
    coords = training_points(torch.randn(1, 3, 4, 5, 6), 100)
    assert coords.shape == (1, 100, 3) and coords.min() >= 0 and coords.max() <= 1
    with pytest.raises(MedsegError, match="importance"):
        training_points(torch.randn(1, 1, 4, 4), 10, importance=1.5)


def test_uncertain_grid_points_are_the_top_scores_with_their_centres() -> None:
    scores = torch.randn(2, 1, 6, 9)
    indices, coords = uncertain_grid_points(scores, 10)
    expected = scores.flatten(1).argsort(dim=1, descending=True)[:, :10]
    assert torch.equal(indices.sort(dim=1).values, expected.sort(dim=1).values)
    rows, cols = indices // 9, indices % 9
    torch.testing.assert_close(coords[..., 0], (cols + 0.5) / 9)
    torch.testing.assert_close(coords[..., 1], (rows + 0.5) / 6)
    torch.testing.assert_close(point_sample(scores, coords)[:, 0], scores.flatten(1).gather(1, indices))
    all_indices, _ = uncertain_grid_points(scores, 1000)  # more points than the grid has: every point
    assert all_indices.shape == (2, 54)
