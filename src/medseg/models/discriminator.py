"""Discriminators on (image, probability map) pairs for adversarial segmentation (Luc et al., "Semantic
Segmentation using Adversarial Networks", NIPS Workshop 2016).

Not a registered segmentation model (its output is a real/fake score, not logits at the input size);
:func:`create_discriminator` builds one by name for :mod:`medseg.engine.adversarial`.

``luc`` (default): the paper's Stanford Background variant. The image goes through two 5x5 conv-ReLU layers
(``features / 4`` then ``features`` channels), the probability map through one 5x5 conv-ReLU
(``features`` channels); the two are concatenated and fused by 3x3 conv-ReLU (``2 features``), 2x2 max
pool, 3x3 conv-ReLU (``4 features``), 2x2 max pool, 3x3 conv-ReLU (``8 features``) and a 3x3 conv to one
logit per location. ``features`` 64 gives the paper's widths (16/64, 64, 128, 256, 512); the paper's last
layer has two softmax outputs, here one logit scored with binary cross-entropy (the same model).

``concat``: the simpler variant, the image and the map concatenated along the channels and put through
the same fused trunk (first layer 5x5 to ``features``).

Both are fully convolutional and work in 2D and 3D; the output is ``[B, 1, *spatial / 4]`` logits (the
adversarial BCE is averaged over the locations).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.errors import MedsegError

__all__ = ["DISCRIMINATORS", "ConcatDiscriminator", "LucDiscriminator", "create_discriminator"]


def _conv(dims: int, cin: int, cout: int, kernel: int, norm: str | None, act: str) -> nn.Module:
    return ConvNormAct(dims, cin, cout, kernel, norm=norm, act=act)


def _trunk(dims: int, cin: int, features: int, norm: str | None, act: str) -> nn.Sequential:
    """The fused part: conv 2f, pool, conv 4f, pool, conv 8f, conv to one logit."""
    return nn.Sequential(
        _conv(dims, cin, 2 * features, 3, norm, act), layers.max_pool(dims, 2),
        _conv(dims, 2 * features, 4 * features, 3, norm, act), layers.max_pool(dims, 2),
        _conv(dims, 4 * features, 8 * features, 3, norm, act),
        layers.conv(dims, 8 * features, 1, 3, bias=True))


class LucDiscriminator(nn.Module):
    """Two-branch discriminator: image branch and map branch, concatenated, then the fused trunk."""

    def __init__(self, spatial_dims: int, image_channels: int, map_channels: int, features: int = 64,
                 norm: str | None = None, act: str = "relu") -> None:
        super().__init__()
        dims = layers.check_spatial_dims(spatial_dims)
        image_width = max(features // 4, 1)
        self.image_branch = nn.Sequential(_conv(dims, image_channels, image_width, 5, norm, act),
                                          _conv(dims, image_width, features, 5, norm, act))
        self.map_branch = _conv(dims, map_channels, features, 5, norm, act)
        self.trunk = _trunk(dims, 2 * features, features, norm, act)

    def forward(self, image: Tensor, probabilities: Tensor) -> Tensor:
        return self.trunk(torch.cat([self.image_branch(image), self.map_branch(probabilities)], dim=1))


class ConcatDiscriminator(nn.Module):
    """Single-branch discriminator: image and map concatenated along the channels, then the trunk."""

    def __init__(self, spatial_dims: int, image_channels: int, map_channels: int, features: int = 64,
                 norm: str | None = None, act: str = "relu") -> None:
        super().__init__()
        dims = layers.check_spatial_dims(spatial_dims)
        self.stem = _conv(dims, image_channels + map_channels, features, 5, norm, act)
        self.trunk = _trunk(dims, features, features, norm, act)

    def forward(self, image: Tensor, probabilities: Tensor) -> Tensor:
        return self.trunk(self.stem(torch.cat([image, probabilities], dim=1)))


DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {"luc": LucDiscriminator, "concat": ConcatDiscriminator}


def create_discriminator(name: str, *, spatial_dims: int, image_channels: int, map_channels: int,
                         **options: Any) -> nn.Module:
    """A discriminator by name (``luc`` or ``concat``) with its options (``features``, ``norm``, ``act``)."""
    if name not in DISCRIMINATORS:
        raise MedsegError(f"unknown discriminator {name!r}; choose one of {', '.join(DISCRIMINATORS)}")
    try:
        return DISCRIMINATORS[name](spatial_dims, image_channels, map_channels, **options)
    except TypeError as exc:
        raise MedsegError(f"discriminator {name!r}: bad options {options} ({exc})") from None
