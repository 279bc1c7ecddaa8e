"""FCN3D: the fully convolutional network of Long et al. (CVPR 2015) with 3D convolutions.

A VGG-16-like 3D encoder (:class:`~medseg.encoders.vgg.VGGEncoder` in 3D, five blocks, 2x2x2 max pools),
``fc6`` and ``fc7`` as convolutions (3x3x3 and 1x1x1 here; 7x7 and 1x1 in the paper) with ReLU and
dropout, a 1x1x1 score layer, and the FCN-8s decoder: a 2x transposed conv added to the score of pool4,
another 2x added to the score of pool3, and an 8x transposed conv to the input size (learnable,
bilinear-initialised in the paper; default init here). 'Same' padding replaces the paper's 100-voxel
input padding and crops. 3D only (the 2D network is the zoo's FCN-8s).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.encoders.base import Encoder, build_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model


class FCN3D(SegmentationModel):
    """FCN-8s with 3D convolutions; inputs multiples of 32.

    Args:
        spatial_dims: 3 (the only value).
        in_channels: image channels.
        num_classes: output channels.
        encoder: a 5-level VGG-like encoder at 1/1 .. 1/16 before its pools (``vgg16``) or an
            :class:`Encoder`.
        encoder_options, encoder_weights: options (e.g. ``widths``, ``batch_norm``) and a weight file.
        fc_channels: width of fc6 and fc7 (512; 4096 in the 2D paper).
        fc_kernel: kernel of fc6 (3).
        dropout: dropout after fc6 and fc7 (0.5).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, fc_channels: int = 512, fc_kernel: int = 3,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise MedsegError(f"FCN3D is 3D only, got spatial_dims {spatial_dims}")
        self.spatial_dims = 3
        self.input_multiple = 32
        self.encoder = build_encoder(encoder, in_channels=in_channels, spatial_dims=3,
                                     weights=encoder_weights, options=encoder_options,
                                     default={3: "vgg16"})
        if list(self.encoder.reductions)[-3:] != [4, 8, 16]:
            raise MedsegError(f"FCN3D needs an encoder whose last three levels are at 1/4, 1/8, 1/16 before "
                              f"pooling, got reductions {list(self.encoder.reductions)}")
        c3, c4, c5 = list(self.encoder.channels)[-3:]
        self.pool = layers.max_pool(3, 2)
        self.fc = nn.Sequential(layers.conv(3, c5, fc_channels, fc_kernel), layers.activation("relu"),
                                layers.dropout(3, dropout, channelwise=False),
                                layers.conv(3, fc_channels, fc_channels, 1, padding=0),
                                layers.activation("relu"),
                                layers.dropout(3, dropout, channelwise=False))
        self.score_fr = layers.conv(3, fc_channels, num_classes, 1, padding=0)
        self.score_pool4 = layers.conv(3, c4, num_classes, 1, padding=0)
        self.score_pool3 = layers.conv(3, c3, num_classes, 1, padding=0)
        self.up2 = layers.conv_transpose(3, num_classes, num_classes, 4, 2, padding=1, bias=False)
        self.up2_pool4 = layers.conv_transpose(3, num_classes, num_classes, 4, 2, padding=1, bias=False)
        self.up8 = layers.conv_transpose(3, num_classes, num_classes, 16, 8, padding=4, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        relu3, relu4, relu5 = self.encoder(x)[-3:]
        pool3, pool4, pool5 = self.pool(relu3), self.pool(relu4), self.pool(relu5)
        score = self.up2(self.score_fr(self.fc(pool5))) + self.score_pool4(pool4)
        score = self.up2_pool4(score) + self.score_pool3(pool3)
        return self.up8(score)


@register_model(
    "fcn3d",
    paper="Long et al. 2015, Fully Convolutional Networks for Semantic Segmentation (CVPR), with 3D convs",
    dims=(3,),
    default_loss="dice_ce",
    input_multiple=32,
    defaults={"spatial_dims": 3},
    small_options={"encoder_options": {"widths": (4, 4, 8, 8, 8), "convs": (1, 1, 1, 1, 1)}, "fc_channels": 8,
                   "dropout": 0.0},
)
def build_fcn3d(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> FCN3D:
    """Build :class:`FCN3D` (see its docstring for the options)."""
    return FCN3D(spatial_dims, in_channels, num_classes, **options)
