"""RefineNet: the official (guosheng/refinenet) layout and parameter count, widths, dropout, shapes."""

from __future__ import annotations

import pytest
import torch

import medseg
from medseg.blocks.refinenet import ResidualConvUnit

SMALL = medseg.model_info("refinenet")["small_options"]


def rcu(c: int) -> int:
    return 2 * 9 * c * c + c  # two 3x3 convs, the first with a bias


def official_decoder_count(num_classes: int) -> int:
    """The decoder of the MatConvNet 4-cascade RefineNet (gen_network_refine_group.m, gen_net_opts_model_type1
    .m): adaptation convs to [512 256 256 256] + 2 RCUs each; per block the fusion convs (to the smallest
    width), CRP with 2 conv blocks and 3 RCUs in the main flow; dropout and a 3x3 classifier."""
    adapt = 9 * (2048 * 512 + 1024 * 256 + 512 * 256 + 256 * 256) + 2 * rcu(512) + 6 * rcu(256)
    fusion = 9 * (512 * 256 + 256 * 256) + 2 * 9 * (256 * 256 + 256 * 256)
    crp = 2 * 9 * 512 * 512 + 3 * 2 * 9 * 256 * 256
    mainflow = 3 * rcu(512) + 9 * rcu(256)
    return adapt + fusion + crp + mainflow + 9 * 256 * num_classes + num_classes


def test_parameter_count_matches_the_official_layout() -> None:
    with torch.device("meta"):
        model = medseg.create_model("refinenet", in_channels=3, num_classes=21)
    encoder = medseg.count_parameters(model.encoder)
    assert encoder == 42_500_160  # ResNet-101 without fc
    assert medseg.count_parameters(model) - encoder == official_decoder_count(21)


def test_widths_and_rcus_of_the_cascade() -> None:
    with torch.device("meta"):
        model = medseg.create_model("refinenet", in_channels=3, num_classes=2)
    assert [a[1].out_channels for a in model.adapt] == [512, 256, 256, 256]
    assert [a[1].in_channels for a in model.adapt] == [2048, 1024, 512, 256]
    # RefineNet-4 alone at 512, then the carried path (512, 256, 256) and the new path (256) fused to 256
    assert [[p[0].conv1.in_channels for p in block.paths] for block in model.refine] == \
        [[512], [512, 256], [256, 256], [256, 256]]
    assert [block.out_channels for block in model.refine] == [512, 256, 256, 256]
    # three RCUs between blocks (Sec. 3.2): one output RCU, two on the next block's carried path
    assert all(len(block.output) == 1 for block in model.refine)
    assert sum(isinstance(m, ResidualConvUnit) for m in model.head) == 2
    assert all(len(block.crp.convs) == 2 and block.crp.pool.kernel_size == 5 for block in model.refine)
    # the official dropout on the encoder outputs wider than 512 (res5, res4)
    assert [isinstance(a[0], torch.nn.Dropout) for a in model.adapt] == [True, True, False, False]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_output_at_the_input_size(spatial_dims: int) -> None:
    model = medseg.create_model("refinenet", in_channels=1, num_classes=3, spatial_dims=spatial_dims,
                                **SMALL).eval()
    x = torch.randn(1, 1, *[32] * spatial_dims)
    with torch.no_grad():
        assert model(x).shape == (1, 3, *[32] * spatial_dims)


def test_fewer_levels() -> None:
    model = medseg.create_model("refinenet", in_channels=1, num_classes=2, levels=2, **SMALL)
    assert len(model.refine) == 2 and [a[1].out_channels for a in model.adapt] == [16, 8]
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2, 32, 32)
    with pytest.raises(medseg.MedsegError, match="levels"):
        medseg.create_model("refinenet", levels=6, **SMALL)
