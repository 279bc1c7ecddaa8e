"""DenseVoxelNet (Yu et al., MICCAI 2017, "Automatic 3D Cardiovascular MR Segmentation with
Densely-Connected Volumetric ConvNets"), 3D only.

Fig. 1 of the paper: a 3x3x3 stride-2 conv (the one down-sampling stage), two dense blocks of
BN-ReLU-3x3x3 conv-dropout layers (12 layers of growth 12 each) joined by a transition (BN-ReLU-1x1x1
conv), then BN-ReLU, a 1x1x1 conv and a stride-2 transposed conv back to the input resolution, and a
1x1x1 conv to the logits. In training mode an auxiliary classifier on the first dense block (transposed
conv up, 1x1x1 conv) adds deep supervision, as the paper's auxiliary side path. Here the transition
keeps the resolution, so inputs need only be even.
"""

from __future__ import annotations

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.dense import DenseBlock, NormActConv
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model
from medseg.outputs import SegOutput


class DenseVoxelNet(SegmentationModel):
    """DenseVoxelNet (Yu et al. 2017, Fig. 1), 3D.

    Args:
        spatial_dims: 3 (the only value).
        in_channels: image channels.
        num_classes: output channels.
        stem_channels: width of the stride-2 conv (16).
        growth_rate: growth of the dense layers (12).
        layers_per_block: dense layers in each of the two blocks (12).
        transition_channels: output of the transition 1x1 conv (default: the first block's output).
        up_channels: width of the up-sampling path (64).
        dropout: dropout in the dense layers (0.2).
        aux: the auxiliary classifier on the first dense block (training mode only).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, stem_channels: int = 16,
                 growth_rate: int = 12, layers_per_block: int = 12, transition_channels: int | None = None,
                 up_channels: int = 64, dropout: float = 0.2, aux: bool = True) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise MedsegError(f"DenseVoxelNet is 3D only, got spatial_dims {spatial_dims}")
        self.spatial_dims = 3
        self.input_multiple = 2
        self.aux = aux
        self.stem = layers.conv(3, in_channels, stem_channels, 3, stride=2, padding=1, bias=False)
        self.block1 = DenseBlock(3, stem_channels, layers_per_block, growth_rate, dropout=dropout, bias=False)
        mid = transition_channels or self.block1.out_channels
        self.transition = NormActConv(3, self.block1.out_channels, mid, 1)
        self.block2 = DenseBlock(3, mid, layers_per_block, growth_rate, dropout=dropout, bias=False)
        self.up = nn.Sequential(NormActConv(3, self.block2.out_channels, up_channels, 1),
                                layers.conv_transpose(3, up_channels, up_channels, 4, 2, padding=1),
                                layers.activation("relu"))
        self.head = layers.conv(3, up_channels, num_classes, 1, padding=0)
        self.aux_head = nn.Sequential(layers.conv_transpose(3, self.block1.out_channels, up_channels, 4, 2,
                                                            padding=1),
                                      layers.activation("relu"),
                                      layers.conv(3, up_channels, num_classes, 1, padding=0)) if aux else None

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        f1 = self.block1(self.stem(x))
        logits = self.head(self.up(self.block2(self.transition(f1))))
        if self.training and self.aux_head is not None:
            return SegOutput(logits=logits, aux=[self.aux_head(f1)])
        return logits


@register_model(
    "densevoxelnet",
    paper="Yu et al. 2017, Automatic 3D Cardiovascular MR Segmentation with Densely-Connected Volumetric "
          "ConvNets (MICCAI)",
    dims=(3,),
    default_loss="dice_ce",
    input_multiple=2,
    defaults={"spatial_dims": 3},
    small_options={"stem_channels": 4, "growth_rate": 4, "layers_per_block": 2, "up_channels": 8},
)
def build_densevoxelnet(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> DenseVoxelNet:
    """Build :class:`DenseVoxelNet` (see its docstring for the options)."""
    return DenseVoxelNet(spatial_dims, in_channels, num_classes, **options)
