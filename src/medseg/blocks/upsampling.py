"""Learned and index-guided up-sampling: bilinear-initialised transposed convs (FCN) and max-unpooling
(SegNet), 2D and 3D."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.errors import MedsegError


def bilinear_kernel(kernel_size: int, spatial_dims: int) -> Tensor:
    """The separable bilinear (trilinear in 3D) interpolation filter of ``kernel_size`` taps per axis.

    As FCN's ``surgery.upsample_filt`` (shelhamer/fcn.berkeleyvision.org): factor ``f = ceil(k / 2)``,
    centre ``f - 1`` for odd and ``f - 0.5`` for even ``k``, tap ``1 - |i - centre| / f``; the N-D filter
    is the outer product of the 1-D one.
    """
    layers.check_spatial_dims(spatial_dims)
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float64) - centre).abs() / factor
    kernel = taps
    for _ in range(spatial_dims - 1):
        kernel = kernel.unsqueeze(-1) * taps
    return kernel.float()


class BilinearUpsampling(nn.Module):
    """A transposed convolution up-sampling by ``factor``, initialised to bilinear interpolation.

    FCN's learnable up-sampling (Long et al. 2015, Sec. 3.3: "we initialize the 2x upsampling to bilinear
    interpolation, but allow the parameters to be learned"): ``channels`` to ``channels``, kernel
    ``2f - f mod 2``, stride ``f``, padding ``f // 2``, no bias; the weight starts as the bilinear filter on
    the channel diagonal (each class up-sampled on its own), zeros off it. The padding makes the output
    exactly ``f`` times the input and puts every coarse pixel's centre on the fine grid where bilinear
    interpolation with ``align_corners=False`` does (the official net reaches the same alignment with
    its crop offsets). ``learnable=False`` freezes the weight (the official final up-sampling).
    """

    def __init__(self, spatial_dims: int, channels: int, factor: int, learnable: bool = True) -> None:
        super().__init__()
        if factor < 1 or channels < 1:
            raise MedsegError(f"bilinear up-sampling needs factor and channels >= 1, got {factor} and "
                              f"{channels}")
        kernel_size = 2 * factor - factor % 2
        self.factor = factor
        self.up = layers.conv_transpose(spatial_dims, channels, channels, kernel_size, factor, factor // 2,
                                        bias=False)
        with torch.no_grad():
            self.up.weight.zero_()
            diagonal = torch.arange(channels)
            self.up.weight[diagonal, diagonal] = bilinear_kernel(kernel_size, spatial_dims).to(
                self.up.weight.device)
        self.up.weight.requires_grad_(learnable)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(x)


class MaxUnpool(nn.Module):
    """Max-unpooling with the indices of an earlier max-pool (SegNet, Badrinarayanan et al. 2017, Fig. 3).

    Each value goes back to the position its max came from, every other position is zero.
    ``forward(x, indices, output_size)`` takes the pre-pooling spatial size, so maps whose odd last row or
    column the pool dropped come back at their own size (the dropped positions are zeros). Pair it with
    ``layers.max_pool(spatial_dims, kernel_size, stride, return_indices=True)`` of the same geometry.
    """

    def __init__(self, spatial_dims: int, kernel_size: int = 2, stride: int | None = None) -> None:
        super().__init__()
        self.unpool = layers.max_unpool(spatial_dims, kernel_size, stride)

    def forward(self, x: Tensor, indices: Tensor, output_size: list[int]) -> Tensor:
        return self.unpool(x, indices, output_size=[int(s) for s in output_size])
