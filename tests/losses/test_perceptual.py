"""LossNet (M2SNet's frozen VGG-16 perceptual loss) and the m2snet total loss."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medseg.encoders import create_encoder
from medseg.errors import MedsegError
from medseg.losses import build_loss, create_loss, list_losses
from medseg.losses.perceptual import LossNet, M2SNetLoss

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def official_lossnet(features: torch.nn.Sequential, probs: torch.Tensor, mask: torch.Tensor,
                     size: int | None) -> torch.Tensor:
    """The official LossNet written out: VGG slices [:4], [4:9], [9:16], [16:23] (relu1_2 .. relu4_3),
    repeat to RGB, normalise, bilinear resize, sum over the slices of the mean squared error."""
    x, y = probs.repeat(1, 3, 1, 1), mask.repeat(1, 3, 1, 1)
    x, y = (x - MEAN) / STD, (y - MEAN) / STD
    if size is not None:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False)
    total = torch.zeros(())
    for start, stop in ((0, 4), (4, 9), (9, 16), (16, 23)):
        block = features[start:stop]
        x, y = block(x), block(y)
        total = total + F.mse_loss(x, y)
    return total


def binary_case(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(2, 1, size, size, requires_grad=True)
    mask = torch.zeros(2, 1, size, size)
    mask[:, :, 8:20, 10:24] = 1
    return logits, mask


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-layout VGG-16 file: features.0 .. features.28 and a (small stand-in) classifier."""
    torch.manual_seed(1)
    state = create_encoder("vgg16").state_dict()
    state["classifier.0.weight"] = torch.zeros(4, 4)
    state["classifier.0.bias"] = torch.zeros(4)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(state, path)
    return path


def test_refuses_without_weights_unless_random_features_are_asked_for(tmp_path: Path) -> None:
    assert "lossnet" in list_losses() and "m2snet" in list_losses()
    with pytest.raises(MedsegError, match="weights=PATH.*random_features") as info:
        create_loss("lossnet")
    assert "\n" not in str(info.value)
    with pytest.raises(MedsegError, match="random_features"):
        build_loss({"losses": [{"name": "m2snet"}], "mode": "binary"})
    with pytest.raises(MedsegError, match="not found"):
        create_loss("lossnet", weights=str(tmp_path / "missing.pth"))
    assert isinstance(create_loss("lossnet", random_features=True), LossNet)


def test_loads_torchvision_keys_and_rejects_other_files(vgg_file: Path, tmp_path: Path) -> None:
    loss = create_loss("lossnet", weights=str(vgg_file))
    saved = torch.load(vgg_file, weights_only=True)
    own = loss.vgg.state_dict()
    assert sorted(own) == sorted(k for k in saved if k.startswith("features.") and int(k.split(".")[1]) < 23)
    assert all(torch.equal(own[k], saved[k]) for k in own)
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, other)
    with pytest.raises(MedsegError, match="not a VGG-16 weight file"):
        create_loss("lossnet", weights=str(other))


def test_value_equals_the_official_formula() -> None:
    loss = LossNet("binary", random_features=True, size=48)
    logits, mask = binary_case()
    expected = official_lossnet(loss.vgg.features, torch.sigmoid(logits), mask, 48)
    assert loss(logits, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    assert inspect.signature(LossNet).parameters["size"].default == 224  # the official VGG input size
    # a perfect prediction has no perceptual loss
    assert loss(torch.where(mask > 0, 30.0, -30.0), mask).item() == pytest.approx(0.0, abs=1e-6)


def test_vgg_frozen_in_eval_mode_and_moves_with_the_loss() -> None:
    loss = LossNet("binary", random_features=True, size=None)
    loss.train()
    assert not loss.vgg.training and loss.training
    assert not any(p.requires_grad for p in loss.parameters())
    logits, mask = binary_case()
    loss(logits, mask).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    loss = loss.to(torch.float64)
    assert next(loss.vgg.parameters()).dtype == torch.float64 and loss.mean.dtype == torch.float64
    assert "vgg.features.0.weight" in loss.state_dict() and "mean" not in loss.state_dict()


def test_multiclass_is_one_vs_rest_per_class_averaged() -> None:
    loss = LossNet("multiclass", random_features=True, size=None, include_background=False)
    logits = torch.randn(1, 3, 32, 32)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[:, 4:14, 4:14], labels[:, 18:30, 10:20] = 1, 2
    probs = torch.softmax(logits, 1)
    per_class = [official_lossnet(loss.vgg.features, probs[:, c:c + 1], (labels == c).float()[:, None], None)
                 for c in (1, 2)]
    expected = (per_class[0] + per_class[1]) / 2
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_three_dimensional_outputs_are_refused() -> None:
    loss = LossNet("binary", random_features=True)
    with pytest.raises(MedsegError, match="2D outputs only"):
        loss(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8))


def test_m2snet_loss_is_structure_plus_a_tenth_of_lossnet(vgg_file: Path) -> None:
    total = create_loss("m2snet", mode="binary", weights=str(vgg_file), size=32)
    assert isinstance(total, M2SNetLoss) and total.lossnet_weight == 0.1
    logits, mask = binary_case()
    structure = create_loss("structure", mode="binary")(logits, mask)
    lossnet = LossNet("binary", weights=str(vgg_file), size=32)(logits, mask)
    assert total(logits, mask).item() == pytest.approx((structure + 0.1 * lossnet).item(), rel=1e-5)
    total.lossnet_weight = 0.0
    assert total(logits, mask).item() == pytest.approx(structure.item(), rel=1e-6)
    with pytest.raises(MedsegError, match="lossnet_weight"):
        create_loss("m2snet", random_features=True, lossnet_weight=-1)
