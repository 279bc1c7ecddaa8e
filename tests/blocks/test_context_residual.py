"""Tests of the context residual blocks (ConResNet, Zhang et al. 2020)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_grads_finite
from medseg.blocks.context_residual import (
    WS_EPS,
    ContextResidualModule,
    PreActivationConv,
    PreActivationResidualBlock,
    inter_slice_residual,
)
from medseg.errors import MedsegError
from medseg.layers import WeightStandardizedConv


def loop_residual(x: torch.Tensor, dim: int) -> torch.Tensor:
    """|x[s] - x[s-1]| with a zero first slice, by an explicit loop over the slices of tensor dim ``dim``."""
    out = torch.zeros_like(x)
    for s in range(1, x.shape[dim]):
        out.select(dim, s).copy_((x.select(dim, s) - x.select(dim, s - 1)).abs())
    return out


def test_inter_slice_residual_hand_made_values() -> None:
    x = torch.tensor([1.0, 4.0, 2.0, 2.0]).view(1, 1, 4, 1, 1)
    expected = torch.tensor([0.0, 3.0, 2.0, 0.0]).view(1, 1, 4, 1, 1)
    assert torch.equal(inter_slice_residual(x, 0), expected)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_inter_slice_residual_along_each_axis(axis: int) -> None:
    x = torch.randn(2, 3, 4, 5, 6)
    assert torch.allclose(inter_slice_residual(x, axis), loop_residual(x, 2 + axis % 3))


def test_inter_slice_residual_2d_and_single_slice() -> None:
    x = torch.randn(1, 2, 5, 7)
    assert torch.allclose(inter_slice_residual(x, 1), loop_residual(x, 3))
    assert torch.equal(inter_slice_residual(torch.ones(1, 1, 1, 4, 4), 0), torch.zeros(1, 1, 1, 4, 4))


@pytest.mark.parametrize("axis", [3, -4, 1.0, True])
def test_inter_slice_residual_rejects_bad_axis(axis) -> None:
    with pytest.raises(MedsegError, match="slice_axis"):
        inter_slice_residual(torch.zeros(1, 1, 4, 4, 4), axis)


def test_pre_activation_conv_is_gn_relu_standardized_conv() -> None:
    unit = PreActivationConv(3, 16, 8, 3)
    assert isinstance(unit.norm, torch.nn.GroupNorm) and unit.norm.num_groups == 8
    assert isinstance(unit.conv, WeightStandardizedConv) and unit.conv.conv.bias is None
    assert unit.conv.eps == WS_EPS
    x = torch.randn(1, 16, 6, 6, 6)
    w = unit.conv.conv.weight
    w_std = (w - w.mean(dim=(1, 2, 3, 4), keepdim=True)) / w.std(dim=(1, 2, 3, 4), unbiased=False,
                                                                 keepdim=True)
    expected = torch.nn.functional.conv3d(torch.relu(unit.norm(x)), w_std, padding=1)
    assert torch.allclose(unit(x), expected, atol=1e-5)


def test_residual_block_identity_and_projection() -> None:
    same = PreActivationResidualBlock(3, 8, 8)
    assert isinstance(same.shortcut, torch.nn.Identity)
    x = torch.randn(2, 8, 4, 4, 4)
    assert torch.allclose(same(x), same.conv2(same.conv1(x)) + x)
    wider = PreActivationResidualBlock(2, 8, 16, dilation=2)
    assert isinstance(wider.shortcut, PreActivationConv) and wider.shortcut.conv.conv.kernel_size == (1, 1)
    assert wider(torch.randn(1, 8, 9, 9)).shape == (1, 16, 9, 9)
    assert_grads_finite(wider, torch.randn(1, 8, 8, 8))


def _capture(module: ContextResidualModule) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    module.seg_conv.register_forward_hook(lambda m, i, o: seen.__setitem__("F", o.detach().clone()))
    module.res_conv.register_forward_hook(lambda m, i, o: seen.__setitem__("O_res", o.detach().clone()))
    if module.context_conv is not None:
        module.context_conv.register_forward_hook(
            lambda m, i, o: seen.__setitem__("G", i[0].detach().clone()))
    return seen


def test_context_residual_of_a_hand_made_volume() -> None:
    # F is forced to known values: seg_conv replaced by the identity (in = out channels, 1 channel slices).
    module = ContextResidualModule(3, 1, 1, 1)
    module.seg_conv = torch.nn.Identity()
    seen = _capture(module)
    f = torch.tensor([0.0, math.log(3.0), -math.log(3.0), math.log(3.0)]).view(1, 1, 4, 1, 1)
    module(f, torch.zeros_like(f))
    # sigmoid: 0.5, 0.75, 0.25, 0.75 -> |differences| with a zero first slice: 0, 0.25, 0.5, 0.5
    assert torch.allclose(seen["G"].flatten(), torch.tensor([0.0, 0.25, 0.5, 0.5]), atol=1e-6)


@pytest.mark.parametrize("axis", [0, 2])
def test_context_residual_and_attention_follow_the_equations(axis: int) -> None:
    module = ContextResidualModule(3, 16, 8, 8, slice_axis=axis).eval()
    seen = _capture(module)
    seg, res = torch.randn(2, 16, 4, 5, 6), torch.randn(2, 8, 4, 5, 6)
    out_seg, out_res = module(seg, res)
    expected_g = loop_residual(torch.sigmoid(seen["F"]), 2 + axis)
    assert torch.allclose(seen["G"], expected_g, atol=1e-6)
    assert torch.equal(out_res, seen["O_res"])
    assert torch.allclose(out_seg, seen["F"] * (1 + torch.sigmoid(seen["O_res"])), atol=1e-6)
    # O_res = Conv(res + Conv1x1(G)) with the identity projection (equal channels)
    expected_res = module.res_conv(res + module.context_conv(expected_g))
    assert torch.allclose(out_res, expected_res, atol=1e-5)


def test_ablation_switches_change_outputs_and_parameters() -> None:
    def build(**switches) -> ContextResidualModule:
        torch.manual_seed(0)
        return ContextResidualModule(3, 8, 8, 8, **switches).eval()

    full, no_residual, no_attention = build(), build(context_residual=False), build(context_attention=False)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(full) - count(no_residual) == 8 * 8  # the 1x1 conv of the context residual mapping
    assert count(no_attention) == count(full)
    seg, res = torch.randn(1, 8, 4, 4, 4), torch.randn(1, 8, 4, 4, 4)
    out_full = full(seg, res)
    seen = _capture(no_attention)
    out_plain = no_attention(seg, res)
    assert torch.equal(out_plain[0], seen["F"])  # no attention: O_seg = F
    assert not torch.allclose(out_full[0], out_plain[0])
    assert torch.allclose(out_full[1], out_plain[1])  # the residual path does not depend on the attention
    assert not torch.allclose(out_full[1], no_residual(seg, res)[1])


def test_residual_input_projection_kinds() -> None:
    image = ContextResidualModule(3, 16, 8, residual_channels=4, residual_is_image=True)
    assert isinstance(image.res_in, WeightStandardizedConv)
    assert isinstance(ContextResidualModule(3, 16, 8, residual_channels=16).res_in, PreActivationConv)
    assert isinstance(ContextResidualModule(3, 16, 8).res_in, torch.nn.Identity)
    out_seg, out_res = image(torch.randn(1, 16, 4, 4, 4), torch.randn(1, 4, 4, 4, 4))
    assert out_seg.shape == out_res.shape == (1, 8, 4, 4, 4)


def test_module_works_in_2d_with_finite_grads() -> None:
    module = ContextResidualModule(2, 8, 8, slice_axis=1)
    seg = torch.randn(2, 8, 6, 6, requires_grad=True)
    res = torch.randn(2, 8, 6, 6)
    out_seg, out_res = module(seg, res)
    (out_seg.square().mean() + out_res.square().mean()).backward()
    assert torch.isfinite(seg.grad).all() and seg.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
