"""DeepLab V1 (Chen et al. 2015, "Semantic Image Segmentation with Deep Convolutional Nets and Fully
Connected CRFs"), the DeepLab-LargeFOV variant of the official prototxt.

Sec. 3.1 and Table 2: VGG-16 made atrous at output stride 8 (pool4 with stride 1 and conv5 dilated by 2:
:class:`~medseg.encoders.vgg.VGGEncoder` with ``output_stride=8``), pool5 (3x3 max, stride 1) and pool5a
(3x3 average, stride 1), fc6 as a 3x3 conv dilated by 12 to 1024 channels, fc7 a 1x1 conv to 1024 (each
ReLU and dropout 0.5), fc8 a 1x1 conv to the classes, bilinear up-sampling (x8) to the input. The
"DeepLab" (7x7 fc6 at dilation 4, 4096 channels) variant is ``fc6_kernel=7, fc6_dilation=4,
fc_channels=4096``. The fully connected CRF (Sec. 4) is the ``crf`` option, applied in eval mode.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.crf import DenseCRF, build_crf
from medseg.encoders.base import Encoder, build_atrous_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model

PAPER = ("Chen et al. 2015, Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected "
         "CRFs (DeepLab-LargeFOV)")


class DeepLabV1(SegmentationModel):
    """DeepLab-LargeFOV: atrous VGG-16 (output stride 8), fc6-fc7-fc8, optional dense CRF.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        encoder: a registered encoder name or instance (default ``vgg16``, built with ``output_stride``).
        encoder_options: options of a named encoder (e.g. ``widths``).
        encoder_weights: a local weight file for the encoder.
        output_stride: 8 (the paper's) or 16 (the plain VGG-16).
        fc6_kernel, fc6_dilation, fc_channels: fc6's kernel, dilation and fc6/fc7 width (3, 12, 1024).
        dropout: dropout after fc6 and fc7 (0.5).
        crf: fully connected CRF in eval mode (:func:`~medseg.blocks.crf.build_crf`: True or options).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, output_stride: int = 8, fc6_kernel: int = 3,
                 fc6_dilation: int = 12, fc_channels: int = 1024, dropout: float = 0.5,
                 crf: bool | dict[str, Any] | DenseCRF | None = None) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if fc_channels < 1 or fc6_kernel < 1 or fc6_dilation < 1:
            raise MedsegError("fc_channels, fc6_kernel and fc6_dilation must be >= 1")
        self.spatial_dims = spatial_dims
        self.encoder = build_atrous_encoder(encoder, encoder_options, encoder_weights, in_channels,
                                            spatial_dims, output_stride, {2: "vgg16", 3: "vgg16"})
        self.input_multiple = self.encoder.input_multiple
        self.pool5 = layers.max_pool(spatial_dims, 3, 1, padding=1)
        # = AvgPool(3, 1, padding=1) counting the padding; the explicit pad lets 3D maps smaller than the
        # kernel through (avg_pool3d rejects those even when padded)
        pad = nn.ZeroPad2d(1) if spatial_dims == 2 else nn.ZeroPad3d(1)
        self.pool5a = nn.Sequential(pad, layers.avg_pool(spatial_dims, 3, 1))
        self.fc6 = layers.conv(spatial_dims, self.encoder.channels[-1], fc_channels, fc6_kernel,
                               dilation=fc6_dilation)
        self.fc7 = layers.conv(spatial_dims, fc_channels, fc_channels, 1)
        self.fc8 = layers.conv(spatial_dims, fc_channels, num_classes, 1)
        self.relu = layers.activation("relu")
        self.drop = layers.dropout(spatial_dims, dropout)
        self.crf = build_crf(crf)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        y = self.pool5a(self.pool5(self.encoder(x)[-1]))
        y = self.drop(self.relu(self.fc6(y)))
        y = self.drop(self.relu(self.fc7(y)))
        logits = layers.resize_to(self.fc8(y), list(x.shape[2:]))
        if self.crf is not None and not self.training:
            logits = self.crf(logits, x)
        return logits


@register_model(
    "deeplabv1",
    paper=PAPER,
    dims=(2, 3),
    default_loss="ce",
    input_multiple=8,
    references=[
        Reference(options={"in_channels": 3, "num_classes": 21}, params=20_505_429,
                  source="DeepLab-LargeFOV train.prototxt layer shapes: VGG-16 convs 14,714,688 + fc6 "
                         "3x3x512x1024 + fc7 1x1 1024 + fc8 1x1 21 (with biases), counted"),
    ],
    aliases=("deeplab_largefov",),
    small_options={"encoder_options": {"widths": (4, 4, 8, 8, 8)}, "fc_channels": 8, "fc6_dilation": 2,
                   "dropout": 0.0},
)
def build_deeplabv1(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> DeepLabV1:
    """Build :class:`DeepLabV1` (see its docstring for the options)."""
    return DeepLabV1(spatial_dims, in_channels, num_classes, **options)
