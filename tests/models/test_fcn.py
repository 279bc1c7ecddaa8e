"""FCN-32s / 16s / 8s (medseg.models.fcn): official layer shapes and counts, skips, any-size input."""

from __future__ import annotations

import pytest
import torch

import medseg
from medseg.blocks.upsampling import bilinear_kernel
from medseg.errors import InputSizeError, MedsegError
from medseg.models.fcn import FCN

SMALL = medseg.model_info("fcn8s")["small_options"]
VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def official_count(stride: int, classes: int = 21) -> int:
    """The layers of shelhamer/fcn.berkeleyvision.org voc-fcn{stride}s/net.py: 13 VGG convs (3x3 + bias),
    fc6 (7x7 512 -> 4096), fc7 (1x1), score_fr, score_pool4 / score_pool3 (1x1 + bias) and the
    deconvolutions (kernel 2f, no bias)."""
    total = sum(cin * cout * 9 + cout for cin, cout in VGG16_CONVS)
    total += 512 * 4096 * 49 + 4096 + 4096 * 4096 + 4096 + 4096 * classes + classes
    deconv = {32: [64], 16: [4, 32], 8: [4, 4, 16]}[stride]
    total += sum(classes * classes * k * k for k in deconv)
    if stride <= 16:
        total += 512 * classes + classes
    if stride == 8:
        total += 256 * classes + classes
    return total


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_parameter_count_is_the_official_nets(stride: int) -> None:
    with torch.device("meta"):
        model = medseg.create_model(f"fcn{stride}s", in_channels=3, num_classes=21)
    assert medseg.count_parameters(model) == official_count(stride)
    if stride == 8:
        assert medseg.count_parameters(model) == 134_489_759  # the classic-zoo spec


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_skips_and_upsampling_layers_of_each_variant(stride: int) -> None:
    model = medseg.create_model(f"fcn{stride}s", in_channels=3, num_classes=3, **SMALL)
    assert (model.score_pool4 is not None) == (stride <= 16)
    assert (model.score_pool3 is not None) == (stride == 8)
    assert model.upscore.up.stride == (stride, stride)
    assert model.fc6[0].kernel_size == (7, 7) and model.fc6[0].padding == (3, 3)  # same-padded fc6
    for score in (model.score_fr, model.score_pool4, model.score_pool3):
        if score is not None:  # the official nets' score layers start at zero
            assert score.weight.abs().sum() == 0 and score.bias.abs().sum() == 0
    kernel = bilinear_kernel(2 * stride, 2)
    torch.testing.assert_close(model.upscore.up.weight[1, 1], kernel)
    assert model.upscore.up.weight[0, 1].abs().sum() == 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_any_input_size_gives_logits_at_that_size(spatial_dims: int) -> None:
    model = medseg.create_model("fcn8s", in_channels=1, num_classes=2, spatial_dims=spatial_dims,
                                **SMALL).eval()
    sizes = [(33, 47), (5, 64), (1, 3)] if spatial_dims == 2 else [(9, 17, 5)]
    for size in sizes:
        with torch.no_grad():
            assert model(torch.randn(1, 1, *size)).shape == (1, 2, *size)


def test_the_pool4_skip_changes_the_output_where_the_32s_net_cannot() -> None:
    torch.manual_seed(0)
    model = FCN(2, 1, 2, stride=16, dropout=0.0, **SMALL).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.score_pool4.weight.normal_()  # pool4 now contributes at stride 16
        after = model(x)
    assert not torch.allclose(before, after)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(MedsegError, match="stride 8"):
        medseg.create_model("fcn8s", stride=16)
    with pytest.raises(MedsegError, match="stride must be one of"):
        FCN(2, 1, 2, stride=4)
    with pytest.raises(MedsegError, match="odd fc_kernel"):
        FCN(2, 1, 2, fc_kernel=4, **SMALL)
    with pytest.raises(MedsegError, match="encoder must be one of vgg16, vgg16_bn"):
        FCN(2, 1, 2, encoder="resnet18")
    with pytest.raises(MedsegError, match="5 blocks"):
        FCN(2, 1, 2, encoder_options={"widths": (4, 8, 8, 16, 16), "depth": 4}, fc_channels=8)
    model = FCN(2, 1, 2, **SMALL)
    with pytest.raises(InputSizeError):
        model(torch.randn(1, 1, 8))
