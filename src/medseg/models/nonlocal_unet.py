"""Non-local U-Net (Wang et al. 2020, "Non-local U-Nets for Biomedical Image Segmentation", AAAI).

Fig. 1-3: an input block (3x3 conv and a residual block), down-sampling residual blocks (stride-2 residual
blocks with a 1x1 stride-2 shortcut), a bottom block that is a global aggregation block (multi-head
self-attention over all positions, with a residual connection), and up-sampling blocks: the first one(s) an
up-sampling global aggregation block (here: a 2x2 transposed conv then a global aggregation block), the
others a transposed conv and a residual block; skips are added (not concatenated); the output block is
norm-act-dropout-1x1 conv. The global aggregation is :class:`~medseg.blocks.attention.NonLocalBlock` with
``num_heads`` heads and scaled dot products; ``sub_sample`` max-pools its keys and values by 2 (memory: the
affinity matrix is positions x positions). 2D and 3D (the paper's network is 3D).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.attention import NonLocalBlock
from medseg.blocks.conv import ConvNormAct
from medseg.blocks.residual import ResidualBlock
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model
from medseg.models.unet import level_widths


class NonLocalUNet(SegmentationModel):
    """Non-local U-Net (Wang et al. 2020), 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        features: width of the first level, doubled per level (32), or the ``depth + 1`` widths.
        depth: number of down-samplings (3; the paper has 2 on 3D patches).
        num_heads: attention heads of the global aggregation blocks (4).
        attention_up_levels: how many up-sampling blocks (coarsest first) are global aggregation blocks (1).
        sub_sample: max-pool keys and values by 2 in the aggregation blocks (True; False attends to every
            position exactly as the paper, at positions^2 memory).
        dropout: dropout of the output block (0.0; the paper 0.5 on its small data sets).
        norm, act: normalisation and activation (batch norm, ReLU6 in the paper: ``relu`` by default).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 features: int | Sequence[int] = 32, depth: int = 3, num_heads: int = 4,
                 attention_up_levels: int = 1, sub_sample: bool = True, dropout: float = 0.0,
                 norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()
        if not isinstance(features, int):
            depth = len(features) - 1
        if not 0 <= attention_up_levels <= depth:
            raise MedsegError(f"attention_up_levels must be in [0, {depth}], got {attention_up_levels}")
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.input_multiple = 2**depth
        widths = level_widths(features, depth)

        def aggregation(channels: int) -> NonLocalBlock:
            return NonLocalBlock(spatial_dims, channels, channels, sub_sample=sub_sample, norm=norm,
                                 num_heads=num_heads, scaled=True)

        self.input_block = nn.Sequential(
            ConvNormAct(spatial_dims, in_channels, widths[0], 3, norm=norm, act=act),
            ResidualBlock(spatial_dims, widths[0], widths[0], norm=norm, act=act))
        self.down = nn.ModuleList(ResidualBlock(spatial_dims, widths[i], widths[i + 1], stride=2, norm=norm,
                                                act=act) for i in range(depth))
        self.bottom = aggregation(widths[-1])
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for j, i in enumerate(reversed(range(depth))):
            self.ups.append(layers.conv_transpose(spatial_dims, widths[i + 1], widths[i], 2, 2))
            self.up_blocks.append(aggregation(widths[i]) if j < attention_up_levels
                                  else ResidualBlock(spatial_dims, widths[i], widths[i], norm=norm, act=act))
        self.output_block = nn.Sequential(
            layers.norm(norm, spatial_dims, widths[0]), layers.activation(act, widths[0]),
            layers.dropout(spatial_dims, dropout, channelwise=False),
            layers.conv(spatial_dims, widths[0], num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = self.input_block(x)
        skips = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.bottom(x)
        for i, (up, block) in enumerate(zip(self.ups, self.up_blocks, strict=True)):
            x = block(up(x) + skips[-2 - i])  # skips are summed
        return self.output_block(x)


@register_model(
    "nonlocal_unet",
    paper="Wang et al. 2020, Non-local U-Nets for Biomedical Image Segmentation (AAAI)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=8,
    small_options={"features": 4, "depth": 2, "num_heads": 2},
    aliases=("non_local_unet",),
)
def build_nonlocal_unet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any
                        ) -> NonLocalUNet:
    """Build :class:`NonLocalUNet` (see its docstring for the options)."""
    return NonLocalUNet(spatial_dims, in_channels, num_classes, **options)
