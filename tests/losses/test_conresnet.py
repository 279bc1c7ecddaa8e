"""Tests of the ConResNet loss: hand-computed values, residual targets, modes and fitting a small batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medseg import create_model, model_info
from medseg.errors import MedsegError
from medseg.losses import create_loss
from medseg.losses.base import prepare_targets
from medseg.losses.conresnet import ConResNetLoss, residual_targets
from medseg.outputs import SegOutput

# one sample, one channel, 4 slices of 1x2 voxels: slices [0 0], [1 0], [1 1], [0 1]
LABEL = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]).view(1, 1, 4, 1, 2)
# residual along the slices: [0 0], [1 0], [0 1], [1 0] -> 3 positives of N = 8 voxels
RESIDUAL = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]).view(1, 1, 4, 1, 2)


def zero_output(*residuals: bool) -> SegOutput:
    zeros = torch.zeros(1, 1, 4, 1, 2)
    return SegOutput(zeros, extras={"residual_logits": [zeros.clone() for _ in residuals]})


@pytest.mark.parametrize("weight", [0.5, 0.0, 1.0])
def test_hand_computed_value_with_zero_logits(weight: float) -> None:
    loss = ConResNetLoss("binary", residual_weight=weight)(zero_output(True, True, True), LABEL)
    # sigmoid(0) = 0.5: Dice 2 * 2 / (4 + 4 + 1) with the official smoothing (0 above, 1 below)
    dice = 1 - 4 / 9
    bce = math.log(2)
    pos_weight = math.log(8 / (3 + 1))
    bce_w = math.log(2) * (3 * pos_weight + 5) / 8
    expected = dice + bce + bce_w + weight * 2 * bce_w
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_pos_weight_formula_against_torch() -> None:
    torch.manual_seed(0)
    res = [torch.randn(2, 3, 6, 4, 4) for _ in range(3)]
    target = (torch.rand(2, 3, 6, 4, 4) > 0.6).float()
    seg = torch.randn(2, 3, 6, 4, 4)
    loss = ConResNetLoss("multilabel")(SegOutput(seg, extras={"residual_logits": res}), target)
    res_target = torch.zeros_like(target)
    res_target[:, :, 1:] = (target[:, :, 1:] - target[:, :, :-1]).abs()
    pos_weight = torch.log(6 * 4 * 4 / (res_target.sum(dim=(0, 2, 3, 4)) + 1)).view(1, 3, 1, 1, 1)
    bce_w = [F.binary_cross_entropy_with_logits(r, res_target, pos_weight=pos_weight) for r in res]
    probs = torch.sigmoid(seg)
    dice = 1 - (2 * (probs * target).sum(dim=(2, 3, 4)) / (probs.sum(dim=(2, 3, 4))
                                                           + target.sum(dim=(2, 3, 4)) + 1))
    expected = (dice.mean() + F.binary_cross_entropy_with_logits(seg, target) + bce_w[0]
                + 0.5 * (bce_w[1] + bce_w[2]))
    assert torch.allclose(loss, expected, atol=1e-5)


def test_plain_tensor_gives_the_segmentation_part() -> None:
    loss = ConResNetLoss("binary")
    full = loss(zero_output(True, True, True), LABEL)
    seg_only = loss(torch.zeros(1, 1, 4, 1, 2), LABEL)
    assert seg_only.item() == pytest.approx(1 - 4 / 9 + math.log(2), rel=1e-6)
    assert full > seg_only
    assert loss(SegOutput(torch.zeros(1, 1, 4, 1, 2)), LABEL).item() == pytest.approx(seg_only.item())


@pytest.mark.parametrize("axis", [0, 2])
def test_residual_targets_follow_the_slice_axis(axis: int) -> None:
    label = torch.zeros(1, 1, 4, 3, 5)
    label[..., 2:] = 1.0  # constant along depth, a step along width
    targets = residual_targets(prepare_targets(torch.zeros(1, 1, 4, 3, 5), label, "binary"), axis)
    if axis == 0:
        assert targets.onehot.sum() == 0
    else:
        expected = torch.zeros_like(label)
        expected[..., 2] = 1.0
        assert torch.equal(targets.onehot, expected)


def test_multiclass_residual_targets_include_the_background() -> None:
    labels = torch.tensor([0, 1, 2, 2]).view(1, 4, 1, 1)
    targets = residual_targets(prepare_targets(torch.zeros(1, 3, 4, 1, 1), labels, "multiclass"), 0)
    expected = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]], dtype=torch.float32)
    assert torch.equal(targets.onehot.view(3, 4), expected)
    assert targets.mode == "multilabel"


def test_ignored_voxels_and_their_successors_do_not_count() -> None:
    labels = torch.tensor([0, 255, 1, 1]).view(1, 4, 1, 1)
    targets = residual_targets(prepare_targets(torch.zeros(1, 2, 4, 1, 1), labels, "multiclass", 255), 0)
    assert targets.valid.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    loss = ConResNetLoss("multiclass", ignore_index=255)
    out = SegOutput(torch.randn(1, 2, 4, 1, 1), extras={"residual_logits": [torch.randn(1, 2, 4, 1, 1)]})
    assert torch.isfinite(loss(out, labels))


def test_residual_shape_mismatch_is_an_error() -> None:
    out = SegOutput(torch.zeros(1, 1, 4, 1, 2), extras={"residual_logits": [torch.zeros(1, 1, 2, 1, 1)]})
    with pytest.raises(MedsegError, match="residual logits"):
        ConResNetLoss("binary")(out, LABEL)
    with pytest.raises(MedsegError, match="residual_weight"):
        ConResNetLoss(residual_weight=-1)


def test_registered_and_default_loss_of_the_model() -> None:
    assert model_info("conresnet")["default_loss"] == "conresnet"
    loss = create_loss("conresnet", mode="multiclass", residual_weight=0.1, slice_axis=1)
    assert isinstance(loss, ConResNetLoss) and loss.residual_weight == 0.1


@pytest.mark.parametrize("mode,num_classes", [("multilabel", 3), ("multiclass", 3)])
def test_loss_decreases_when_fitting_a_small_batch(mode: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_model("conresnet", in_channels=1, num_classes=num_classes, spatial_dims=3,
                         widths=(4, 4, 8, 8), dropout=0.0).train()
    x = torch.randn(1, 1, 16, 16, 16)
    labels = (x[:, 0] > 0.5).long() + (x[:, 0] > 1.2).long()
    regions = torch.stack([labels >= 1, labels == 2, labels == 1], 1).float()
    target = labels if mode == "multiclass" else regions
    loss_fn = ConResNetLoss(mode)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    values = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert values[-1] < 0.8 * values[0]
