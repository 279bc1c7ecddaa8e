"""SkipDenseNet3D (Bui et al. 2017, "3D Densely Convolutional Networks for Volumetric Segmentation",
arXiv 1709.03199), 3D only.

Fig. 1 of the paper: a 3x3x3 conv stem, four dense blocks (BN-ReLU-1x1x1-BN-ReLU-3x3x3 bottleneck layers)
separated by transitions (BN-ReLU-1x1x1 conv compressing by ``compression``, 2x2x2 average pooling);
the output of **every** dense block is taken to the decoder by a skip: a 1x1x1 conv to ``skip_channels``
and a transposed conv back to the input resolution (kernel = stride = the block's reduction; the first
block is already at full size). The skips are concatenated, and a BN-ReLU-1x1x1 conv gives the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.blocks.dense import DenseBlock, NormActConv
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model


class SkipDenseNet3D(SegmentationModel):
    """SkipDenseNet3D (Bui et al. 2017), 3D; inputs multiples of ``2 ** (len(block_layers) - 1)``.

    Args:
        spatial_dims: 3 (the only value).
        in_channels: image channels.
        num_classes: output channels.
        stem_channels: width of the 3x3x3 stem conv (32).
        growth_rate: dense layer growth (16).
        block_layers: dense layers per block (4, 4, 4, 4).
        compression: channel factor of each transition (0.5).
        skip_channels: width of each block's skip to the decoder (16).
        dropout: dropout in the dense layers (0.1).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, stem_channels: int = 32,
                 growth_rate: int = 16, block_layers: Sequence[int] = (4, 4, 4, 4), compression: float = 0.5,
                 skip_channels: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise MedsegError(f"SkipDenseNet3D is 3D only, got spatial_dims {spatial_dims}")
        if not block_layers or min(block_layers) < 1 or not 0 < compression <= 1:
            raise MedsegError(f"SkipDenseNet3D needs positive block_layers and compression in (0, 1], got "
                              f"{list(block_layers)} and {compression}")
        self.spatial_dims = 3
        self.input_multiple = 2 ** (len(block_layers) - 1)
        self.stem = ConvNormAct(3, in_channels, stem_channels, 3)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        self.skips = nn.ModuleList()
        channels = stem_channels
        for i, n in enumerate(block_layers):
            block = DenseBlock(3, channels, n, growth_rate, bottleneck_factor=4, dropout=dropout, bias=False)
            self.blocks.append(block)
            channels = block.out_channels
            scale = 2**i
            skip: list[nn.Module] = [NormActConv(3, channels, skip_channels, 1)]
            if scale > 1:
                skip.append(layers.conv_transpose(3, skip_channels, skip_channels, scale, scale))
            self.skips.append(nn.Sequential(*skip))
            if i < len(block_layers) - 1:
                out = max(1, int(channels * compression))
                self.transitions.append(nn.Sequential(NormActConv(3, channels, out, 1),
                                                      layers.avg_pool(3, 2)))
                channels = out
        self.head = NormActConv(3, skip_channels * len(block_layers), num_classes, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            skips.append(self.skips[i](x))
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(torch.cat(skips, dim=1))


@register_model(
    "skipdensenet3d",
    paper="Bui et al. 2017, 3D Densely Convolutional Networks for Volumetric Segmentation (arXiv 1709.03199)",
    dims=(3,),
    default_loss="dice_ce",
    input_multiple=8,
    defaults={"spatial_dims": 3},
    small_options={"stem_channels": 4, "growth_rate": 4, "block_layers": (1, 1, 1, 1), "skip_channels": 4},
)
def build_skipdensenet3d(*, in_channels: int, num_classes: int, spatial_dims: int,
                         **options) -> SkipDenseNet3D:
    """Build :class:`SkipDenseNet3D` (see its docstring for the options)."""
    return SkipDenseNet3D(spatial_dims, in_channels, num_classes, **options)
