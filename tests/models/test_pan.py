"""PAN: the dilated ResNet-101, FPA on the top level, GAUs on layer3..layer1, shapes and options."""

from __future__ import annotations

import pytest
import torch

import medseg

SMALL = medseg.model_info("pan")["small_options"]


def test_default_layout() -> None:
    with torch.device("meta"):
        model = medseg.create_model("pan", in_channels=3, num_classes=21)
    assert model.encoder.reductions == [2, 4, 8, 16, 16]  # res5 dilated: output stride 16
    assert model.encoder.layer4[1].conv2.dilation == (2, 2)
    assert model.fpa.master.conv.in_channels == 2048 and model.fpa.out_channels == 256
    assert [g.low.conv.in_channels for g in model.gau] == [1024, 512, 256]
    assert all(g.out_channels == 256 for g in model.gau)
    assert model.classifier.kernel_size == (3, 3) and model.classifier.out_channels == 21


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("decoder_levels", [0, 3])
def test_output_at_the_input_size(spatial_dims: int, decoder_levels: int) -> None:
    model = medseg.create_model("pan", in_channels=1, num_classes=2, spatial_dims=spatial_dims,
                                decoder_levels=decoder_levels, **SMALL)
    x = torch.randn(2, 1, *[32] * spatial_dims)
    out = model(x)
    assert out.shape == (2, 2, *[32] * spatial_dims)
    out.mean().backward()
    assert model.fpa.down[0].conv.weight.grad is not None


def test_output_stride_32_and_bad_options() -> None:
    model = medseg.create_model("pan", output_stride=32, **SMALL)
    assert model.encoder.reductions[-1] == 32 and model.input_multiple == 32
    with pytest.raises(medseg.MedsegError, match="decoder_levels"):
        medseg.create_model("pan", decoder_levels=5, **SMALL)
