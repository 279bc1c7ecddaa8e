"""Tests of medseg.blocks.upsampling: max-unpooling round trip and bilinear-initialised transposed convs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg import layers
from medseg.blocks.upsampling import BilinearUpsampling, MaxUnpool, bilinear_kernel
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters

SIZES = {2: [(8, 6), (7, 9), (5, 5)], 3: [(4, 6, 8), (5, 7, 3), (3, 3, 3)]}
CASES = [pytest.param(dims, size, id=f"{dims}d-{'x'.join(map(str, size))}")
         for dims, sizes in SIZES.items() for size in sizes]


def window_maxima_in_place(x: torch.Tensor) -> torch.Tensor:
    """Each 2x(2x)2 window's maximum at its own position, zeros elsewhere (and on the rows, columns and
    slices a flooring pool drops), computed without indices: the pooled maxima repeated back over their
    windows and compared with the input."""
    spatial = list(x.shape[2:])
    maxima = layers.max_pool(x.dim() - 2, 2)(x)
    for d in range(len(spatial)):
        maxima = maxima.repeat_interleave(2, dim=d + 2)
    pad: list[int] = []
    for n, m in zip(reversed(spatial), reversed(list(maxima.shape[2:])), strict=True):
        pad += [0, n - m]
    maxima = F.pad(maxima, pad, value=float("nan"))  # dropped positions never match
    return torch.where(x == maxima, x, torch.zeros_like(x))


@pytest.mark.parametrize(("spatial_dims", "size"), CASES)
def test_pool_then_unpool_puts_each_max_back_and_zeros_elsewhere(spatial_dims: int,
                                                                 size: tuple[int, ...]) -> None:
    numel = 2 * 3 * int(torch.tensor(size).prod())
    # distinct values, so that every window has one maximum
    x = torch.randperm(numel, generator=torch.Generator().manual_seed(0)).float().reshape(2, 3, *size) + 1
    pooled, indices = layers.max_pool(spatial_dims, 2, return_indices=True)(x)
    restored = MaxUnpool(spatial_dims, 2)(pooled, indices, list(size))
    assert restored.shape == x.shape
    expected = window_maxima_in_place(x)
    torch.testing.assert_close(restored, expected, rtol=0, atol=0)
    kept = restored != 0
    assert int(kept.sum()) == pooled.numel()  # one value per window, every other position zero
    assert torch.equal(restored[kept], x[kept])


def test_bilinear_kernel_is_fcn_upsample_filt() -> None:
    # surgery.upsample_filt(4): factor 2, centre 1.5 -> 1 - |i - 1.5| / 2; (3): factor 2, centre 1
    torch.testing.assert_close(bilinear_kernel(4, 2)[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.25)
    torch.testing.assert_close(bilinear_kernel(3, 2)[1], torch.tensor([0.5, 1.0, 0.5]))
    k3 = bilinear_kernel(4, 3)
    assert k3.shape == (4, 4, 4)
    torch.testing.assert_close(k3[1, 2], bilinear_kernel(4, 2)[1] * 0.75)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("factor", [2, 3, 8])
def test_bilinear_upsampling_starts_as_bilinear_interpolation(spatial_dims: int, factor: int) -> None:
    up = BilinearUpsampling(spatial_dims, 3, factor)
    x = torch.randn(2, 3, *[5] * spatial_dims)
    y = up(x)
    assert y.shape[2:] == tuple(5 * factor for _ in range(spatial_dims))
    reference = F.interpolate(x, scale_factor=factor, mode=layers.interpolation_mode(spatial_dims),
                              align_corners=False)
    inner = (slice(None), slice(None), *[slice(factor, -factor)] * spatial_dims)  # away from the borders
    torch.testing.assert_close(y[inner], reference[inner], atol=1e-5, rtol=1e-5)


def test_bilinear_upsampling_is_learnable_or_frozen_and_has_no_bias() -> None:
    learned = BilinearUpsampling(2, 21, 2)
    assert learned.up.bias is None and count_parameters(learned) == 21 * 21 * 4 * 4
    assert count_parameters(BilinearUpsampling(2, 21, 2, learnable=False)) == 0
    off_diagonal = learned.up.weight.detach().clone()
    off_diagonal[range(21), range(21)] = 0
    assert off_diagonal.abs().sum() == 0  # each class is up-sampled on its own
    with pytest.raises(MedsegError, match="factor"):
        BilinearUpsampling(2, 3, 0)
