"""Boundary loss: signed distance maps (sign and magnitude), the cache, precomputed maps, the schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medseg.errors import MedsegError
from medseg.losses import (
    BoundaryLoss,
    DistanceMapCache,
    boundary_schedule,
    create_loss,
    signed_distance_map,
    target_distance_maps,
)
from medseg.outputs import SegOutput

ROW = np.array([[0, 0, 1, 1, 1, 0, 0]], dtype=bool)


def test_sdm_of_a_row_is_negative_inside_and_positive_outside() -> None:
    np.testing.assert_array_equal(signed_distance_map(ROW), [[2, 1, 0, -1, 0, 1, 2]])


def test_sdm_with_spacing_is_physical_and_stays_non_positive_inside() -> None:
    sdm = signed_distance_map(ROW, spacing=(1.0, 0.5))
    np.testing.assert_allclose(sdm, [[1.0, 0.5, 0.0, -0.5, 0.0, 0.5, 1.0]])


def test_sdm_2d_point_and_3d_cube() -> None:
    point = np.zeros((5, 5), dtype=bool)
    point[2, 2] = True
    sdm = signed_distance_map(point)
    assert sdm[2, 2] == 0 and sdm[0, 0] == pytest.approx(math.sqrt(8)) and sdm[2, 4] == 2
    cube = np.zeros((7, 7, 7), dtype=bool)
    cube[2:5, 2:5, 2:5] = True
    sdm = signed_distance_map(cube)
    assert sdm[3, 3, 3] == -1 and sdm[2, 2, 2] == 0
    assert sdm[0, 0, 0] == pytest.approx(math.sqrt(12)) and sdm[3, 3, 0] == 2
    assert (sdm[cube] <= 0).all() and (sdm[~cube] > 0).all()


def test_sdm_of_empty_and_full_masks_is_zero() -> None:
    assert not signed_distance_map(np.zeros((4, 4), bool)).any()
    assert not signed_distance_map(np.ones((3, 4, 4), bool)).any()


def test_boundary_loss_hand_computed() -> None:
    target = torch.from_numpy(ROW.astype(np.float32)).view(1, 1, 1, 7)
    half = create_loss("boundary", mode="binary")(torch.zeros(1, 1, 1, 7), target)
    assert float(half) == pytest.approx(0.5 * 5 / 7, rel=1e-6)  # p = 0.5 everywhere, mean φ = 5/7
    exact = create_loss("boundary")(torch.where(target > 0, 20.0, -20.0), target)
    shifted = create_loss("boundary")(torch.where(target.roll(2, -1) > 0, 20.0, -20.0), target)
    assert float(exact) == pytest.approx(-1 / 7, abs=1e-6) and float(shifted) > float(exact)


def test_boundary_loss_multiclass_excludes_background_by_default() -> None:
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, 1:3, 1:4] = 1
    labels[0, 4:, 4:] = 2
    logits = torch.randn(1, 3, 6, 6)
    probs = torch.softmax(logits, 1)
    phi = [torch.from_numpy(signed_distance_map((labels[0] == c).numpy())) for c in (1, 2)]
    expected = sum(float((probs[0, c + 1] * phi[c]).mean()) for c in range(2)) / 2
    assert float(create_loss("boundary")(logits, labels)) == pytest.approx(expected, rel=1e-5)


def test_distance_maps_are_cached_by_mask_and_spacing() -> None:
    cache = DistanceMapCache(max_items=2)
    a, b = ROW, ~ROW
    first = cache.get(a)
    assert cache.get(a) is first and (cache.hits, cache.misses) == (1, 1)
    cache.get(a, spacing=(1.0, 2.0))
    cache.get(b)
    assert len(cache) == 2 and cache.misses == 3
    loss = BoundaryLoss(mode="binary")
    logits, target = torch.randn(2, 1, 8, 8, 8), (torch.rand(2, 1, 8, 8, 8) > 0.7).float()
    loss(logits, target)
    loss(logits, target)
    assert (loss.cache.misses, loss.cache.hits) == (2, 2)


@pytest.mark.parametrize("mode,spatial", [("multiclass", (9, 10)), ("multiclass", (5, 6, 7)),
                                          ("multilabel", (5, 6, 7))])
def test_precomputed_maps_give_the_same_loss(mode: str, spatial: tuple[int, ...]) -> None:
    logits = torch.randn(2, 3, *spatial)
    if mode == "multiclass":
        target = torch.randint(0, 3, (2, 1, *spatial))
    else:
        target = (torch.rand(2, 3, *spatial) > 0.5).float()
    maps = target_distance_maps(target, 3, len(spatial), mode=mode)
    assert maps.shape == logits.shape
    loss = BoundaryLoss(mode=mode, cache_size=0)
    direct = loss(logits, target)
    torch.testing.assert_close(loss(logits, target, distance_map=maps), direct)
    torch.testing.assert_close(loss(SegOutput(logits, extras={"distance_map": maps}), target), direct)
    if mode == "multiclass":  # the kept channels only are accepted too
        torch.testing.assert_close(loss(logits, target, distance_map=maps[:, 1:]), direct)
    with pytest.raises(MedsegError, match="distance_map"):
        loss(logits, target, distance_map=maps[..., :-1])


def test_boundary_schedule_rises() -> None:
    assert boundary_schedule(0) == (1.0, 0.0)
    region, boundary = boundary_schedule(50)
    assert region == pytest.approx(0.5) and boundary == pytest.approx(0.5)
    assert boundary_schedule(500) == pytest.approx((0.01, 0.99))
    weights = [boundary_schedule(e)[1] for e in range(120)]
    assert all(b >= a for a, b in zip(weights, weights[1:], strict=False))
    assert boundary_schedule(9, strategy="increase", step=0.01) == pytest.approx((1.0, 0.1))
    with pytest.raises(MedsegError, match="strategy"):
        boundary_schedule(1, strategy="sometimes")
