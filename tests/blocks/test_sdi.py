"""Tests of the SDI block (U-Net v2 Eq. 3-4) against independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medseg.blocks.sdi import SemanticDetailInfusion, SemanticDetailSkips, resize_to_level
from medseg.errors import MedsegError


def test_resizing_rules_on_hand_made_maps() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # larger -> 2x2 average pooling: the means of the four 2x2 blocks
    pooled = resize_to_level(x, [2, 2])
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    # equal -> the same tensor
    assert resize_to_level(x, [4, 4]) is x
    # smaller -> align_corners=True: the corners are kept and a 2 -> 3 step lands on the midpoint
    small = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])
    up = resize_to_level(small, [3, 3])
    assert up.flatten().tolist() == [0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 6.0]


def test_resizing_in_3d_pools_and_interpolates() -> None:
    x = torch.ones(1, 2, 4, 4, 4)
    assert resize_to_level(x, [2, 2, 2]).shape == (1, 2, 2, 2, 2)
    assert torch.equal(resize_to_level(x[:, :, :2, :2, :2], [5, 5, 5]), torch.ones(1, 2, 5, 5, 5))


def independent_sdi(block: SemanticDetailInfusion, features: list[torch.Tensor]) -> torch.Tensor:
    target = features[block.target].shape[-1]
    result = None
    for conv, f in zip(block.smooth, features, strict=True):
        if f.shape[-1] > target:
            f = F.adaptive_avg_pool2d(f, target)
        elif f.shape[-1] < target:
            f = F.interpolate(f, size=(target, target), mode="bilinear", align_corners=True)
        g = F.conv2d(f, conv.weight, conv.bias, padding=1)
        result = g if result is None else result * g
    return result


@pytest.mark.parametrize("target", [0, 1, 2])
def test_sdi_matches_an_independent_computation(target: int) -> None:
    features = [torch.randn(2, 4, s, s) for s in (8, 4, 2)]
    block = SemanticDetailInfusion(2, [4, 4, 4], target)
    expected = independent_sdi(block, features)
    torch.testing.assert_close(block(features), expected)
    assert block(features).shape == (2, 4, *features[target].shape[2:])


def test_sdi_is_a_hadamard_product_of_the_smoothed_maps() -> None:
    block = SemanticDetailInfusion(2, [3, 3], target=0)
    for conv in block.smooth:  # identity smoothing: centre tap 1, no bias
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        conv.weight.data[torch.arange(3), torch.arange(3), 1, 1] = 1.0
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(block([a, b]), a * b)


def test_sdi_takes_any_channels_and_3d() -> None:
    features = [torch.randn(1, c, s, s, s) for c, s in ((2, 8), (5, 4), (7, 2), (3, 1))]
    block = SemanticDetailInfusion(3, [2, 5, 7, 3], target=1, out_channels=6)
    assert block(features).shape == (1, 6, 4, 4, 4)
    assert sum(p.numel() for p in block.parameters()) == 27 * 6 * (2 + 5 + 7 + 3) + 4 * 6


def test_sdi_parameter_count_of_the_spec() -> None:
    assert sum(p.numel() for p in SemanticDetailInfusion(2, [32] * 4, 0).parameters()) == 36_992


def test_skips_parameter_counts_of_the_spec() -> None:
    skips = SemanticDetailSkips(2, [64, 128, 320, 512], 32)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert [count(a[0]) for a in skips.attention] == [512, 2_048, 12_800, 32_768]  # CA
    assert [count(a[1]) for a in skips.attention] == [98] * 4  # SA
    assert [count(r) for r in skips.reduce] == [2_112, 4_160, 10_304, 16_448]  # 1x1 + BN
    assert [count(s) for s in skips.infusion] == [36_992] * 4
    plain = SemanticDetailSkips(2, [64, 128, 320, 512], 32, attention=False)
    assert count(skips) - count(plain) == 48_128 + 4 * 98


def test_skips_forward_shapes_targets_and_grads() -> None:
    skips = SemanticDetailSkips(3, [4, 8, 16], 6, targets=[0, 1])
    features = [torch.randn(1, c, s, s, s) for c, s in ((4, 8), (8, 4), (16, 2))]
    out = skips(features)
    assert [tuple(o.shape) for o in out] == [(1, 6, 8, 8, 8), (1, 6, 4, 4, 4)]
    assert len(skips.infusion) == 2
    out[0].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in skips.parameters() if p.grad is not None)


def test_grads_finite_2d() -> None:
    block = SemanticDetailSkips(2, [4], 4)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    block([x])[0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bad_arguments_raise() -> None:
    with pytest.raises(MedsegError, match="target"):
        SemanticDetailInfusion(2, [4, 4], target=2)
    with pytest.raises(MedsegError, match="expected 2"):
        SemanticDetailInfusion(2, [4, 4], target=0)([torch.randn(1, 4, 4, 4)])
