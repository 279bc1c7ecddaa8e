"""Tests of the DeepLab family (medseg.models.deeplabv1/v2/v3): reference counts, structure, CRF option."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medseg
from medseg.blocks.conv import DepthwiseSeparableConv
from medseg.blocks.crf import DenseCRF
from medseg.encoders import create_encoder
from medseg.errors import MedsegError
from medseg.outputs import SegOutput

TINY_RESNET = {"encoder": "resnet18",
               "encoder_options": {"widths": (4, 4, 8, 8), "depths": (1, 1, 1, 1), "stem_width": 4}}
TINY_BOTTLENECK = {"encoder": "resnet50",
                   "encoder_options": {"widths": (4, 4, 8, 8), "depths": (1, 1, 1, 1), "stem_width": 4}}
TINY_XCEPTION = [(8, (8, 8, 8), 2), (8, (12, 12, 12), 2), (12, (16, 16, 16), 2), (16, (16, 16, 16), 1),
                 (16, (16, 20, 20), 2), (20, (24, 24, 32), 1)]


def meta_model(name: str, **options: object) -> nn.Module:
    with torch.device("meta"):
        return medseg.create_model(name, **options)


def count(module: nn.Module) -> int:
    return medseg.count_parameters(module)


def test_deeplabv3_resnet50_matches_torchvision_exactly() -> None:
    # torchvision deeplabv3_resnet50(num_classes=21, aux_loss=True): 42,004,074 (classic-zoo spec).
    model = meta_model("deeplabv3", in_channels=3, num_classes=21, encoder="resnet50", output_stride=8,
                       head_conv=True, deep_supervision=True)
    assert count(model) == 42_004_074
    assert count(model.encoder) == 23_508_032
    # ASPP: 1x1 + 3 atrous 3x3 + pooling (no bias, BN) and the 5 * 256 -> 256 projection
    assert count(model.aspp) == 2 * (2048 * 256 + 512) + 3 * (2048 * 256 * 9 + 512) + 1280 * 256 + 512
    assert count(model.head) + count(model.classifier) == 256 * 256 * 9 + 512 + 256 * 21 + 21
    assert count(model.aux_head) == 1024 * 256 * 9 + 512 + 256 * 21 + 21
    # without torchvision's extras it is the paper's DeepLabV3 (ASPP, 1x1 classifier)
    paper = meta_model("deeplabv3", in_channels=3, num_classes=21, encoder="resnet50", output_stride=8)
    assert count(paper) == 42_004_074 - count(model.head) - count(model.aux_head)


@pytest.mark.parametrize(("output_stride", "rates"), [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_deeplabv3_rates_double_at_output_stride_8(output_stride: int, rates: list[int]) -> None:
    model = medseg.create_model("deeplabv3", in_channels=1, num_classes=2, output_stride=output_stride,
                                aspp_channels=8, **TINY_BOTTLENECK)
    assert [b.conv.dilation[0] for b in model.aspp.branches[1:]] == rates
    assert model.encoder.reductions[-1] == output_stride == model.input_multiple
    assert model.encoder.layer4[0].conv2.stride[0] == 1
    assert model.encoder.layer3[0].conv2.stride[0] == (2 if output_stride == 16 else 1)


def test_deeplabv3_aux_head_in_train_mode_only() -> None:
    model = medseg.create_model("deeplabv3", in_channels=1, num_classes=3, deep_supervision=True,
                                aspp_channels=8, **TINY_RESNET)
    x = torch.randn(2, 1, 48, 32)
    out = model.train()(x)
    assert isinstance(out, SegOutput) and out.logits.shape == (2, 3, 48, 32)
    assert len(out.aux) == 1 and out.aux[0].shape == (2, 3, 48, 32)
    model.eval()
    with torch.no_grad():
        assert type(model(x)) is torch.Tensor
    assert model.aux_head[0].conv.in_channels == model.encoder.channels[-2]  # layer3


def test_deeplabv3plus_decoder_structure_and_x4_upsampling() -> None:
    model = medseg.create_model("deeplabv3plus", in_channels=3, num_classes=2, aspp_channels=8,
                                low_level_channels=4, decoder_channels=6, **TINY_RESNET)
    assert model.low_level_index == 1 and model.encoder.reductions[1] == 4
    assert model.reduce.conv.kernel_size == (1, 1) and model.reduce.conv.in_channels == 4
    assert model.fuse[0].conv.in_channels == 8 + 4 and model.fuse[0].conv.kernel_size == (3, 3)
    assert model.fuse[1].conv.out_channels == 6 and model.classifier.in_channels == 6
    seen: dict[str, tuple[int, ...]] = {}

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["size"] = tuple(output.shape[2:])

    model.classifier.register_forward_hook(record)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 2, 64, 32) and seen["size"] == (16, 8)  # logits at 1/4, then x4


def test_deeplabv3plus_reference_sizes() -> None:
    # Xception-65 (OS 16, the paper's) and ResNet-50 heads: encoder + ASPP + decoder + classifier
    for encoder, expected_encoder in (("xception65", 37_867_312), ("resnet50", 23_508_032)):
        model = meta_model("deeplabv3plus", in_channels=3, num_classes=21, encoder=encoder)
        low = model.encoder.channels[1]
        aspp = 2 * (2048 * 256 + 512) + 3 * (2048 * 256 * 9 + 512) + 1280 * 256 + 512
        decoder = (low * 48 + 96) + (304 * 256 * 9 + 512) + (256 * 256 * 9 + 512) + 256 * 21 + 21
        assert count(model) == expected_encoder + aspp + decoder


def test_deeplabv3plus_separable_option() -> None:
    model = medseg.create_model("deeplabv3plus", in_channels=3, num_classes=2, aspp_channels=8,
                                low_level_channels=4, decoder_channels=6, separable=True, **TINY_RESNET)
    assert all(isinstance(b, DepthwiseSeparableConv) for b in model.aspp.branches[1:])
    assert all(isinstance(m, DepthwiseSeparableConv) for m in model.fuse)
    assert model.aspp.branches[1].depthwise.conv.dilation == (6, 6)
    dense = medseg.create_model("deeplabv3plus", in_channels=3, num_classes=2, aspp_channels=8,
                                low_level_channels=4, decoder_channels=6, **TINY_RESNET)
    assert count(model) < count(dense)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplabv3plus_on_xception(output_stride: int) -> None:
    model = medseg.create_model("deeplabv3plus", in_channels=3, num_classes=2, encoder="xception65",
                                encoder_options={"blocks": TINY_XCEPTION}, output_stride=output_stride,
                                aspp_channels=8, low_level_channels=4, decoder_channels=8, separable=True)
    assert model.encoder.reductions[-1] == output_stride and model.low_level_index == 1
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 2, 32, 32)
    out.mean().backward()


def test_deeplabv1_is_largefov() -> None:
    model = meta_model("deeplabv1", in_channels=3, num_classes=21)
    assert model.encoder.reductions == [1, 2, 4, 8, 8]
    assert (model.fc6.kernel_size, model.fc6.dilation, model.fc6.out_channels) == ((3, 3), (12, 12), 1024)
    assert (model.fc7.kernel_size, model.fc7.out_channels) == ((1, 1), 1024)
    assert count(model) == 14_714_688 + (512 * 9 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 21 + 21)
    seven = meta_model("deeplabv1", in_channels=3, num_classes=21, fc6_kernel=7, fc6_dilation=4,
                       fc_channels=4096)
    assert seven.fc6.kernel_size == (7, 7) and seven.fc7.out_channels == 4096
    small = medseg.create_model("deeplabv1", in_channels=1, num_classes=2,
                                encoder_options={"widths": (4, 4, 8, 8, 8)}, fc_channels=8)
    assert small.eval()(torch.randn(1, 1, 40, 24)).shape == (1, 2, 40, 24)


def test_deeplabv2_aspp_l_on_resnet101() -> None:
    model = meta_model("deeplabv2", in_channels=3, num_classes=21)
    assert [b.dilation[0] for b in model.aspp.branches] == [6, 12, 18, 24]
    assert all(b.in_channels == 2048 and b.out_channels == 21 for b in model.aspp.branches)
    assert model.encoder.reductions[-1] == 8 and len(model.encoder.layer3) == 23
    assert count(model) == 42_500_160 + 4 * (2048 * 9 * 21 + 21)
    vgg = meta_model("deeplabv2", in_channels=3, num_classes=21, encoder="vgg16", branch_channels=1024)
    assert count(vgg) == 14_714_688 + 4 * ((512 * 9 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 21 + 21))


@pytest.mark.parametrize("name", ["deeplabv1", "deeplabv2", "deeplabv3", "deeplabv3plus"])
def test_crf_option_refines_in_eval_mode_only(name: str) -> None:
    options = dict(medseg.model_info(name)["small_options"])
    torch.manual_seed(0)
    plain = medseg.create_model(name, in_channels=3, num_classes=2, **options)
    torch.manual_seed(0)
    with_crf = medseg.create_model(name, in_channels=3, num_classes=2, crf={"iterations": 3}, **options)
    assert isinstance(with_crf.crf, DenseCRF) and plain.crf is None
    with_crf.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    plain.eval(), with_crf.eval()
    with torch.no_grad():
        raw, refined = plain(x), with_crf(x)
    assert refined.shape == raw.shape
    torch.testing.assert_close(refined.logsumexp(1), torch.zeros(2, 32, 32), atol=1e-4, rtol=0)
    assert not torch.allclose(refined, torch.log_softmax(raw, 1), atol=1e-3)  # the CRF did something
    plain.train(), with_crf.train()
    torch.manual_seed(1)
    a = plain(x)
    torch.manual_seed(1)
    b = with_crf(x)
    torch.testing.assert_close(a.logits if isinstance(a, SegOutput) else a,
                               b.logits if isinstance(b, SegOutput) else b)


def test_crf_option_binary_output() -> None:
    model = medseg.create_model("deeplabv2", in_channels=3, num_classes=1, crf=True,
                                **medseg.model_info("deeplabv2")["small_options"]).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_bad_options_are_clear() -> None:
    with pytest.raises(MedsegError, match="output_stride must be 8 or 16"):
        medseg.create_model("deeplabv3", output_stride=32, **TINY_RESNET)
    with pytest.raises(MedsegError, match="head_conv is a DeepLabV3 option"):
        medseg.create_model("deeplabv3plus", head_conv=True, **TINY_RESNET)
    encoder = create_encoder("resnet18", widths=(4, 4, 8, 8), depths=(1, 1, 1, 1), stem_width=4)
    with pytest.raises(MedsegError, match="output stride is 32"):
        medseg.create_model("deeplabv3", in_channels=3, encoder=encoder)
    with pytest.raises(MedsegError, match="crf: .*'iters'"):
        medseg.create_model("deeplabv1", crf={"iters": 2})
    with pytest.raises(MedsegError, match="no level at reduction 3"):
        medseg.create_model("deeplabv3plus", low_level_reduction=3, encoder="vgg16",
                            encoder_options={"widths": (4, 4, 8, 8, 8)})
