"""R2U-Net (Alom et al. 2018, "Recurrent Residual Convolutional Neural Network based on U-Net").

A U-Net whose level blocks are recurrent residual convolutional units (Fig. 3-4) in the encoder and
the decoder; the topology follows the reference implementation (LeeJunHyun/Image_Segmentation,
``R2U_Net``): widths 64-1024, up-sampling then a 3x3 conv-norm-ReLU, concatenated skips.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.blocks.heads import SegmentationHead
from medseg.blocks.recurrent import RecurrentResidualUnit
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model
from medseg.models.unet import level_widths


class RecurrentDecoderLevel(nn.Module):
    """One decoder level: 2x up-sampling and a 3x3 conv-norm-ReLU, concatenation with the skip, RRCU."""

    def __init__(self, spatial_dims: int, skip_channels: int, below_channels: int, t: int = 2,
                 norm: str | None = "batch", mode: str = "nearest", residual: bool = True) -> None:
        super().__init__()
        self.up = nn.Sequential(
            layers.upsample(spatial_dims, 2, mode),
            ConvNormAct(spatial_dims, below_channels, skip_channels, 3, norm=norm, bias=True))
        self.block = RecurrentResidualUnit(spatial_dims, 2 * skip_channels, skip_channels, t, norm=norm,
                                           residual=residual)

    def forward(self, skip: Tensor, below: Tensor) -> Tensor:
        return self.block(torch.cat([skip, self.up(below)], dim=1))


class R2UNet(SegmentationModel):
    """R2U-Net (Alom et al. 2018, Fig. 1 with the RRCU of Fig. 4d), 2D and 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        features: width of the finest level, doubled per level (64 gives 64-1024 as in ``R2U_Net``).
        depth: number of down-samplings (inputs must be multiples of ``2 ** depth``).
        t: recurrent steps of every recurrent conv layer (t = 2: one conv and two recurrent convs).
        norm: normalisation of the convs (default batch norm).
        upsample_mode: decoder up-sampling before its conv (``nearest`` as in the reference code, or
            ``linear``).
        residual: add the residual connection of each unit (False gives RU-Net).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 features: int = 64, depth: int = 4, t: int = 2,
                 norm: str | None = "batch", upsample_mode: str = "nearest", residual: bool = True) -> None:
        super().__init__()
        widths = level_widths(features, depth)
        self.spatial_dims = spatial_dims
        self.input_multiple = 2**depth
        self.encoder = nn.ModuleList(
            RecurrentResidualUnit(spatial_dims, c_in, c_out, t, norm=norm, residual=residual)
            for c_in, c_out in zip((in_channels, *widths[:-1]), widths, strict=True))
        self.pool = layers.max_pool(spatial_dims, 2)
        self.decoder = nn.ModuleList(
            RecurrentDecoderLevel(spatial_dims, widths[i], widths[i + 1], t, norm, upsample_mode,
                                  residual)
            for i in reversed(range(depth)))
        self.head = SegmentationHead(spatial_dims, widths[0], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        skips: list[Tensor] = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        for i, level in enumerate(self.decoder):
            h = level(skips[-2 - i], h)
        return self.head(h)


@register_model(
    "r2unet",
    paper="Alom et al. 2018, Recurrent Residual Convolutional Neural Network based on U-Net (R2U-Net) "
          "for Medical Image Segmentation (arXiv:1802.06955)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=16,
    small_options={"features": 4},
)
def build_r2unet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> R2UNet:
    """Build :class:`R2UNet` (see its docstring for the options)."""
    return R2UNet(spatial_dims, in_channels, num_classes, **options)
