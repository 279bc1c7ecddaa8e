"""Tests of the additive attention gate (Oktay et al. 2018, Eq. 1-2) and its multi-gate block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.blocks.attention_gate import AttentionGate, MultiAttentionGate
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters


def _pair(spatial_dims: int, skip: int = 8, coarse: int = 4, cx: int = 6, cg: int = 10):
    torch.manual_seed(0)
    x = torch.randn(2, cx, *([skip] * spatial_dims))
    g = torch.randn(2, cg, *([coarse] * spatial_dims))
    return x, g


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_coefficients_lie_in_unit_interval_at_the_skip_size(spatial_dims: int) -> None:
    x, g = _pair(spatial_dims, skip=9, coarse=3)  # odd skip: theta's grid is floor(9 / 2) = 4
    gate = AttentionGate(spatial_dims, 6, 10, inter_channels=4).eval()
    out, alpha = gate.forward_with_coefficients(x, g)
    assert alpha.shape == (2, 1, *x.shape[2:])
    assert out.shape == x.shape
    assert alpha.min() > 0 and alpha.max() < 1
    assert alpha.std() > 0  # the coefficients depend on the position


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_output_is_w_of_skip_times_alpha(spatial_dims: int) -> None:
    x, g = _pair(spatial_dims)
    gate = AttentionGate(spatial_dims, 6, 10).eval()
    alpha = gate.coefficients(x, g)
    torch.testing.assert_close(gate(x, g), gate.output(x * alpha))
    assert not torch.allclose(gate(x, g), gate.output(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_coefficients_follow_equations_1_and_2(spatial_dims: int) -> None:
    # sub_sample=1 and g on the skip's grid: no resampling, alpha = sigmoid(psi(relu(theta x + phi g)))
    x, g = _pair(spatial_dims, skip=6, coarse=6)
    gate = AttentionGate(spatial_dims, 6, 10, inter_channels=3, sub_sample=1).eval()
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    q = F.relu(conv(x, gate.theta.weight) + conv(g, gate.phi.weight, gate.phi.bias))
    expected = torch.sigmoid(conv(q, gate.psi.weight, gate.psi.bias))
    torch.testing.assert_close(gate.coefficients(x, g), expected)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_zero_psi_gives_one_half_everywhere(spatial_dims: int) -> None:
    x, g = _pair(spatial_dims)
    gate = AttentionGate(spatial_dims, 6, 10).eval()
    with torch.no_grad():
        gate.psi.weight.zero_()
        gate.psi.bias.zero_()
    out, alpha = gate.forward_with_coefficients(x, g)
    torch.testing.assert_close(alpha, torch.full_like(alpha, 0.5))
    torch.testing.assert_close(out, gate.output(0.5 * x))


def test_gate_parameters_match_the_official_layout() -> None:
    # theta: c*i*2^3 (no bias); phi: g*i + i; psi: i + 1; W: c*c + c conv and 2c batch norm
    c, gch, i = 16, 32, 8
    gate = AttentionGate(3, c, gch, inter_channels=i)
    assert gate.theta.bias is None
    assert count_parameters(gate) == c * i * 8 + gch * i + i + i + 1 + c * c + c + 2 * c
    assert AttentionGate(2, 16, 32).theta.out_channels == 8  # default inter channels: half the skip's


def test_gradients_reach_every_part_of_the_gate() -> None:
    x, g = _pair(2)
    gate = AttentionGate(2, 6, 10)
    gate(x, g).square().mean().backward()
    for name in ("theta", "phi", "psi"):
        weight = getattr(gate, name).weight
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("num_gates", [1, 2])
def test_multi_gate_concatenates_coefficients_and_fuses_outputs(spatial_dims: int, num_gates: int) -> None:
    x, g = _pair(spatial_dims)
    block = MultiAttentionGate(spatial_dims, 6, 10, num_gates=num_gates).eval()
    out, alphas = block.forward_with_coefficients(x, g)
    assert out.shape == x.shape
    assert alphas.shape == (2, num_gates, *x.shape[2:])
    assert out.min() >= 0  # the fusion ends with a ReLU
    fused = block.combine(torch.cat([gate(x, g) for gate in block.gates], dim=1))
    torch.testing.assert_close(out, fused)
    assert block.combine.conv.in_channels == 6 * num_gates


def test_invalid_settings_raise() -> None:
    with pytest.raises(MedsegError):
        AttentionGate(2, 4, 4, sub_sample=0)
    with pytest.raises(MedsegError):
        MultiAttentionGate(2, 4, 4, num_gates=0)
