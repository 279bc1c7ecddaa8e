"""DeepLab V2 (Chen et al. 2017, "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets,
Atrous Convolution, and Fully Connected CRFs", TPAMI).

Sec. 3.1 and Fig. 4 / 7: ResNet-101 with atrous convolution at output stride 8 (layer3 dilated by 2,
layer4 by 4: :class:`~medseg.encoders.resnet.ResNetEncoder` with ``output_stride=8``), then ASPP-L:
four parallel 3x3 atrous convs (rates 6, 12, 18, 24) from the 2048 features straight to the class scores,
summed (:class:`~medseg.blocks.context.SummedASPP`), bilinear up-sampling to the input. The VGG-16
variant (each branch fc6-fc7-fc8 of 1024 channels) is ``encoder="vgg16", branch_channels=1024``. The
multi-scale input fusion (MSC) of the paper's training is not included. The fully connected CRF (Sec. 3.2)
is the ``crf`` option, applied in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from medseg import layers
from medseg.blocks.context import SummedASPP
from medseg.blocks.crf import DenseCRF, build_crf
from medseg.encoders.base import Encoder, build_atrous_encoder
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model

PAPER = ("Chen et al. 2017, DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous "
         "Convolution, and Fully Connected CRFs")


class DeepLabV2(SegmentationModel):
    """DeepLab V2: atrous ResNet-101 (output stride 8), ASPP-L, optional dense CRF.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        encoder: a registered encoder name or instance (default ``resnet101``, built with ``output_stride``).
        encoder_options: options of a named encoder.
        encoder_weights: a local weight file for the encoder.
        output_stride: 8 (the paper's) or 16.
        rates: the ASPP-L rates (6, 12, 18, 24).
        branch_channels: None (ResNet: one conv per branch) or the fc6/fc7 width of the VGG-16 branches.
        dropout: the VGG branches' dropout (0.5).
        crf: fully connected CRF in eval mode (:func:`~medseg.blocks.crf.build_crf`: True or options).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, output_stride: int = 8,
                 rates: Sequence[int] = (6, 12, 18, 24), branch_channels: int | None = None,
                 dropout: float = 0.5, crf: bool | dict[str, Any] | DenseCRF | None = None) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        self.spatial_dims = spatial_dims
        self.encoder = build_atrous_encoder(encoder, encoder_options, encoder_weights, in_channels,
                                            spatial_dims, output_stride, {2: "resnet101", 3: "resnet101"})
        self.input_multiple = self.encoder.input_multiple
        self.aspp = SummedASPP(spatial_dims, self.encoder.channels[-1], num_classes, rates, branch_channels,
                               dropout)
        self.crf = build_crf(crf)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        logits = layers.resize_to(self.aspp(self.encoder(x)[-1]), list(x.shape[2:]))
        if self.crf is not None and not self.training:
            logits = self.crf(logits, x)
        return logits


@register_model(
    "deeplabv2",
    paper=PAPER,
    dims=(2, 3),
    default_loss="ce",
    input_multiple=8,
    references=[
        Reference(options={"in_channels": 3, "num_classes": 21}, params=44_048_532,
                  source="DeepLab v2 ResNet-101 prototxt layer shapes: ResNet-101 trunk 42,500,160 + "
                         "fc1_voc12_c0..c3 (3x3x2048x21 with bias), counted"),
    ],
    small_options={"encoder": "resnet18",
                   "encoder_options": {"widths": (4, 4, 8, 8), "depths": (1, 1, 1, 1), "stem_width": 4},
                   "rates": (1, 2)},
)
def build_deeplabv2(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> DeepLabV2:
    """Build :class:`DeepLabV2` (see its docstring for the options)."""
    return DeepLabV2(spatial_dims, in_channels, num_classes, **options)
