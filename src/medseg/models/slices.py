"""Volumes as batches of slices: the 2D-per-slice networks (H-DenseUNet, the ConvLSTM U-Net)."""

from __future__ import annotations

from torch import Tensor


def volume_to_slices(x: Tensor) -> Tensor:
    """``[B, C, D, H, W]`` -> ``[B * D, C, H, W]`` (the slices along the first spatial axis)."""
    b, c, d, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)


def slices_to_volume(x: Tensor, batch: int) -> Tensor:
    """``[B * D, C, H, W]`` -> ``[B, C, D, H, W]`` (inverse of :func:`volume_to_slices`)."""
    n, c, h, w = x.shape
    return x.reshape(batch, n // batch, c, h, w).permute(0, 2, 1, 3, 4)
