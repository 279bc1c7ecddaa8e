"""FC-DenseNet56 / 67 / 103 (medseg.models.fcdensenet): reference counts, Table 2's feature-map counts,
the up path without the dense block inputs, sizes."""

from __future__ import annotations

import pytest
import torch

import medseg
from medseg.errors import InputSizeError, MedsegError
from medseg.models.fcdensenet import FCDenseNet

COUNTS = {"fcdensenet56": 1_376_988, "fcdensenet67": 3_463_532, "fcdensenet103": 9_322_348}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_reference_counts_with_12_classes(name: str) -> None:
    with torch.device("meta"):
        model = medseg.create_model(name, in_channels=3, num_classes=12)
    assert medseg.count_parameters(model) == COUNTS[name]


def block_outputs(model: FCDenseNet) -> list[int]:
    """The ``m`` column of Jégou et al. 2017, Table 2: feature maps after each dense block, counting the
    block's input (the up path's blocks too, although only their new maps go on)."""
    def m(block: torch.nn.Module) -> int:
        first = block.layers[0].conv
        return first.norm.num_features + len(block.layers) * first.conv.out_channels

    return [m(b) for b in [*model.down_blocks, model.bottleneck, *model.up_blocks]]


def test_fcdensenet103_matches_table_2() -> None:
    with torch.device("meta"):
        model = medseg.create_model("fcdensenet103", in_channels=3, num_classes=12)
    # Table 2 reads 578 for the third up block; its own sum, 304 (skip) + 160 (10 x 16 up) + 7 x 16, is 576
    assert block_outputs(model) == [112, 192, 304, 464, 656, 896, 1088, 816, 576, 384, 256]
    # transitions up take only the new maps of the block below: 15 x 16, then 12 x 16, ...
    assert [t.up.in_channels for t in model.transitions_up] == [240, 192, 160, 112, 80]
    assert model.head.in_channels == 256 and model.head.kernel_size == (1, 1)
    assert model.first_conv.out_channels == 48
    layer_count = sum(len(b.layers) for b in [*model.down_blocks, model.bottleneck, *model.up_blocks])
    # the 103 conv layers: first conv, 91 dense layers, 5 transitions down and 5 up, the 1x1 classifier
    assert layer_count + 1 + 5 + 5 + 1 == 103


def test_up_blocks_emit_only_new_maps_except_the_last() -> None:
    model = medseg.create_model("fcdensenet56", in_channels=1, num_classes=2)
    assert [b.return_only_new for b in model.up_blocks] == [True] * 4 + [False]
    assert model.bottleneck.return_only_new and not any(b.return_only_new for b in model.down_blocks)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_odd_sizes_and_the_smallest_size(spatial_dims: int) -> None:
    model = FCDenseNet(spatial_dims, 1, 2, layers_per_block=1, growth_rate=2, first_channels=4).eval()
    size = (37, 45) if spatial_dims == 2 else (32, 33, 35)
    with torch.no_grad():
        assert model(torch.randn(1, 1, *size)).shape == (1, 2, *size)
    with pytest.raises(InputSizeError, match="at least 32"):
        model(torch.randn(1, 1, *[16] * spatial_dims))


def test_bad_layer_counts_are_clear_errors() -> None:
    with pytest.raises(MedsegError, match="expected one positive count or 11"):
        FCDenseNet(2, 1, 2, layers_per_block=(4, 4, 4))
    with pytest.raises(MedsegError, match="pools >= 1"):
        FCDenseNet(2, 1, 2, pools=0)
