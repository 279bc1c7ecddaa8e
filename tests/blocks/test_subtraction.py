"""Tests of the subtraction units and pyramid of MSNet / M2SNet (Zhao et al. 2021, 2023)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from helpers import assert_grads_finite
from medseg.blocks.subtraction import (
    AllOnesFilter,
    MultiScaleFilters,
    MultiScaleSubtractionUnit,
    SubtractionPyramid,
    SubtractionUnit,
)
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters

BN_SCALE = 1 / math.sqrt(1 + 1e-5)  # a fresh batch norm in eval mode divides by sqrt(1 + eps)
CBR_PARAMS = 8 * 8 * 9 + 8 + 2 * 8  # 3x3 conv with bias + BN, 8 -> 8 channels


def test_all_ones_3x3_over_constant_input_sums_the_window_and_channels() -> None:
    channels, value = 3, 0.5
    f = AllOnesFilter(2, channels, 3).eval()
    out = f(torch.full((1, channels, 5, 6), value)) / BN_SCALE
    unit = channels * value
    assert out.shape == (1, channels, 5, 6)
    torch.testing.assert_close(out[0, :, 2, 2], torch.full((channels,), 9 * unit))  # interior
    torch.testing.assert_close(out[0, :, 0, 0], torch.full((channels,), 4 * unit))  # corner
    torch.testing.assert_close(out[0, :, 0, 3], torch.full((channels,), 6 * unit))  # edge
    torch.testing.assert_close(out[0, :, 4, 5], torch.full((channels,), 4 * unit))


def test_all_ones_5x5_and_cubic_3d_windows() -> None:
    f5 = AllOnesFilter(2, 2, 5).eval()
    out = f5(torch.ones(1, 2, 7, 7)) / BN_SCALE
    assert out[0, 0, 3, 3].item() == pytest.approx(25 * 2)
    assert out[0, 1, 0, 0].item() == pytest.approx(9 * 2)
    assert out[0, 0, 0, 1].item() == pytest.approx(12 * 2)
    f3d = AllOnesFilter(3, 2, 3).eval()
    out = f3d(torch.ones(1, 2, 4, 4, 4)) / BN_SCALE
    assert out[0, 0, 1, 1, 1].item() == pytest.approx(27 * 2)
    assert out[0, 0, 0, 0, 0].item() == pytest.approx(8 * 2)
    assert out[0, 1, 0, 1, 1].item() == pytest.approx(18 * 2)


@pytest.mark.parametrize(("spatial_dims", "kernel_size", "size"),
                         [(2, 3, 6), (2, 5, 7), (3, 3, 4), (3, 5, 3)])
def test_window_sum_equals_the_convolution_with_the_all_ones_buffer(spatial_dims: int, kernel_size: int,
                                                                     size: int) -> None:
    f = AllOnesFilter(spatial_dims, 4, kernel_size)
    x = torch.randn(2, 4, *[size] * spatial_dims)
    conv = torch.nn.functional.conv2d if spatial_dims == 2 else torch.nn.functional.conv3d
    expected = conv(x, f.weight, None, 1, kernel_size // 2)
    torch.testing.assert_close(f.filter(x), expected, atol=1e-5, rtol=1e-5)


def test_all_ones_filter_is_a_fixed_buffer_not_a_parameter() -> None:
    f = AllOnesFilter(2, 4, 5)
    assert f.weight.shape == (4, 4, 5, 5) and bool((f.weight == 1).all())
    assert "weight" not in dict(f.named_parameters())
    assert "weight" not in f.state_dict()
    assert count_parameters(f) == 2 * 4  # the batch norm only
    with pytest.raises(MedsegError, match="filter_sizes"):
        AllOnesFilter(2, 4, 4)
    with pytest.raises(MedsegError, match="filter_sizes"):
        AllOnesFilter(2, 4, 1)
    with pytest.raises(MedsegError, match="repeat"):
        MultiScaleFilters(2, 4, (3, 3))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_subtraction_unit_is_cbr_of_absolute_difference_after_upsampling(spatial_dims: int) -> None:
    unit = SubtractionUnit(spatial_dims, 4).eval()
    coarse, fine = torch.randn(2, 4, *[3] * spatial_dims), torch.randn(2, 4, *[6] * spatial_dims)
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    up = F.interpolate(coarse, size=fine.shape[2:], mode=mode, align_corners=False)
    expected = unit.conv((up - fine).abs())
    torch.testing.assert_close(unit(coarse, fine), expected)
    same = torch.randn(2, 4, *[6] * spatial_dims)
    torch.testing.assert_close(unit(same, fine), unit(fine, same))  # |a - b| is symmetric
    assert not torch.allclose(unit(coarse, fine), unit.conv(up + fine))


def _ones_branch(x: Tensor, k: int) -> Tensor:
    """Independent all-ones branch: conv with a ones kernel, fresh eval BN, ReLU."""
    c = x.shape[1]
    return F.relu(F.conv2d(x, torch.ones(c, c, k, k), padding=k // 2) * BN_SCALE)


def test_multiscale_unit_adds_the_differences_of_the_filtered_maps() -> None:
    unit = MultiScaleSubtractionUnit(2, 3, (3, 5)).eval()
    coarse, fine = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 8, 8)
    up = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    diff = (up - fine).abs()
    for k in (3, 5):
        diff = diff + (_ones_branch(up, k) - _ones_branch(fine, k)).abs()
    torch.testing.assert_close(unit(coarse, fine), unit.conv(diff))
    plain = SubtractionUnit(2, 3).eval()
    plain.load_state_dict(unit.state_dict(), strict=False)
    assert not torch.allclose(unit(coarse, fine), plain(coarse, fine))


@pytest.mark.parametrize(("levels", "units"), [(5, 10), (4, 6), (3, 3), (2, 1)])
def test_pyramid_has_n_choose_2_units_and_n_minus_1_outputs(levels: int, units: int) -> None:
    pyramid = SubtractionPyramid(2, levels, 8, (3, 5)).eval()
    assert sum(len(level) for level in pyramid.levels) == units
    sizes = [16 // 2**i for i in range(levels)]
    out = pyramid([torch.randn(1, 8, s, s) for s in sizes])
    assert [o.shape[-1] for o in out] == sizes[:-1]
    # Parameters: units, aggregation CBRs, the top CBR (N >= 3) and one shared pair of BNs.
    extra = 1 if levels >= 3 else 0
    assert count_parameters(pyramid) == (units + levels - 2 + extra) * CBR_PARAMS + 2 * 2 * 8


def test_shared_filters_are_one_module_not_copies() -> None:
    shared = SubtractionPyramid(2, 5, 8, (3, 5), shared_filters=True)
    units = [u for level in shared.levels for u in level]
    assert all(u.filters is shared.filters for u in units)
    with torch.no_grad():
        shared.filters.filters[0].norm.weight.fill_(2.0)
    assert all(float(u.filters.filters[0].norm.weight[0].detach()) == 2.0 for u in units)
    separate = SubtractionPyramid(2, 5, 8, (3, 5), shared_filters=False)
    assert separate.filters is None
    assert len({id(u.filters) for level in separate.levels for u in level}) == 10
    assert count_parameters(separate) - count_parameters(shared) == 9 * 2 * 2 * 8
    plain = SubtractionPyramid(2, 5, 8, ())
    assert count_parameters(shared) - count_parameters(plain) == 2 * 2 * 8
    assert all(type(u) is SubtractionUnit for level in plain.levels for u in level)


def _record(pyramid: SubtractionPyramid) -> tuple[dict, dict]:
    inputs: dict = {}
    outputs: dict = {}
    modules = {f"u{d}{i}": u for d, level in enumerate(pyramid.levels) for i, u in enumerate(level)}
    modules["top"] = pyramid.top_refine
    modules.update({f"agg{i}": a for i, a in enumerate(pyramid.aggregate)})
    for name, module in modules.items():
        module.register_forward_pre_hook(lambda m, args, n=name: inputs.__setitem__(n, args))
        module.register_forward_hook(lambda m, args, out, n=name: outputs.__setitem__(n, out))
    return inputs, outputs


def test_five_level_wiring_matches_the_paper() -> None:
    pyramid = SubtractionPyramid(2, 5, 4, (3, 5)).eval()
    x = [torch.randn(1, 4, 32 // 2**i, 32 // 2**i) for i in range(5)]  # x1 .. x5
    inputs, outputs = _record(pyramid)
    result = pyramid(x)
    # Level 1: SU(x5, x4), SU(x4, x3), SU(x3, x2), SU(x2, x1) as (coarse, fine).
    for i in range(4):
        assert inputs[f"u0{i}"][0] is x[i + 1] and inputs[f"u0{i}"][1] is x[i]
    # Levels 2 and 3: units between adjacent outputs of the level below.
    for d in (1, 2):
        for i in range(4 - d):
            assert inputs[f"u{d}{i}"][0] is outputs[f"u{d - 1}{i + 1}"]
            assert inputs[f"u{d}{i}"][1] is outputs[f"u{d - 1}{i}"]
    # Level 4: x54321 = SU(CBR(x5432), x4321).
    assert inputs["top"][0] is outputs["u21"]
    assert inputs["u30"][0] is outputs["top"] and inputs["u30"][1] is outputs["u20"]
    # Complementary features: C4 = x54; C3 = CBR(x43 + x543); C2 = CBR(x32 + x432 + x5432);
    # C1 = CBR(x21 + x321 + x4321 + x54321).
    assert result[3] is outputs["u03"]
    columns = {2: ["u02", "u12"], 1: ["u01", "u11", "u21"], 0: ["u00", "u10", "u20", "u30"]}
    for i, names in columns.items():
        torch.testing.assert_close(inputs[f"agg{i}"][0], sum(outputs[n] for n in names))
        assert result[i] is outputs[f"agg{i}"]


def test_four_level_pyramid_refines_its_top_unit_input() -> None:
    pyramid = SubtractionPyramid(2, 4, 4).eval()
    x = [torch.randn(1, 4, 16 // 2**i, 16 // 2**i) for i in range(4)]
    inputs, outputs = _record(pyramid)
    result = pyramid(x)
    assert inputs["top"][0] is outputs["u11"]
    assert inputs["u20"][0] is outputs["top"] and inputs["u20"][1] is outputs["u10"]
    assert result[2] is outputs["u02"]
    no_refine = SubtractionPyramid(2, 4, 4, refine_top=False)
    assert no_refine.top_refine is None
    assert count_parameters(pyramid) - count_parameters(no_refine) == 4 * 4 * 9 + 4 + 2 * 4


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pyramid_gradients_are_finite_in_2d_and_3d(spatial_dims: int) -> None:
    pyramid = SubtractionPyramid(spatial_dims, 3, 4, (3, 5))

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pyramid = pyramid

        def forward(self, x: Tensor) -> Tensor:
            pooled = [x, F.avg_pool2d(x, 2) if spatial_dims == 2 else F.avg_pool3d(x, 2)]
            pooled.append(F.avg_pool2d(pooled[1], 2) if spatial_dims == 2 else F.avg_pool3d(pooled[1], 2))
            return self.pyramid(pooled)[0]

    assert_grads_finite(Wrapped(), torch.randn(2, 4, *[8] * spatial_dims))


def test_pyramid_rejects_bad_level_counts() -> None:
    with pytest.raises(MedsegError, match="at least 2"):
        SubtractionPyramid(2, 1, 4)
    with pytest.raises(MedsegError, match="expects 3"):
        SubtractionPyramid(2, 3, 4)([torch.randn(1, 4, 4, 4)] * 2)
