"""Tests of the HRNet blocks (medseg.blocks.hrnet): transition, fuse layer, high-resolution module."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from helpers import assert_grads_finite
from medseg.blocks.hrnet import FuseLayer, HighResolutionModule, TransitionLayer
from medseg.blocks.residual import BottleneckBlock, ResidualBlock
from medseg.errors import MedsegError

DIMS = [2, 3]


def _identity_norms(module: nn.Module) -> None:
    """Every BN at eval with mean 0, variance 1, scale 1, shift 0 and eps 0: an exact identity."""
    module.eval()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 0.0
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.running_mean.zero_()
            m.running_var.fill_(1.0)


def _centre_tap(conv: nn.Conv2d, value: float) -> None:
    """A 1-channel 3x3 conv that multiplies the centre sample by ``value`` (stride 2: x[::2, ::2])."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = value


def _up(x: Tensor, factor: int) -> Tensor:
    """Nearest up-sampling by an integer factor, written with repeat_interleave."""
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def test_fuse_layer_three_branches_hand_computed() -> None:
    fuse = FuseLayer(2, [1, 1, 1])
    _identity_norms(fuse)
    with torch.no_grad():
        fuse[0][1][0].weight.fill_(2.0)   # 1 -> 0: 1x1 conv, up x2
        fuse[0][2][0].weight.fill_(-3.0)  # 2 -> 0: 1x1 conv, up x4
        fuse[1][2][0].weight.fill_(0.5)   # 2 -> 1: 1x1 conv, up x2
    _centre_tap(fuse[1][0][0][0], 4.0)    # 0 -> 1: one stride-2 conv, no ReLU
    _centre_tap(fuse[2][0][0][0], -1.0)   # 0 -> 2: stride-2 conv, ReLU, ...
    _centre_tap(fuse[2][0][1][0], -2.0)   # ... stride-2 conv, no ReLU after it
    _centre_tap(fuse[2][1][0][0], 3.0)    # 1 -> 2: one stride-2 conv
    g = torch.Generator().manual_seed(1)
    x0, x1, x2 = (torch.randn(1, 1, s, s, generator=g) for s in (8, 4, 2))
    with torch.no_grad():
        y0, y1, y2 = fuse([x0, x1, x2])
    expected0 = torch.relu(x0 + _up(2 * x1, 2) + _up(-3 * x2, 4))
    expected1 = torch.relu(4 * x0[..., ::2, ::2] + x1 + _up(0.5 * x2, 2))
    expected2 = torch.relu(-2 * torch.relu(-x0[..., ::2, ::2])[..., ::2, ::2] + 3 * x1[..., ::2, ::2] + x2)
    torch.testing.assert_close(y0, expected0)
    torch.testing.assert_close(y1, expected1)
    torch.testing.assert_close(y2, expected2)


def test_fuse_layer_structure_and_keys() -> None:
    fuse = FuseLayer(2, [4, 8, 16, 32])
    assert isinstance(fuse[2][2], nn.Identity)
    up = fuse[0][3]
    assert up[0].kernel_size == (1, 1) and up[0].out_channels == 4 and up[0].bias is None and len(up) == 2
    down = fuse[3][0]  # three stride-2 convs: 4 -> 4 -> 4 -> 32, ReLU after the first two only
    assert [step[0].out_channels for step in down] == [4, 4, 32]
    assert [step[0].stride for step in down] == [(2, 2)] * 3
    assert [isinstance(step[-1], nn.ReLU) for step in down] == [True, True, False]
    keys = set(fuse.state_dict())
    assert {"0.3.0.weight", "0.3.1.running_var", "3.0.2.0.weight", "3.0.2.1.bias"} <= keys
    assert not any(k.startswith("1.1.") for k in keys)
    assert all(m.momentum == 0.1 for m in fuse.modules() if isinstance(m, nn.BatchNorm2d))


def test_fuse_layer_single_output() -> None:
    fuse = FuseLayer(2, [4, 8, 16], outputs=1)
    assert len(fuse) == 1
    out = fuse([torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)])
    assert [tuple(o.shape) for o in out] == [(1, 4, 8, 8)]
    with pytest.raises(MedsegError, match="1 to 3 outputs"):
        FuseLayer(2, [4, 8, 16], outputs=4)


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("upsample", ["nearest", "linear"])
def test_fuse_layer_odd_sizes(spatial_dims: int, upsample: str) -> None:
    fuse = FuseLayer(spatial_dims, [2, 4, 6], upsample=upsample)
    sizes = [(7, 5, 9), (4, 3, 5), (2, 2, 3)]
    x = [torch.randn(1, c, *s[:spatial_dims]) for c, s in zip([2, 4, 6], sizes, strict=True)]
    out = fuse(x)
    assert [tuple(o.shape) for o in out] == [tuple(t.shape) for t in x]
    assert all((o >= 0).all() for o in out)


def test_transition_layer_widths_identity_and_new_branches() -> None:
    t = TransitionLayer(2, [8, 16], [8, 12, 24, 48])
    assert isinstance(t[0], nn.Identity)
    assert t[1][0].out_channels == 12 and t[1][0].stride == (1, 1) and isinstance(t[1][2], nn.ReLU)
    # two new branches, both from the last existing one (16): one and two stride-2 steps
    assert [s[0].stride for s in t[2]] == [(2, 2)] and t[2][0][0].in_channels == 16
    assert [s[0].out_channels for s in t[3]] == [16, 48]
    assert "1.0.weight" in t.state_dict() and "2.0.0.weight" in t.state_dict()
    assert not any(k.startswith("0.") for k in t.state_dict())
    x = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)]
    assert [tuple(o.shape) for o in t(x)] == [(1, 8, 16, 16), (1, 12, 8, 8), (1, 24, 4, 4), (1, 48, 2, 2)]
    assert t(x)[0] is x[0]
    with pytest.raises(MedsegError, match="from 2 to 1"):
        TransitionLayer(2, [8, 16], [8])


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("branches", [1, 2, 5])
def test_module_any_number_of_branches(spatial_dims: int, branches: int) -> None:
    widths = [2 * 2**i for i in range(branches)]
    module = HighResolutionModule(spatial_dims, widths, widths, [1] * branches)
    base = 33 if spatial_dims == 2 else 17
    x = []
    size = base
    for c in widths:
        x.append(torch.randn(2, c, *[size] * spatial_dims))
        size = -(-size // 2)
    out = module(x)
    assert [tuple(o.shape) for o in out] == [tuple(t.shape) for t in x]
    assert (module.fuse_layers is None) == (branches == 1)
    assert module.out_channels == widths


def test_module_blocks_and_bottleneck_expansion() -> None:
    module = HighResolutionModule(2, [64, 16], [16, 8], [2, 3], block="bottleneck")
    assert isinstance(module.branches[0][0], BottleneckBlock) and len(module.branches[1]) == 3
    assert module.out_channels == [64, 32]
    assert module.branches[0][0].downsample is None          # 64 -> 16 * 4: no projection
    assert module.branches[1][0].downsample is not None      # 16 -> 8 * 4: 1x1 projection
    out = module([torch.randn(1, 64, 8, 8), torch.randn(1, 16, 4, 4)])
    assert [o.shape[1] for o in out] == [64, 32]
    basic = HighResolutionModule(2, [4, 8], [4, 8], [1, 1])
    assert isinstance(basic.branches[0][0], ResidualBlock)
    assert {"branches.1.0.conv2.weight", "fuse_layers.0.1.0.weight", "fuse_layers.1.0.0.1.weight"} \
        <= set(basic.state_dict())
    with pytest.raises(MedsegError, match="block must be one of basic, bottleneck"):
        HighResolutionModule(2, [4], [4], [1], block="dense")
    with pytest.raises(MedsegError, match="as many in_channels"):
        HighResolutionModule(2, [4, 8], [4], [1])


@pytest.mark.parametrize("spatial_dims", DIMS)
def test_module_gradients(spatial_dims: int) -> None:
    module = HighResolutionModule(spatial_dims, [2, 4, 8], [2, 4, 8], [1, 1, 1])

    class Sum(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            size = list(x.shape[2:])
            coarser = [torch.randn(1, c, *[-(-s // 2**i) for s in size]) for i, c in ((1, 4), (2, 8))]
            return sum(o.mean() for o in module([x, *coarser]))

    wrapper = Sum()
    wrapper.module = module
    assert_grads_finite(wrapper, torch.randn(1, 2, *[8] * spatial_dims))
