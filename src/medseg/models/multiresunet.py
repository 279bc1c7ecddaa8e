"""MultiResUNet (Ibtehaz & Rahman 2020, "MultiResUNet: Rethinking the U-Net architecture for multimodal
biomedical image segmentation", Neural Networks 121).

Fig. 6: the U-Net of width 32-512 with every pair of 3x3 convs replaced by a MultiRes block (a chain of
three 3x3 convs approximating 3x3, 5x5 and 7x7 convs, concatenated, plus a 1x1 residual; alpha = 1.67) and
every skip by a Res path of 4, 3, 2, 1 residual conv units (finest level first). Decoder: 2x2 transposed
conv to the U-Net width, concatenation with the Res path output, MultiRes block. Layer order follows the
official Keras code (nibtehaz/MultiResUNet ``tensorflow/MultiResUNet.py``); 3D as its ``MultiResUNet3D``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.heads import SegmentationHead
from medseg.blocks.multires import MultiResBlock, ResPath
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.models.unet import level_widths


class MultiResUNet(SegmentationModel):
    """MultiResUNet (Fig. 6), 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        features: the U-Net width U of the first level (32), doubled per level; a MultiRes block of level
            U has ``int(1.67 U * 0.167) + int(1.67 U * 0.333) + int(1.67 U * 0.5)`` channels (51 for 32).
        depth: number of down-samplings (4); the Res path of level i has ``depth - i`` units.
        alpha: the width factor of the MultiRes blocks (1.67: about the parameters of the U-Net).
        norm, act: normalisation and activation of every conv (batch norm and ReLU).
        conv_bias: biases in the convs followed by a norm (the official PyTorch port has them, the Keras
            code not).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, features: int = 32,
                 depth: int = 4, alpha: float = 1.67, norm: str | None = "batch", act: str | None = "relu",
                 conv_bias: bool = False) -> None:
        super().__init__()
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.input_multiple = 2**depth
        widths = level_widths(features, depth)
        self.encoder = nn.ModuleList()
        self.res_paths = nn.ModuleList()
        channels = in_channels
        for level, width in enumerate(widths):
            block = MultiResBlock(spatial_dims, channels, width, alpha, norm, act, conv_bias)
            self.encoder.append(block)
            channels = block.out_channels
            if level < depth:
                self.res_paths.append(ResPath(spatial_dims, channels, depth - level, norm, act, conv_bias))
        self.pool = layers.max_pool(spatial_dims, 2)
        skips = [block.out_channels for block in self.encoder[:-1]]
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(depth)):
            self.ups.append(layers.conv_transpose(spatial_dims, channels, widths[level], 2, 2))
            block = MultiResBlock(spatial_dims, widths[level] + skips[level], widths[level], alpha, norm, act,
                                  conv_bias)
            self.decoder.append(block)
            channels = block.out_channels
        self.head = SegmentationHead(spatial_dims, channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        skips: list[Tensor] = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            if level < len(self.res_paths):
                skips.append(self.res_paths[level](x))
        for i, (up, block) in enumerate(zip(self.ups, self.decoder, strict=True)):
            x = block(torch.cat([up(x), skips[-1 - i]], dim=1))
        return self.head(x)


OFFICIAL = "nibtehaz/MultiResUNet"


@register_model(
    "multiresunet",
    paper="Ibtehaz & Rahman 2020, MultiResUNet: Rethinking the U-Net architecture for multimodal biomedical "
          "image segmentation (Neural Networks 121)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=16,
    references=[
        Reference(options={"in_channels": 3, "num_classes": 2, "spatial_dims": 2, "conv_bias": True},
                  params=8_920_415,
                  source=f"{OFFICIAL} pytorch/MultiResUNet.py MultiResUnet(3, 1) (2 outputs; counted from "
                         "the code: ours lacks only the 4 parameters of its final batch norm)"),
        Reference(options={"in_channels": 3, "num_classes": 1, "spatial_dims": 2},
                  params=8_905_119,
                  source=f"{OFFICIAL} tensorflow/MultiResUNet.py MultiResUnet(h, w, 3), trainable parameters "
                         "counted from the code (its conv2d_bn batch norms have no scale: +7,620 here)"),
    ],
    small_options={"features": 4},
)
def build_multiresunet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any
                       ) -> MultiResUNet:
    """Build :class:`MultiResUNet` (see its docstring for the options)."""
    return MultiResUNet(spatial_dims, in_channels, num_classes, **options)
