"""Anchor boxes of a region proposal network on a feature pyramid (Ren et al. 2015; Lin et al. 2017).

Numbers as torchvision's ``AnchorGenerator``: per level one size per entry of ``sizes`` times every
aspect ratio ``r = h / w``, centred on 0 with ``w = size / sqrt(r)``, ``h = size * sqrt(r)``, rounded to
integers, then shifted to every feature-map position ``(j * stride, i * stride)`` (the cell's top-left
corner, not its centre) with ``stride = image size // feature size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from medseg.errors import MedsegError

PYRAMID_SIZES = ((32,), (64,), (128,), (256,), (512,))
"""Anchor sizes of P2-P6 in Mask R-CNN with FPN."""
ASPECT_RATIOS = (0.5, 1.0, 2.0)


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """The ``[len(ratios) * len(sizes), 4]`` zero-centred anchors of one level (ratio-major order)."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator:
    """Anchors for a list of feature maps of one padded batch.

    Args:
        sizes: per level, the anchor sizes (default: 32..512 on five levels).
        aspect_ratios: the ratios h / w, the same on every level.
    """

    def __init__(self, sizes: Sequence[Sequence[float]] = PYRAMID_SIZES,
                 aspect_ratios: Sequence[float] = ASPECT_RATIOS) -> None:
        if not sizes or not aspect_ratios:
            raise MedsegError("AnchorGenerator needs at least one size and one aspect ratio")
        self.cells = [cell_anchors(level, aspect_ratios) for level in sizes]

    @property
    def num_anchors_per_location(self) -> int:
        return self.cells[0].shape[0]

    def grid_anchors(self, image_size: Sequence[int], feature_sizes: Sequence[Sequence[int]],
                     device: torch.device | None = None) -> list[Tensor]:
        """Per level ``[H_l * W_l * A, 4]`` anchors (position-major, then the level's A cell anchors)."""
        if len(feature_sizes) != len(self.cells):
            raise MedsegError(f"AnchorGenerator has {len(self.cells)} levels, got {len(feature_sizes)} "
                              "feature maps")
        anchors = []
        for cell, (fh, fw) in zip(self.cells, feature_sizes, strict=True):
            stride_y, stride_x = int(image_size[0]) // int(fh), int(image_size[1]) // int(fw)
            shift_x = torch.arange(int(fw), dtype=torch.float32, device=device) * stride_x
            shift_y = torch.arange(int(fh), dtype=torch.float32, device=device) * stride_y
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([xx.reshape(-1), yy.reshape(-1)] * 2, dim=1)
            anchors.append((shifts[:, None, :] + cell.to(device)[None, :, :]).reshape(-1, 4))
        return anchors

    def __call__(self, image_size: Sequence[int], features: Sequence[Tensor]) -> Tensor:
        """All anchors ``[sum_l H_l W_l A, 4]`` for a padded batch of spatial ``image_size``."""
        sizes = [f.shape[-2:] for f in features]
        return torch.cat(self.grid_anchors(image_size, sizes, features[0].device), dim=0)
