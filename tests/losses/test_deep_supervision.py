"""Deep-supervision wrapper: weights, nearest down-sampling of targets, up-sampling of outputs, extras."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import MedsegError
from medseg.losses import DeepSupervisionLoss, create_loss, deep_supervision_weights
from medseg.outputs import SegOutput


class Recorder(nn.Module):
    """A loss that records what it receives and returns the mean of the target (a known value)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], torch.Tensor, dict]] = []

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras) -> torch.Tensor:
        self.calls.append((tuple(logits.shape), target, extras))
        return target.float().mean()


def test_default_weights_are_halving_and_normalised() -> None:
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_targets_are_downsampled_nearest_to_each_aux_map(spatial_dims: int) -> None:
    size = 8
    labels = torch.randint(0, 3, (2, *[size] * spatial_dims))
    output = SegOutput(torch.randn(2, 3, *[size] * spatial_dims),
                       aux=[torch.randn(2, 3, *[size // f] * spatial_dims) for f in (2, 4)])
    recorder = Recorder()
    loss = DeepSupervisionLoss(recorder)
    value = loss(output, labels)
    sizes = [call[0][2:] for call in recorder.calls]
    assert sizes == [(size,) * spatial_dims, (size // 2,) * spatial_dims, (size // 4,) * spatial_dims]
    half, quarter = recorder.calls[1][1], recorder.calls[2][1]
    index = (slice(None),) + (slice(1, None, 2),) * spatial_dims  # nearest-exact picks the centre voxels
    assert half.dtype == labels.dtype and torch.equal(half, labels[index])
    assert torch.equal(quarter, labels[(slice(None),) + (slice(2, None, 4),) * spatial_dims])
    expected = sum(w * t.float().mean() for w, (_, t, _) in zip(deep_supervision_weights(3), recorder.calls,
                                                                strict=True))
    torch.testing.assert_close(value, expected)


def test_target_with_channel_axis_keeps_its_form() -> None:
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    recorder = Recorder()
    DeepSupervisionLoss(recorder)(SegOutput(torch.randn(2, 1, 8, 8), aux=[torch.randn(2, 1, 4, 4)]), mask)
    assert recorder.calls[1][1].shape == (2, 1, 4, 4)


def test_dice_under_deep_supervision_equals_the_weighted_sum() -> None:
    labels = torch.randint(0, 3, (2, 1, 16, 16))
    output = SegOutput(torch.randn(2, 3, 16, 16), aux=[torch.randn(2, 3, 8, 8), torch.randn(2, 3, 16, 16)])
    dice = create_loss("dice")
    ds = DeepSupervisionLoss(dice, weights=[1.0, 0.5, 0.25])
    expected = (dice(output.logits, labels) + 0.5 * dice(output.aux[0], labels[:, :, 1::2, 1::2])
                + 0.25 * dice(output.aux[1], labels))
    torch.testing.assert_close(ds(output, labels), expected)
    torch.testing.assert_close(ds(output.logits, labels), dice(output.logits, labels))


def test_outputs_can_be_upsampled_instead() -> None:
    mask = (torch.rand(2, 1, 6, 8, 8) > 0.5).float()
    output = SegOutput(torch.randn(2, 1, 6, 8, 8), aux=[torch.randn(2, 1, 3, 4, 4)])
    bce = create_loss("bce")
    up = F.interpolate(output.aux[0], size=(6, 8, 8), mode="trilinear", align_corners=False)
    expected = (2 * bce(output.logits, mask) + bce(up, mask)) / 3
    torch.testing.assert_close(DeepSupervisionLoss(bce, resize="output")(output, mask), expected)


def test_extras_follow_the_target_and_plain_modules_work() -> None:
    recorder = Recorder()
    maps = torch.randn(2, 1, 8, 8)
    output = SegOutput(torch.randn(2, 1, 8, 8), aux=[torch.randn(2, 1, 4, 4)], extras={"distance_map": maps})
    DeepSupervisionLoss(recorder)(output, torch.zeros(2, 1, 8, 8), other=1)
    assert recorder.calls[0][2]["distance_map"] is maps and recorder.calls[0][2]["other"] == 1
    assert torch.equal(recorder.calls[1][2]["distance_map"], maps[:, :, 1::2, 1::2])
    plain = DeepSupervisionLoss(nn.BCEWithLogitsLoss())
    assert torch.isfinite(plain(output, torch.zeros(2, 1, 8, 8)))


def test_boundary_loss_under_deep_supervision_with_precomputed_maps() -> None:
    from medseg.losses import target_distance_maps

    labels = torch.randint(0, 2, (1, 1, 8, 8))
    maps = target_distance_maps(labels, 2, 2)
    output = SegOutput(torch.randn(1, 2, 8, 8), aux=[torch.randn(1, 2, 4, 4)])
    loss = DeepSupervisionLoss(create_loss("boundary"))
    assert torch.isfinite(loss(output, labels, distance_map=maps))


def test_weight_errors() -> None:
    output = SegOutput(torch.randn(1, 1, 4, 4), aux=[torch.randn(1, 1, 2, 2)])
    with pytest.raises(MedsegError, match="2 outputs"):
        DeepSupervisionLoss(create_loss("bce"), weights=[1.0, 0.5, 0.25])(output, torch.zeros(1, 1, 4, 4))
    with pytest.raises(MedsegError, match="weights"):
        DeepSupervisionLoss(create_loss("bce"), weights=[-1.0])
    with pytest.raises(MedsegError, match="resize"):
        DeepSupervisionLoss(create_loss("bce"), resize="crop")
