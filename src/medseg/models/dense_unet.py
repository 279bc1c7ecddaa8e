"""Dense U-Net: a U-Net whose level blocks are dense blocks (Huang et al. 2017) with a 1x1 transition.

The design of the DenseUNets of H-DenseUNet (Li et al. 2018) and of the dense U-Nets of the medical
surveys, in a plain U-Net layout: every encoder and decoder level is a dense block of ``layers_per_block``
BN-ReLU-conv3x3 layers of growth ``growth_rate`` followed by a 1x1 conv-norm-act transition to the level
width (doubled per level); 2x2 max-pooling down, 2x2 transposed convs up, concatenated skips. Ours (no
reference count).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.blocks.dense import DenseBlock
from medseg.blocks.heads import SegmentationHead
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model
from medseg.models.unet import level_widths


class DenseLevel(nn.Sequential):
    """A dense block then a 1x1 conv-norm-act transition to ``out_channels``."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, num_layers: int = 4,
                 growth_rate: int = 16, dropout: float = 0.0, norm: str | None = "batch",
                 act: str | None = "relu") -> None:
        block = DenseBlock(spatial_dims, in_channels, num_layers, growth_rate, dropout=dropout, norm=norm,
                           act=act)
        super().__init__(block, ConvNormAct(spatial_dims, block.out_channels, out_channels, 1, norm=norm,
                                            act=act))


class DenseUNet(SegmentationModel):
    """U-Net with dense blocks per level, 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        features: width of the first level, doubled per level (32), or the ``depth + 1`` level widths.
        depth: number of down-samplings (4).
        layers_per_block: dense layers per level (4).
        growth_rate: growth rate k of the dense layers (16).
        dropout: dropout of the dense layers (0).
        norm, act: normalisation and activation (batch norm, ReLU).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 features: int | Sequence[int] = 32, depth: int = 4, layers_per_block: int = 4,
                 growth_rate: int = 16, dropout: float = 0.0, norm: str | None = "batch",
                 act: str | None = "relu") -> None:
        super().__init__()
        if not isinstance(features, int):
            depth = len(features) - 1
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.input_multiple = 2**depth
        widths = level_widths(features, depth)
        self.out_channels = widths[0]

        def level(cin: int, cout: int) -> DenseLevel:
            return DenseLevel(spatial_dims, cin, cout, layers_per_block, growth_rate, dropout, norm, act)

        self.stem = ConvNormAct(spatial_dims, in_channels, widths[0], 3, norm=norm, act=act)
        self.encoder = nn.ModuleList(level(widths[max(i - 1, 0)], w) for i, w in enumerate(widths))
        self.pool = layers.max_pool(spatial_dims, 2)
        self.ups = nn.ModuleList(layers.conv_transpose(spatial_dims, widths[i + 1], widths[i])
                                 for i in reversed(range(depth)))
        self.decoder = nn.ModuleList(level(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = SegmentationHead(spatial_dims, widths[0], num_classes)

    def decode(self, x: Tensor) -> Tensor:
        """The finest decoder feature map (``features`` channels at the input size)."""
        x = self.stem(x)
        skips: list[Tensor] = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for i, (up, block) in enumerate(zip(self.ups, self.decoder, strict=True)):
            x = block(torch.cat([skips[-2 - i], up(x)], dim=1))
        return x

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.head(self.decode(x))


@register_model(
    "dense_unet",
    paper="U-Net (Ronneberger et al. 2015) with DenseNet blocks (Huang et al. 2017) per level, as the "
          "DenseUNets of Li et al. 2018 (H-DenseUNet)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=16,
    small_options={"features": 4, "depth": 2, "layers_per_block": 2, "growth_rate": 2},
    aliases=("denseunet",),
)
def build_dense_unet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> DenseUNet:
    """Build :class:`DenseUNet` (see its docstring for the options)."""
    return DenseUNet(spatial_dims, in_channels, num_classes, **options)
