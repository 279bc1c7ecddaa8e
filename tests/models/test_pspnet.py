"""PSPNet: the official counts, the dilated deep-stem ResNet, the auxiliary head and its 0.4 loss weight."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import medseg
from medseg.engine.config import LossConfig, load_config
from medseg.losses import build_loss
from medseg.models.pspnet import AUX_WEIGHT
from medseg.outputs import SegOutput

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL_BOTTLENECK = {"encoder": "resnet50s", "channels": 8, "aux_channels": 8,
                    "encoder_options": {"widths": (4, 4, 8, 8), "stem_width": 4, "depths": (1, 1, 2, 2)}}


def meta_model(**options: object) -> torch.nn.Module:
    with torch.device("meta"):
        return medseg.create_model("pspnet", in_channels=3, num_classes=19, **options)


@pytest.mark.parametrize(("encoder", "expected"), [("resnet50s", 49_080_038), ("resnet101s", 68_072_166)])
def test_official_parameter_counts_exactly(encoder: str, expected: int) -> None:
    # hszhao/semseg PSPNet(layers=50|101, classes=19) in train mode (aux head built)
    model = meta_model(encoder=encoder)
    assert medseg.count_parameters(model) == expected
    assert medseg.count_parameters(model.aux_head) == 2_364_691
    # without the auxiliary head (the official eval-mode model)
    without_aux = meta_model(encoder=encoder, deep_supervision=False)
    assert medseg.count_parameters(without_aux) == expected - 2_364_691


def test_a_7x7_stem_does_not_give_the_official_count() -> None:
    # the reason for the deep stem: the plain torchvision-style ResNet-50 misses the count by 123,776
    assert medseg.count_parameters(meta_model(encoder="resnet50")) == 49_080_038 - 123_776


def test_head_structure_follows_the_paper() -> None:
    model = meta_model()
    assert model.encoder.channels == [128, 256, 512, 1024, 2048] and model.encoder.reductions[-1] == 8
    assert [stage[1].conv.out_channels for stage in model.ppm.stages] == [512] * 4
    assert [stage[0].output_size for stage in model.ppm.stages] == [1, 2, 3, 6]
    conv, classifier = model.head[0].conv, model.head[1]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4096, 512, (3, 3))
    assert model.head[0].drop.p == pytest.approx(0.1)
    assert (classifier.in_channels, classifier.out_channels, classifier.kernel_size) == (512, 19, (1, 1))
    aux = model.aux_head[0].conv
    assert (aux.in_channels, aux.out_channels) == (1024, 256)


@pytest.mark.parametrize(("official", "first3", "first4"), [(True, 2, 4), (False, 1, 2)])
def test_dilation_pattern(official: bool, first3: int, first4: int) -> None:
    model = medseg.create_model("pspnet", in_channels=3, num_classes=2, official_dilation=official,
                                **SMALL_BOTTLENECK)
    encoder = model.encoder
    # hszhao/semseg sets every conv2 of layer3 to dilation 2 and of layer4 to 4; torchvision keeps the
    # previous dilation in each stage's first block
    assert encoder.layer3[0].conv2.dilation == (first3, first3) and encoder.layer3[1].conv2.dilation == (2, 2)
    assert encoder.layer4[0].conv2.dilation == (first4, first4) and encoder.layer4[1].conv2.dilation == (4, 4)
    assert all(block.conv2.stride == (1, 1) for block in (*encoder.layer3, *encoder.layer4))
    assert encoder.layer4[0].conv2.padding == encoder.layer4[0].conv2.dilation
    x = torch.randn(2, 3, 40, 40)
    features = encoder(x)
    assert [tuple(f.shape[2:]) for f in features[2:]] == [(5, 5)] * 3


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_train_mode_returns_the_aux_map_at_the_input_size(spatial_dims: int) -> None:
    model = medseg.create_model("pspnet", in_channels=1, num_classes=3, spatial_dims=spatial_dims,
                                **medseg.model_info("pspnet")["small_options"])
    x = torch.randn(2, 1, *[16] * spatial_dims)
    out = model.train()(x)
    assert isinstance(out, SegOutput) and len(out.aux) == 1
    assert out.aux[0].shape == out.logits.shape == (2, 3, *[16] * spatial_dims)
    with torch.no_grad():
        assert type(model.eval()(x)) is torch.Tensor
    no_aux = medseg.create_model("pspnet", in_channels=1, num_classes=3, spatial_dims=spatial_dims,
                                 deep_supervision=False, **medseg.model_info("pspnet")["small_options"])
    assert no_aux.aux_head is None and type(no_aux.train()(x)) is torch.Tensor


def _output_and_target() -> tuple[SegOutput, torch.Tensor]:
    torch.manual_seed(0)
    model = medseg.create_model("pspnet", in_channels=3, num_classes=3,
                                **medseg.model_info("pspnet")["small_options"]).train()
    return model(torch.randn(2, 3, 32, 32)), torch.randint(0, 3, (2, 32, 32))


def test_default_loss_weights_the_aux_map_by_0_4() -> None:
    assert AUX_WEIGHT == 0.4
    output, target = _output_and_target()
    default = medseg.model_info("pspnet")["default_loss"]
    loss = build_loss(LossConfig().build_spec("multiclass", default))
    expected = F.cross_entropy(output.logits, target) + 0.4 * F.cross_entropy(output.aux[0], target)
    torch.testing.assert_close(loss(output, target), expected)
    # eval output (a plain Tensor): the main term alone
    torch.testing.assert_close(loss(output.logits, target), F.cross_entropy(output.logits, target))


def test_preset_weights_the_aux_map_by_0_4_through_deep_supervision() -> None:
    config = load_config(CONFIGS / "pspnet-polyp.yaml")
    assert config.model.name == "pspnet" and config.model.options.get("encoder", "resnet50s") == "resnet50s"
    spec = config.loss.build_spec(config.data.label_mode, "pspnet")
    assert spec["deep_supervision"]["weights"] == [1.0, 0.4]
    loss = build_loss(spec)
    output, _ = _output_and_target()
    output = SegOutput(output.logits[:, :1], [output.aux[0][:, :1]])
    target = torch.randint(0, 2, (2, 1, 32, 32)).float()
    main_only = build_loss({**spec, "deep_supervision": False})
    expected = main_only(output.logits, target) + 0.4 * main_only(output.aux[0], target)
    torch.testing.assert_close(loss(output, target), expected)


def test_bad_aux_weight_and_options_raise() -> None:
    with pytest.raises(medseg.MedsegError, match="aux_weight"):
        build_loss({"losses": [{"name": "pspnet", "aux_weight": -1}]})
    with pytest.raises(medseg.MedsegError, match="bins"):
        medseg.create_model("pspnet", bins=(), **medseg.model_info("pspnet")["small_options"])
    with pytest.raises(medseg.MedsegError, match="output_stride"):
        medseg.create_model("pspnet", output_stride=4, **medseg.model_info("pspnet")["small_options"])
