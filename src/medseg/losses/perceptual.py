"""LossNet, the training-free perceptual loss of M2SNet (Zhao et al. 2023), and the
paper's total loss ``structure + 0.1 · LossNet`` (specs/m2snet.md, "Loss").

A frozen VGG-16 (convolutional part, Simonyan & Zisserman 2015) sees the predicted probability map and the
mask, each repeated to three channels, ImageNet-normalised and resized to 224x224; the loss is the sum over
relu1_2, relu2_2, relu3_3 and relu4_3 of the mean squared error between the two feature maps. As in the
official ``LossNet`` (MSNet-M2SNet, ``model/miccai_msnet.py``): MSE averaged over all elements per level,
summed over the four levels; normalisation before a bilinear resize (``align_corners=False``).

The VGG-16 weights come from a local file with torchvision's / timm's ``vgg16`` key names
(``features.N.weight``); nothing is downloaded. Without a file the loss refuses to be built unless
``random_features=True`` asks for untrained features explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medseg.encoders import Encoder, create_encoder, load_encoder_weights
from medseg.errors import MedsegError
from medseg.losses.base import SegLoss, Targets, activate, drop_background
from medseg.losses.registry import register_loss
from medseg.losses.structure import StructureLoss

logger = logging.getLogger(__name__)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LossNet", "M2SNetLoss", "frozen_vgg16"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOSSNET_SIZE = 224
"""The VGG input size of the official LossNet."""


def frozen_vgg16(weights: str | Path | None, random_features: bool = False) -> Encoder:
    """VGG-16 up to relu4_3 (4 levels: relu1_2, relu2_2, relu3_3, relu4_3), parameters frozen, eval mode.

    ``weights``: a torchvision/timm ``vgg16`` weight file (conv5 and classifier keys are ignored). None
    raises a :class:`MedsegError` unless ``random_features``."""
    if weights is None and not random_features:
        raise MedsegError("loss lossnet: needs VGG-16 weights; give loss option weights=PATH (a torchvision "
                          "or timm vgg16 file, e.g. loss.options.weights=vgg16.pth) or random_features=true")
    if weights is not None and not Path(weights).is_file():
        raise MedsegError(f"loss lossnet: VGG-16 weight file {weights} not found; give an existing file "
                          "(loss.options.weights=PATH) or random_features=true")
    vgg = create_encoder("vgg16", in_channels=3, spatial_dims=2, depth=4)
    if weights is not None:
        report = load_encoder_weights(vgg, weights, strict=False)
        if report.missing or report.mismatched:
            problems = report.missing[:3] + report.mismatched[:3]
            raise MedsegError(f"loss lossnet: {weights} is not a VGG-16 weight file ({len(report.missing)} "
                              f"keys missing, {len(report.mismatched)} shape mismatches: "
                              f"{', '.join(problems)})")
        logger.info("LossNet: loaded %d VGG-16 tensors from %s (ignored %d keys beyond relu4_3 or of the "
                    "classifier)", report.loaded, weights, len(report.unexpected) + len(report.classifier))
    for parameter in vgg.parameters():
        parameter.requires_grad_(False)
    return vgg.eval()


class LossNet(SegLoss):
    """The perceptual loss of M2SNet: ``Σ_l MSE(φ_l(p), φ_l(m))`` over VGG-16 levels relu1_2 ... relu4_3.

    ``p`` is the sigmoid probability of each channel (binary / multilabel) or, in multiclass mode, the
    softmax probability of each class against its one-hot mask (one-vs-rest, as the structure loss;
    channel 0 dropped with ``include_background=False``). Channels are passed through the VGG one at a
    time (repeated to RGB), so the loss is the mean over channels of the per-channel loss; with one channel
    it is exactly the official loss. 2D only (the VGG is 2D). Ignored voxels (``ignore_index``) are zero
    in both inputs.

    Args:
        weights: VGG-16 weight file (torchvision / timm ``vgg16`` keys).
        random_features: allow a randomly initialised VGG when no file is given (tests, ablations).
        size: the VGG input size (224 as the official code; None: no resize).

    The VGG is frozen and stays in eval mode when the loss is put in train mode; it moves with ``.to()``.
    """

    def __init__(self, mode: str = "auto", *, weights: str | None = None, random_features: bool = False,
                 size: int | None = LOSSNET_SIZE, include_background: bool = True,
                 ignore_index: int | None = None) -> None:
        super().__init__(mode, include_background=include_background, ignore_index=ignore_index)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 16):
            raise MedsegError(f"loss lossnet: size must be an integer >= 16 or null, got {size!r}")
        self.size = size
        self.vgg = frozen_vgg16(weights, random_features)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> LossNet:
        super().train(mode)
        self.vgg.eval()
        return self

    def _vgg_input(self, maps: Tensor) -> Tensor:
        """``[B, C, H, W]`` maps -> ``[B·C, 3, size, size]`` normalised VGG inputs."""
        x = maps.reshape(-1, 1, *maps.shape[2:]).expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        if logits.dim() != 4:
            raise MedsegError(f"loss lossnet: 2D outputs only (a 2D VGG-16), got logits of shape "
                              f"{tuple(logits.shape)}")
        probs = targets.masked(activate(logits, targets.mode))
        probs = drop_background(probs, targets.mode, self.include_background)
        masks = drop_background(targets.onehot, targets.mode, self.include_background)
        with torch.no_grad():
            wanted = self.vgg(self._vgg_input(masks.to(probs.dtype)))
        features = self.vgg(self._vgg_input(probs))
        total = logits.new_zeros(())
        for got, want in zip(features, wanted, strict=True):
            total = total + F.mse_loss(got.float(), want.float())
        return total

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, size={self.size}"


register_loss("lossnet")(LossNet)


@register_loss("m2snet")
class M2SNetLoss(SegLoss):
    """M2SNet's total loss (Zhao et al. 2023): ``structure + lossnet_weight · LossNet`` (0.1).

    Args:
        weights, random_features, size: the :class:`LossNet` settings (a VGG-16 weight file is needed).
        lossnet_weight: the LossNet term's weight.
        include_background, ignore_index: passed to both terms.
    """

    def __init__(self, mode: str = "auto", *, weights: str | None = None, random_features: bool = False,
                 lossnet_weight: float = 0.1, size: int | None = LOSSNET_SIZE,
                 include_background: bool = True, ignore_index: int | None = None) -> None:
        super().__init__(mode, include_background=include_background, ignore_index=ignore_index)
        if isinstance(lossnet_weight, bool) or not isinstance(lossnet_weight, (int, float)) \
                or lossnet_weight < 0:
            raise MedsegError(f"loss m2snet: lossnet_weight must be a number >= 0, got {lossnet_weight!r}")
        self.lossnet_weight = float(lossnet_weight)
        self.structure = StructureLoss(mode, include_background=include_background, ignore_index=ignore_index)
        self.lossnet = LossNet(mode, weights=weights, random_features=random_features, size=size,
                               include_background=include_background, ignore_index=ignore_index)

    def compute(self, logits: Tensor, targets: Targets, extras: Mapping[str, Any]) -> Tensor:
        loss = self.structure.compute(logits, targets, extras)
        if self.lossnet_weight:
            loss = loss + self.lossnet_weight * self.lossnet.compute(logits, targets, extras)
        return loss

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, lossnet_weight={self.lossnet_weight:g}"
