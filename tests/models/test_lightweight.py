"""Model-specific tests of ENet, ERFNet and Fast-SCNN (reference counts, structure); the shared test covers
the output contract."""

from __future__ import annotations

import pytest
import torch

from medseg import layers
from medseg.blocks.factorized import DownsamplerBlock, FactorizedConv, InvertedResidual, NonBottleneck1D
from medseg.errors import InputSizeError
from medseg.models.enet import DownsamplingBottleneck, UpsamplingBottleneck
from medseg.models.registry import count_parameters, create_model
from medseg.outputs import SegOutput


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("enet", {}, 351_660),  # davidtvs/PyTorch-ENet ENet(19), run on random init
    ("fast_scnn", {}, 1_138_051),  # Tramac/Fast-SCNN-pytorch FastSCNN(19)
    ("fast_scnn", {"aux": True}, 1_157_174),  # FastSCNN(19, aux=True)
])
def test_exact_reference_counts_at_19_classes(name: str, options: dict, expected: int) -> None:
    assert count_parameters(create_model(name, in_channels=3, num_classes=19, **options)) == expected


def test_erfnet_count_is_the_reference_less_its_encoder_pretraining_classifier() -> None:
    # Eromera/erfnet_pytorch Net(19) has 2,066,642 parameters, of which the encoder's 1x1 classifier
    # (128 * 19 + 19, used only to pre-train the encoder alone) is not part of the full network's forward
    count = count_parameters(create_model("erfnet", in_channels=3, num_classes=19))
    assert count == 2_066_642 - (128 * 19 + 19)


def test_enet_prelu_has_one_slope_per_layer_and_group_norm_leaky_relu_options_apply() -> None:
    model = create_model("enet", in_channels=3, num_classes=2)
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    assert prelus and all(m.weight.numel() == 1 for m in prelus)
    other = create_model("enet", in_channels=3, num_classes=2, norm="group", act="leaky_relu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.PReLU) for m in other.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in other.modules())
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in other.modules())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_enet_unpooling_puts_values_back_at_the_pooled_positions(spatial_dims: int) -> None:
    torch.manual_seed(0)
    down = DownsamplingBottleneck(spatial_dims, 4, 8, dropout=0.0).eval()
    x = torch.randn(1, 4, *[8] * spatial_dims)
    _, indices = down(x)
    pooled, reference = layers.max_pool(spatial_dims, 2, return_indices=True)(x)
    assert torch.equal(indices, reference)
    restored = layers.max_unpool(spatial_dims, 2)(pooled, indices)
    assert torch.equal(restored[restored != 0], x[restored != 0])  # the maxima, at their positions
    assert int((restored != 0).sum()) == pooled.numel()
    up = UpsamplingBottleneck(spatial_dims, 8, 4, dropout=0.0).eval()
    assert up(torch.randn(1, 8, *[4] * spatial_dims), indices).shape == x.shape


def test_factorized_convs_run_along_each_axis() -> None:
    conv = FactorizedConv(3, 2, 2, 5)
    kernels = [tuple(m.kernel_size) for m in conv.modules() if isinstance(m, torch.nn.Conv3d)]
    assert kernels == [(5, 1, 1), (1, 5, 1), (1, 1, 5)]
    block = NonBottleneck1D(2, 4, dilation=4).eval()
    dilations = [m.dilation for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert dilations == [(1, 1), (1, 1), (4, 1), (1, 4)]
    x = torch.randn(1, 4, 16, 16)
    assert block(x).shape == x.shape


def test_inverted_residual_shortcut_only_when_shapes_match() -> None:
    assert InvertedResidual(2, 8, 8, stride=1).use_shortcut
    assert not InvertedResidual(2, 8, 8, stride=2).use_shortcut
    assert not InvertedResidual(2, 8, 16, stride=1).use_shortcut


def test_downsampler_without_pool_when_the_input_is_wide() -> None:
    block = DownsamplerBlock(2, 20, 16)
    assert block.pool is None
    assert block(torch.randn(2, 20, 8, 8)).shape == (2, 16, 4, 4)


def test_fast_scnn_aux_output_in_training_only() -> None:
    model = create_model("fast_scnn", in_channels=3, num_classes=2, aux=True, downsample_widths=(4, 6, 8),
                         block_widths=(8, 8, 8), channels=8, expansion=2, blocks=(1, 1, 1))
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert isinstance(out, SegOutput) and out.aux[0].shape == (2, 2, 64, 64)
    assert type(model.eval()(x)) is torch.Tensor


@pytest.mark.parametrize(("name", "size"), [("enet", 36), ("erfnet", 20), ("fast_scnn", 48)])
def test_sizes_that_are_not_multiples_are_refused(name: str, size: int) -> None:
    model = create_model(name, in_channels=3, num_classes=2)
    with pytest.raises(InputSizeError, match="multiple"):
        model(torch.randn(1, 3, size, size))
