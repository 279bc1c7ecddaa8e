"""PointRend's point head: the spec's parameter counts and where the coarse logits enter."""

from __future__ import annotations

import pytest
import torch

from medseg.blocks.point_head import PointRendHead
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters


@pytest.mark.parametrize("classes, every_layer, expected", [(19, False, 207_123), (19, True, 217_212),
                                                            (2, False, 198_402)])
def test_parameter_counts_of_the_spec(classes: int, every_layer: bool, expected: int) -> None:
    assert count_parameters(PointRendHead(256, classes, every_layer=every_layer)) == expected


def test_layout_and_output() -> None:
    head = PointRendHead(16, 3, channels=8, layers=3, every_layer=True)
    assert [fc.in_channels for fc in head.fcs] == [19, 11, 11] and head.predictor.in_channels == 11
    out = head(torch.randn(2, 16, 50), torch.randn(2, 3, 50))
    assert out.shape == (2, 3, 50)
    plain = PointRendHead(16, 3, channels=8)
    assert [fc.in_channels for fc in plain.fcs] == [19, 8, 8] and plain.predictor.in_channels == 8


def test_points_are_independent_and_the_predictor_starts_near_zero() -> None:
    head = PointRendHead(8, 2, channels=16)
    fine, coarse = torch.randn(1, 8, 30), torch.randn(1, 2, 30)
    out = head(fine, coarse)
    torch.testing.assert_close(head(fine[..., 5:9], coarse[..., 5:9]), out[..., 5:9])
    assert out.abs().max() < 0.1 and head.predictor.bias.abs().sum() == 0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(MedsegError, match="fine_channels"):
        PointRendHead(0, 2)
