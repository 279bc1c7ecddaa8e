"""The multi-resolution blocks of HRNet (Wang et al. 2020, "Deep High-Resolution Representation Learning
for Visual Recognition", TPAMI; Sun et al. 2019, CVPR), 2D and 3D.

An HRNet keeps parallel branches at 1/4, 1/8, 1/16, 1/32 of the input (widths C, 2C, 4C, 8C). A
:class:`HighResolutionModule` runs a few residual units on every branch, then a :class:`FuseLayer`
exchanges information between them (Fig. 3 of the TPAMI paper); a :class:`TransitionLayer` between stages
adapts the widths and adds the next, coarser branch.

Module and index names follow the official code and timm (``branches.i.k``, ``fuse_layers.j.i.n``, a
transition's ``i.0`` conv and ``i.1`` norm), so a weight file of an official or timm HRNet loads key for key.
The residual units are :class:`~medseg.blocks.residual.ResidualBlock` (HRNet's BasicBlock) and
:class:`~medseg.blocks.residual.BottleneckBlock` (expansion 4), whose keys are the same as HRNet's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.residual import BottleneckBlock, ResidualBlock
from medseg.errors import MedsegError, check_choice

BLOCKS = ("basic", "bottleneck")
FUSE_UPSAMPLINGS = ("nearest", "linear")


def block_expansion(block: str) -> int:
    """Output width / base width of a residual unit kind: 1 (``basic``) or 4 (``bottleneck``)."""
    return BottleneckBlock.expansion if check_choice("block", block, BLOCKS) == "bottleneck" else 1


def residual_branch(spatial_dims: int, block: str, in_channels: int, channels: int,
                    num_blocks: int) -> nn.Sequential:
    """``num_blocks`` residual units at one resolution; the first projects ``in_channels`` to
    ``channels * expansion`` by a 1x1 conv + BN shortcut (``downsample``) when they differ."""
    if num_blocks < 1:
        raise MedsegError(f"a branch needs at least one block, got {num_blocks}")
    unit = BottleneckBlock if check_choice("block", block, BLOCKS) == "bottleneck" else ResidualBlock
    units = []
    for _ in range(num_blocks):
        units.append(unit(spatial_dims, in_channels, channels))
        in_channels = channels * block_expansion(block)
    return nn.Sequential(*units)


def conv_bn(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Conv (no bias) + BN (momentum 0.1) [+ ReLU] as an indexed ``nn.Sequential`` (keys ``0``, ``1``)."""
    modules: list[nn.Module] = [
        layers.conv(spatial_dims, in_channels, out_channels, kernel_size, stride,
                    padding=kernel_size // 2, bias=False),
        layers.norm("batch", spatial_dims, out_channels),
    ]
    if relu:
        modules.append(nn.ReLU(inplace=True))
    return nn.Sequential(*modules)


class TransitionLayer(nn.ModuleList):
    """Between two stages: maps the branches of widths ``in_channels`` to branches of ``out_channels``.

    An existing branch passes unchanged when its width stays, else through a 3x3 conv + BN + ReLU; each
    new branch comes from the last existing one by stride-2 3x3 conv + BN + ReLU steps (one per level it
    lies below it), the last step giving the new width (TPAMI paper, Sec. 3; the official
    ``_make_transition_layer``). ``forward`` takes and returns a list of maps, finest first.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        if not in_channels or len(out_channels) < len(in_channels):
            raise MedsegError(f"a transition cannot go from {len(in_channels)} to {len(out_channels)} "
                              "branches")
        modules: list[nn.Module] = []
        for i, width in enumerate(out_channels):
            if i < len(in_channels):
                modules.append(nn.Identity() if width == in_channels[i]
                               else conv_bn(spatial_dims, in_channels[i], width, 3))
                continue
            steps = i - len(in_channels) + 1
            source = in_channels[-1]
            modules.append(nn.Sequential(*[
                conv_bn(spatial_dims, source, width if s == steps - 1 else source, 3, stride=2)
                for s in range(steps)]))
        super().__init__(modules)
        self.num_inputs = len(in_channels)
        self.out_channels = list(out_channels)

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        last = self.num_inputs - 1
        return [module(x[min(i, last)]) for i, module in enumerate(self)]


class FuseLayer(nn.ModuleList):
    """The multi-resolution fusion of an HRNet module (TPAMI paper, Fig. 3).

    Output j = ReLU(sum_i f_ij(x_i)) over branches i of widths ``channels`` (finest first):

    * i = j: identity;
    * i > j (coarser input): 1x1 conv + BN to width j, then up-sampled to branch j's size (nearest, i.e.
      by 2^(i-j) when the sizes halve exactly; the size is matched, so odd sizes work);
    * i < j (finer input): (j - i) stride-2 3x3 convs with BN, ReLU between them but not after the last,
      the last one giving width j.

    ``self[j][i]`` is f_ij (keys ``fuse_layers.j.i...`` in a module). ``outputs`` limits the outputs to
    the first few branches (1: only the finest, as HRNetV1's last module). ``upsample`` is ``nearest`` (the
    paper and timm) or ``linear`` (bilinear/trilinear, as the official segmentation code).
    """

    def __init__(self, spatial_dims: int, channels: Sequence[int], outputs: int | None = None,
                 upsample: str = "nearest") -> None:
        mode = str(check_choice("fuse upsample", upsample, FUSE_UPSAMPLINGS))
        n = len(channels)
        outputs = n if outputs is None else outputs
        if not 1 <= outputs <= n:
            raise MedsegError(f"a fuse layer over {n} branches gives 1 to {n} outputs, got {outputs}")
        rows = []
        for j in range(outputs):
            row: list[nn.Module] = []
            for i in range(n):
                if i == j:
                    row.append(nn.Identity())
                elif i > j:
                    row.append(conv_bn(spatial_dims, channels[i], channels[j], 1, relu=False))
                else:
                    steps = j - i
                    row.append(nn.Sequential(*[
                        conv_bn(spatial_dims, channels[i], channels[j] if s == steps - 1 else channels[i], 3,
                                stride=2, relu=s < steps - 1)
                        for s in range(steps)]))
            rows.append(nn.ModuleList(row))
        super().__init__(rows)
        self.upsample_mode = mode

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        outputs: list[Tensor] = []
        for j, row in enumerate(self):
            size = list(x[j].shape[2:])
            total = x[j]
            for i, f in enumerate(row):
                if i == j:
                    continue
                y = f(x[i])
                if i > j:
                    y = layers.resize_to(y, size, mode=self.upsample_mode)
                total = total + y
            outputs.append(F.relu(total))
        return outputs


class HighResolutionModule(nn.Module):
    """One HRNet module: parallel branches of residual units, then a :class:`FuseLayer`.

    Args:
        spatial_dims: 2 or 3.
        in_channels: widths of the incoming branches (finest first).
        channels: base widths of the branches (the outputs are ``channels * expansion``).
        num_blocks: residual units per branch.
        block: ``basic`` (two 3x3 conv-BN, HRNet's BasicBlock) or ``bottleneck`` (expansion 4).
        outputs: fused outputs to produce (default all; 1 keeps only the finest branch).
        upsample: up-sampling of the fuse layer, ``nearest`` or ``linear``.

    With a single branch there is no fusion (``fuse_layers`` is None), as in the official code.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], channels: Sequence[int],
                 num_blocks: Sequence[int], block: str = "basic", outputs: int | None = None,
                 upsample: str = "nearest") -> None:
        super().__init__()
        if not (len(in_channels) == len(channels) == len(num_blocks)) or not channels:
            raise MedsegError("an HRNet module needs as many in_channels, channels and num_blocks as "
                              f"branches, got {list(in_channels)}, {list(channels)} and {list(num_blocks)}")
        expansion = block_expansion(block)
        self.branches = nn.ModuleList(
            residual_branch(spatial_dims, block, c_in, c, b)
            for c_in, c, b in zip(in_channels, channels, num_blocks, strict=True))
        widths = [c * expansion for c in channels]
        self.fuse_layers = (FuseLayer(spatial_dims, widths, outputs, upsample) if len(widths) > 1 else None)
        self.out_channels = widths[:len(self.fuse_layers)] if self.fuse_layers is not None else widths

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        if len(x) != len(self.branches):
            raise MedsegError(f"HighResolutionModule: expected {len(self.branches)} inputs, got {len(x)}")
        y = [branch(t) for branch, t in zip(self.branches, x, strict=True)]
        return y if self.fuse_layers is None else self.fuse_layers(y)
