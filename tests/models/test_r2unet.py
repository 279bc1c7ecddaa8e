"""Model-specific tests of R2U-Net (Alom et al. 2018); the shared model test covers the rest."""

from __future__ import annotations

import pytest
import torch

from medseg.blocks.recurrent import RecurrentConv, RecurrentResidualUnit
from medseg.errors import InputSizeError
from medseg.models.registry import count_parameters, create_model

SMALL = (4, 8, 16, 32, 64)  # features=4, depth=4


def _reference_r2u_net_count(in_channels: int, num_classes: int, widths: tuple[int, ...]) -> int:
    """Parameters of LeeJunHyun/Image_Segmentation ``R2U_Net``, counted from its structure."""
    def recurrent_block(c: int) -> int:  # 3x3 conv with bias + batch norm
        return 9 * c * c + c + 2 * c

    def rrcnn(c_in: int, c_out: int) -> int:  # 1x1 conv with bias + two recurrent blocks
        return c_in * c_out + c_out + 2 * recurrent_block(c_out)

    def up_conv(c_in: int, c_out: int) -> int:  # up-sampling, 3x3 conv with bias + batch norm
        return 9 * c_in * c_out + c_out + 2 * c_out

    levels = (in_channels, *widths)
    encoder = sum(rrcnn(a, b) for a, b in zip(levels[:-1], levels[1:], strict=True))
    decoder = sum(up_conv(widths[i + 1], widths[i]) + rrcnn(2 * widths[i], widths[i])
                  for i in range(len(widths) - 1))
    return encoder + decoder + widths[0] * num_classes + num_classes


def test_default_matches_the_reference_implementation_count() -> None:
    model = create_model("r2unet", in_channels=3, num_classes=1)
    expected = _reference_r2u_net_count(3, 1, (64, 128, 256, 512, 1024))
    assert expected == 39_091_393
    assert count_parameters(model) == expected


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_small_model_count_and_shape(spatial_dims: int) -> None:
    model = create_model("r2unet", in_channels=2, num_classes=3, spatial_dims=spatial_dims, features=4)
    if spatial_dims == 2:
        assert count_parameters(model) == _reference_r2u_net_count(2, 3, SMALL)
    x = torch.randn(2, 2, *([16] * spatial_dims))
    assert model(x).shape == (2, 3, *x.shape[2:])


def test_every_level_block_is_a_recurrent_residual_unit_with_t() -> None:
    model = create_model("r2unet", features=4, t=3)
    units = [m for m in model.modules() if isinstance(m, RecurrentResidualUnit)]
    assert len(units) == 2 * len(SMALL) - 1  # encoder levels and decoder levels
    assert all(u.residual for u in units)
    assert {m.t for m in model.modules() if isinstance(m, RecurrentConv)} == {3}


def test_t_and_residual_change_outputs_but_not_parameters() -> None:
    x = torch.randn(1, 1, 16, 16)
    outputs, counts = [], []
    for options in ({"t": 2}, {"t": 1}, {"t": 2, "residual": False}):
        torch.manual_seed(0)
        model = create_model("r2unet", features=4, **options).eval()
        outputs.append(model(x))
        counts.append(count_parameters(model))
    assert len(set(counts)) == 1
    assert not torch.allclose(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])


def test_depth_sets_the_input_multiple() -> None:
    model = create_model("r2unet", features=4)
    assert model.input_multiple == 16
    with pytest.raises(InputSizeError):
        model(torch.randn(1, 1, 24, 24))
    shallow = create_model("r2unet", features=4, depth=2).eval()
    assert shallow.input_multiple == 4
    assert shallow(torch.randn(1, 1, 12, 12)).shape == (1, 1, 12, 12)
