"""Tests of the recurrent (residual) convolutional units of R2U-Net (Alom et al. 2018)."""

from __future__ import annotations

import pytest
import torch

from medseg.blocks.recurrent import RecurrentConv, RecurrentConvUnit, RecurrentResidualUnit
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters


def _input(spatial_dims: int, channels: int = 3, size: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, channels, *([size] * spatial_dims))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_recurrent_conv_unfolds_t_plus_one_shared_convolutions(spatial_dims: int) -> None:
    x = _input(spatial_dims, channels=4)
    layer = RecurrentConv(spatial_dims, 4, t=0).eval()
    f = layer.conv
    expected = {0: f(x), 1: f(x + f(x)), 2: f(x + f(x + f(x)))}
    outputs = {}
    for t in (0, 1, 2):
        layer.t = t
        outputs[t] = layer(x)
        torch.testing.assert_close(outputs[t], expected[t])
    assert not torch.allclose(outputs[0], outputs[1])
    assert not torch.allclose(outputs[1], outputs[2])


def test_parameters_do_not_depend_on_t() -> None:
    counts = {count_parameters(RecurrentResidualUnit(2, 3, 8, t=t)) for t in (0, 1, 2, 3)}
    # 1x1: 3*8 + 8; two recurrent layers of 3x3 conv (with bias, as in the reference) and batch norm
    assert counts == {3 * 8 + 8 + 2 * (9 * 8 * 8 + 8 + 2 * 8)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_residual_unit_shape_and_residual_addition(spatial_dims: int) -> None:
    x = _input(spatial_dims)
    unit = RecurrentResidualUnit(spatial_dims, 3, 6, t=2).eval()
    out = unit(x)
    assert out.shape == (2, 6, *x.shape[2:])
    projected = unit.project(x)
    torch.testing.assert_close(out, projected + unit.recurrent(projected))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_recurrent_conv_unit_has_no_residual(spatial_dims: int) -> None:
    x = _input(spatial_dims)
    plain = RecurrentConvUnit(spatial_dims, 3, 6, t=2).eval()
    residual = RecurrentResidualUnit(spatial_dims, 3, 6, t=2).eval()
    residual.load_state_dict(plain.state_dict())
    torch.testing.assert_close(plain(x), plain.recurrent(plain.project(x)))
    torch.testing.assert_close(residual(x) - plain(x), plain.project(x))
    assert plain(x).min() >= 0  # it ends with the ReLU of the last recurrent layer


def test_t_changes_the_unit_output() -> None:
    x = _input(2)
    torch.manual_seed(1)
    unit = RecurrentResidualUnit(2, 3, 6, t=1).eval()
    out_t1 = unit(x)
    for layer in unit.recurrent:
        layer.t = 2
    assert not torch.allclose(out_t1, unit(x))


def test_negative_t_raises() -> None:
    with pytest.raises(MedsegError):
        RecurrentConv(2, 4, t=-1)
