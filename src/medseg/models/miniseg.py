"""MiniSeg (Qiu et al., AAAI 2021, "MiniSeg: An Extremely Minimum Network for Efficient COVID-19
Segmentation").

Fig. 2 of the paper: four encoder stages, each halving the resolution. A stage runs two paths side by
side: a "long" path of down-sampler blocks (1x1 conv then a 5x5 depthwise conv) and a main path of
attentive hierarchical spatial pyramid (AHSP) modules: a 1x1 reduction to a quarter of the width,
depthwise 3x3 convs at dilations 1, 2, 4 and 8 plus a 3x3 average pool, summed hierarchically
(``d1 = conv_1 + pool``, ``d_k = d_{k-1} + conv_k``), re-weighted by a sigmoid attention map per branch
(``d_k + d_k * a_k``) and fused by a grouped 1x1 conv. Each block adds its input; the two paths feed each
other (``main + long``) and are merged between stages by a 1x1 conv whose output is split in halves.
The decoder adds each encoder level (1x1 conv-BN) to the up-sampled coarser level (a dilated parallel
block: depthwise 3x3 at dilations 1 and 2), and 1x1 heads at every decoder level give the main and three
auxiliary predictions. Wiring and widths (8, 24, 32, 64; blocks 2, 3, 8, 6; 82,912 parameters, RGB in,
2 classes) from the official code (yun-liu/MiniSeg, ``MiniSeg.py``). 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.outputs import SegOutput


class ConvBlock(nn.Sequential):
    """3x3 conv (no bias), BN, PReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(layers.conv(spatial_dims, in_channels, out_channels, 3, stride, padding=1,
                                     bias=False),
                         layers.norm("batch", spatial_dims, out_channels),
                         layers.activation("prelu", out_channels))


class DownsamplerBlock(nn.Sequential):
    """The long path's block: 1x1 conv, 5x5 depthwise conv (stride 1 or 2), BN, PReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__(layers.conv(spatial_dims, in_channels, out_channels, 1, padding=0, bias=False),
                         layers.conv(spatial_dims, out_channels, out_channels, 5, stride, padding=2,
                                     groups=out_channels, bias=False),
                         layers.norm("batch", spatial_dims, out_channels),
                         layers.activation("prelu", out_channels))


class AHSP(nn.Module):
    """Attentive hierarchical spatial pyramid module (Sec. 3.2, the official ``DilatedParallelConvBlock``).

    ``out_channels`` must be a multiple of 4 (four branches of a quarter each).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                 dilations: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        if out_channels % 4 or len(dilations) != 4:
            raise MedsegError(f"AHSP needs a multiple of 4 channels and 4 dilations, got {out_channels} "
                              f"and {list(dilations)}")
        quarter = out_channels // 4
        self.reduce = layers.conv(spatial_dims, in_channels, quarter, 1, padding=0, bias=False)
        self.branches = nn.ModuleList(
            layers.conv(spatial_dims, quarter, quarter, 3, stride, padding=d, dilation=d, groups=quarter,
                        bias=False) for d in dilations)
        # 3x3 average pooling with zero padding 1 counted in (the official AvgPool2d), padded explicitly:
        # torch's 3D pooling refuses inputs smaller than the kernel even when padded.
        self.pool = layers.avg_pool(spatial_dims, 3, stride, padding=0)
        self.pool_padding = [1, 1] * spatial_dims
        self.attention = layers.conv(spatial_dims, out_channels, 4, 1, padding=0, groups=4, bias=False)
        self.fuse = layers.conv(spatial_dims, out_channels, out_channels, 1, padding=0, groups=4, bias=False)
        self.bn = layers.norm("batch", spatial_dims, out_channels)
        self.act = layers.activation("prelu", out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        pyramid = []
        previous = self.pool(F.pad(x, self.pool_padding))
        for branch in self.branches:
            previous = previous + branch(x)
            pyramid.append(previous)
        attention = torch.sigmoid(self.attention(torch.cat(pyramid, dim=1)))
        weighted = [d + d * attention[:, k:k + 1] for k, d in enumerate(pyramid)]
        return self.act(self.bn(self.fuse(torch.cat(weighted, dim=1))))


class DilatedParallelBlock(nn.Module):
    """The decoder's block: 1x1 conv, depthwise 3x3 convs at dilations 1 and 2 summed, BN."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = layers.conv(spatial_dims, in_channels, out_channels, 1, padding=0, bias=False)
        self.conv1 = layers.conv(spatial_dims, out_channels, out_channels, 3, padding=1, groups=out_channels,
                                 bias=False)
        self.conv2 = layers.conv(spatial_dims, out_channels, out_channels, 3, padding=2, dilation=2,
                                 groups=out_channels, bias=False)
        self.bn = layers.norm("batch", spatial_dims, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        return self.bn(self.conv1(x) + self.conv2(x))


class EncoderStage(nn.Module):
    """One encoder stage: a strided entry on each path, then ``num_blocks`` main blocks (AHSP, or conv
    blocks in stage 1) of which the first ``num_blocks // 2`` also update the long path."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, num_blocks: int,
                 first: bool) -> None:
        super().__init__()
        self.long_entry = DownsamplerBlock(spatial_dims, in_channels, channels, 2)
        if first:
            self.entry: nn.Module = ConvBlock(spatial_dims, in_channels, channels, 2)
            self.blocks = nn.ModuleList(ConvBlock(spatial_dims, channels, channels)
                                        for _ in range(num_blocks))
        else:
            self.entry = AHSP(spatial_dims, in_channels, channels, 2)
            self.blocks = nn.ModuleList(AHSP(spatial_dims, channels, channels) for _ in range(num_blocks))
        self.long_blocks = nn.ModuleList(DownsamplerBlock(spatial_dims, channels, channels, 1)
                                         for _ in range(num_blocks // 2))

    def forward(self, main_in: Tensor, long_in: Tensor) -> tuple[Tensor, Tensor]:
        long = self.long_entry(long_in)
        main = self.entry(main_in)
        both = main + long
        for i, block in enumerate(self.blocks):
            main = block(both) + main
            if i < len(self.long_blocks):
                long = self.long_blocks[i](both) + long
            both = main + long
        return main, long


class StageMerge(nn.Module):
    """Between stages: 1x1 conv-BN on [long, main], split in halves; the next stage's long path reads
    ``left + long`` and its main path ``right + main``."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(layers.conv(spatial_dims, 2 * channels, 2 * channels, 1, padding=0,
                                              bias=False),
                                  layers.norm("batch", spatial_dims, 2 * channels))
        self.channels = channels

    def forward(self, main: Tensor, long: Tensor) -> tuple[Tensor, Tensor]:
        merged = self.conv(torch.cat([long, main], dim=1))
        left, right = merged.split([self.channels, self.channels], dim=1)
        return right + main, left + long


class MiniSeg(SegmentationModel):
    """MiniSeg (Qiu et al. 2021, Fig. 2), 2D (the paper) or 3D; inputs are multiples of 16.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (3 in the official code).
        num_classes: output channels.
        widths: channels of the four stages (8, 24, 32, 64); stages 2-4 need multiples of 4.
        blocks: main-path blocks per stage (2, 3, 8, 6: the official P1..P4).
        aux: the three auxiliary predictions (decoder levels 1/2 .. 1/8) in training mode.
        dropout: channel dropout before each prediction head (0.01, the official code).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 widths: Sequence[int] = (8, 24, 32, 64), blocks: Sequence[int] = (2, 3, 8, 6),
                 aux: bool = True, dropout: float = 0.01) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        widths, blocks = [int(w) for w in widths], [int(b) for b in blocks]
        if len(widths) != 4 or len(blocks) != 4 or min(widths) < 1 or min(blocks) < 0:
            raise MedsegError(f"MiniSeg needs 4 positive widths and 4 block counts, got {widths} and "
                              f"{blocks}")
        self.spatial_dims = spatial_dims
        self.input_multiple = 16
        self.aux = aux
        self.stages = nn.ModuleList(
            EncoderStage(spatial_dims, in_channels if i == 0 else widths[i - 1], widths[i], blocks[i], i == 0)
            for i in range(4))
        self.merges = nn.ModuleList(StageMerge(spatial_dims, w) for w in widths[:3])

        def conv_bn(channels: int) -> nn.Sequential:
            return nn.Sequential(layers.conv(spatial_dims, channels, channels, 1, padding=0),
                                 layers.norm("batch", spatial_dims, channels))

        self.top = nn.Sequential(conv_bn(widths[3]), layers.activation("prelu", widths[3]))
        # Decoder levels 3, 2, 1 (coarse to fine): the up-sampled coarser level plus the encoder level.
        self.up_blocks = nn.ModuleList(DilatedParallelBlock(spatial_dims, widths[i + 1], widths[i])
                                       for i in (2, 1, 0))
        self.lateral = nn.ModuleList(conv_bn(widths[i]) for i in (2, 1, 0))
        self.up_acts = nn.ModuleList(layers.activation("prelu", widths[i]) for i in (2, 1, 0))
        # Heads: finest first (the main prediction), then the auxiliary levels 1/4, 1/8, 1/16 ... as the
        # official pred1..pred4.
        self.heads = nn.ModuleList(
            nn.Sequential(layers.dropout(spatial_dims, dropout), layers.conv(spatial_dims, w, num_classes, 1,
                                                                             padding=0))
            for w in (widths if aux else widths[:1]))

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        main, long = x, x
        levels = []
        for i, stage in enumerate(self.stages):
            main_out, long_out = stage(main, long)
            levels.append(main_out)
            if i < len(self.merges):
                main, long = self.merges[i](main_out, long_out)
        y = self.top(levels[3])
        decoded = [y]
        for up, lateral, act, skip in zip(self.up_blocks, self.lateral, self.up_acts, levels[2::-1],
                                          strict=True):
            y = layers.resize_to(y, list(skip.shape[2:]))
            decoded[-1] = y  # the official heads read each coarser level after its up-sampling
            y = act(up(y) + lateral(skip))
            decoded.append(y)
        size = list(x.shape[2:])
        finest_first = decoded[::-1]
        logits = layers.resize_to(self.heads[0](finest_first[0]), size)
        if not (self.training and self.aux):
            return logits
        aux = [layers.resize_to(head(f), size)
               for head, f in zip(self.heads[1:], finest_first[1:], strict=True)]
        return SegOutput(logits=logits, aux=aux)


OFFICIAL = "yun-liu/MiniSeg MiniSeg.py"


@register_model(
    "miniseg",
    paper="Qiu et al. 2021, MiniSeg: An Extremely Minimum Network for Efficient COVID-19 Segmentation (AAAI)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=16,
    references=[Reference(options={"in_channels": 3, "num_classes": 2, "spatial_dims": 2}, params=82_912,
                          source=f"{OFFICIAL} MiniSeg(classes=2) with the auxiliary heads, measured")],
    small_options={"widths": (4, 8, 8, 12), "blocks": (2, 2, 2, 2)},
)
def build_miniseg(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> MiniSeg:
    """Build :class:`MiniSeg` (see its docstring for the options)."""
    return MiniSeg(spatial_dims, in_channels, num_classes, **options)
