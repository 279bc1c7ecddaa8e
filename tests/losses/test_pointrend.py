"""PointRend's loss wrapper: base loss on the coarse logits + CE/BCE on the points, targets read nearest."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.blocks.point_sampling import grid_point_coords
from medseg.errors import MedsegError
from medseg.losses import DeepSupervisionLoss, PointRendLoss, build_loss, create_loss, point_loss
from medseg.losses.pointrend import point_targets
from medseg.outputs import SegOutput


def pixels(indices: list[int], size: list[int]) -> torch.Tensor:
    """Centre coordinates of flat pixel ``indices`` of a grid of ``size``: ``[1, N, dims]``."""
    return grid_point_coords(torch.tensor([indices]), size)


@pytest.mark.parametrize("size", [[6, 7], [3, 4, 5]])
def test_targets_are_read_at_the_points_as_labels(size: list[int]) -> None:
    labels = torch.randint(0, 4, (1, *size))
    chosen = [0, 5, 17, 33, 41]
    sampled = point_targets(labels, pixels(chosen, size))
    assert sampled.dtype == labels.dtype and sampled.shape == (1, 1, 5)
    assert sampled[0, 0].tolist() == labels.flatten()[chosen].tolist()
    mask = (torch.rand(1, 1, *size) > 0.5).float()  # binary masks with a channel axis
    assert point_targets(mask, pixels(chosen, size))[0, 0].tolist() == mask.flatten()[chosen].tolist()


def test_multiclass_point_loss_is_the_cross_entropy_of_the_points_ignored_left_out() -> None:
    labels = torch.tensor([[[0, 1, 2], [2, 255, 1]]])
    chosen = [0, 1, 3, 4, 5]
    logits = torch.randn(1, 3, 5)
    value = point_loss(logits, pixels(chosen, [2, 3]), labels, mode="multiclass", ignore_index=255)
    truth = labels.flatten()[chosen]
    keep = truth != 255
    expected = F.cross_entropy(logits[0].T[keep], truth[keep])
    torch.testing.assert_close(value, expected)


def test_binary_point_loss_is_the_bce_of_the_points() -> None:
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    logits = torch.randn(1, 1, 4)
    value = point_loss(logits, pixels([0, 1, 2, 3], [2, 2]), mask)
    torch.testing.assert_close(value, F.binary_cross_entropy_with_logits(logits.flatten(), mask.flatten()))


def test_wrapper_adds_the_weighted_point_loss_to_the_base_loss_of_the_coarse_logits() -> None:
    base = create_loss("dice_ce", mode="multiclass")
    loss = PointRendLoss(base, weight=0.5, mode="multiclass")
    target = torch.randint(0, 3, (2, 8, 8))
    coords = torch.rand(2, 20, 2)
    output = SegOutput(torch.randn(2, 3, 8, 8), extras={"point_logits": torch.randn(2, 3, 20),
                                                        "point_coords": coords})
    expected = base(output.logits, target) + 0.5 * point_loss(output.extras["point_logits"], coords, target)
    torch.testing.assert_close(loss(output, target), expected)
    torch.testing.assert_close(loss(output.logits, target), base(output.logits, target))  # eval: base only


def test_build_loss_applies_the_wrapper_outermost() -> None:
    loss = build_loss({"losses": ["dice", "bce"], "mode": "binary", "deep_supervision": True,
                       "pointrend": {"weight": 2}})
    assert isinstance(loss, PointRendLoss) and isinstance(loss.loss, DeepSupervisionLoss)
    assert loss.weight == 2.0 and loss.mode == "binary"
    with pytest.raises(MedsegError, match="pointrend.wieght"):
        build_loss({"losses": ["dice"], "pointrend": {"wieght": 1}})
    with pytest.raises(MedsegError, match=">= 0"):
        build_loss({"losses": ["dice"], "pointrend": {"weight": -1}})
