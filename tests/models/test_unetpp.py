"""UNet++: reference counts, deep supervision, pruning to UNet++ L^l."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from medseg.encoders.base import Encoder
from medseg.errors import MedsegError
from medseg.models.registry import count_parameters, create_model, get_entry
from medseg.models.unetpp import UNetPlusPlus
from medseg.outputs import SegOutput


def test_reference_counts_and_the_three_extra_heads() -> None:
    references = get_entry("unetpp").references
    with torch.device("meta"):  # counted, never run
        counts = [count_parameters(create_model("unetpp", **r.options)) for r in references]
    assert counts == [r.params for r in references] == [9_041_601, 9_041_700]
    assert counts[1] - counts[0] == 3 * (32 + 1)  # 1x1 heads on X(0,1..3) next to the one on X(0,4)


def test_node_widths_follow_equation_1() -> None:
    """X(i,j) convolves (j + 1) * width_i channels: j earlier nodes of its level and one up-sampled."""
    model = UNetPlusPlus(2, 1, 1, depth=3, features=4)
    for d, diagonal in enumerate(model.diagonals):
        assert len(diagonal.nodes) == d
        for k, node in enumerate(diagonal.nodes):
            i, j = d - 1 - k, k + 1
            assert node.conv[0].conv.in_channels == (j + 1) * 4 * 2**i


def small(spatial_dims: int, **options) -> UNetPlusPlus:
    return UNetPlusPlus(spatial_dims, 1, 2, depth=3, features=4, deep_supervision=True, **options)


def test_train_mode_returns_the_heads_and_their_average() -> None:
    model = small(2).train()
    x = torch.randn(2, 1, 16, 16)
    out = model(x)
    assert isinstance(out, SegOutput)
    assert len(out.aux) == 3 and all(a.shape == (2, 2, 16, 16) for a in out.aux)
    assert torch.allclose(out.logits, torch.stack(out.aux).mean(0))
    assert isinstance(UNetPlusPlus(2, 1, 2, depth=3, features=4).train()(x), Tensor)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pruned_levels(spatial_dims: int) -> None:
    torch.manual_seed(0)
    model = small(spatial_dims).eval()
    x = torch.randn(1, 1, *(8,) * spatial_dims)
    with torch.no_grad():
        nodes = model.nested_nodes(x, model.depth)
        heads = [head(node) for head, node in zip(model.heads.heads, nodes, strict=True)]
        accurate = model(x)
    assert torch.allclose(accurate, torch.stack(heads).mean(0), atol=1e-6)
    for level in range(1, model.depth + 1):
        model.prune_level = level
        model.zero_grad(set_to_none=True)
        out = model(x)
        assert out.shape == (1, 2, *x.shape[2:])
        # the sub-network L^level computes X(0,level) exactly as the whole network does
        assert torch.allclose(out, heads[level - 1], atol=1e-5)
        out.sum().backward()
        for d in range(model.depth + 1):
            used = [p.grad is not None for p in model.diagonals[d].parameters()]
            used += [p.grad is not None for p in model.encoder.levels[d].parameters()]
            assert all(used) if d <= level else not any(used), (level, d)


def test_pruning_applies_only_in_eval_mode() -> None:
    model = small(2, prune_level=1)
    x = torch.randn(2, 1, 16, 16)
    assert len(model.train()(x).aux) == 3
    model.eval()
    assert torch.allclose(model(x), model.heads.heads[0](model.nested_nodes(x, 1)[0]))


def test_prune_level_is_checked() -> None:
    with pytest.raises(MedsegError, match="deep_supervision"):
        UNetPlusPlus(2, 1, 1, depth=3, features=4, prune_level=2)
    assert UNetPlusPlus(2, 1, 1, depth=3, features=4, prune_level=3).prune_level == 3
    model = small(2)
    with pytest.raises(MedsegError, match="1..3"):
        model.prune_level = 4
    with pytest.raises(MedsegError, match="1..3"):
        small(2, prune_level=0)


def test_interpolation_upsampling() -> None:
    model = UNetPlusPlus(3, 2, 3, depth=2, features=4, upsample="interpolate").eval()
    assert model(torch.randn(1, 2, 8, 8, 12)).shape == (1, 3, 8, 8, 12)


class _StandInEncoder(Encoder):
    """Levels at 1/2, 1/4, 1/8 with widths 3, 5, 7."""

    def __init__(self, reductions: tuple[int, ...] = (2, 4, 8)) -> None:
        super().__init__()
        self.channels, self.reductions = [3, 5, 7], list(reductions)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, stride=2, padding=1)
                                   for i, o in ((2, 3), (3, 5), (5, 7)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for conv in self.convs:
            x = conv(x)
            out.append(x)
        return out


def test_unetpp_over_an_encoder() -> None:
    model = UNetPlusPlus(2, 2, 4, encoder=_StandInEncoder(), deep_supervision=True).train()
    assert model.depth == 2 and model.input_multiple == 8
    out = model(torch.randn(1, 2, 16, 16))
    assert out.logits.shape == (1, 4, 16, 16)  # resized from the 1/2 level to the input
    assert [tuple(a.shape) for a in out.aux] == [(1, 4, 16, 16)] * 2
    assert model.diagonals[2].nodes[0].conv[0].conv.in_channels == 2 * 5  # X(1,1): [X(1,0), U(X(2,0))]


def test_unetpp_refuses_non_halving_encoder() -> None:
    with pytest.raises(MedsegError, match="halve"):
        UNetPlusPlus(2, 2, 1, encoder=_StandInEncoder((2, 4, 16)))
