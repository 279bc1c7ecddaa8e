"""PSPNet (Zhao et al. 2017, "Pyramid Scene Parsing Network", Fig. 3 and Sec. 3.2-4.1), 2D and 3D.

A dilated ResNet (output stride 8) gives the top feature map; the pyramid pooling module
(:class:`~medseg.blocks.context.PyramidPooling`, bins 1/2/3/6, each 1x1 conv-BN-ReLU to 2048/4 channels,
concatenated with the input) feeds a 3x3 conv-BN-ReLU (512) with dropout 0.1 and a 1x1 classifier, whose
logits are up-sampled to the input size. In train mode an auxiliary head on layer3 (3x3 conv-BN-ReLU 256,
dropout 0.1, 1x1) adds deep supervision with weight 0.4 (Sec. 4.1): it is returned as
``SegOutput.aux[0]`` (at the input size) and the weight reaches the loss through the deep-supervision
wrapper: the default loss ``pspnet`` is CE(main) + 0.4 CE(aux) (:func:`medseg.losses.deep_supervision.
pspnet_loss`), and any other loss gets it with ``loss.deep_supervision: true`` and
``loss.deep_supervision_weights: [1.0, 0.4]`` (the preset does so).

Checked against the official code (hszhao/semseg ``model/pspnet.py`` and ``model/resnet.py``): its ResNet
has the deep 3x3 stem 64-64-128 (``deep_base``; our ``resnet50s`` / ``resnet101s``, timm's names), and every
block of layer3 / layer4 is dilated 2 / 4, the first included (``official_dilation``; torchvision and timm
keep the previous dilation in a stage's first block). Up-sampling uses ``align_corners=True`` as there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.context import PyramidPooling
from medseg.blocks.conv import ConvNormAct
from medseg.blocks.residual import BottleneckBlock, ResidualBlock
from medseg.encoders.base import Encoder, build_atrous_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.outputs import SegOutput

DEFAULT_ENCODER = {2: "resnet50s", 3: "resnet50s"}
AUX_WEIGHT = 0.4
"""The auxiliary loss weight of the paper (Sec. 4.1) and the official ``aux_weight``."""


def dilate_first_blocks(encoder: Encoder) -> None:
    """Give the first block of every dilated ResNet stage the stage's dilation (hszhao/semseg's pattern).

    Our ResNet keeps the previous dilation in the (formerly strided) 3x3 conv of a dilated stage's first
    block, as torchvision and timm; the official PSPNet sets every 3x3 of layer3 to dilation 2 and of layer4
    to 4. Encoders without ``dilations`` or without ResNet blocks are left as they are.
    """
    dilations = getattr(encoder, "dilations", None)
    if dilations is None:
        return
    for level, dilation in enumerate(dilations[1:], start=1):
        stage = getattr(encoder, f"layer{level}", None)
        if dilation == 1 or not isinstance(stage, nn.Sequential) or len(stage) == 0:
            continue
        first = stage[0]
        conv = first.conv2 if isinstance(first, BottleneckBlock) else \
            first.conv1 if isinstance(first, ResidualBlock) else None
        if isinstance(conv, (nn.Conv2d, nn.Conv3d)):
            conv.dilation = (dilation,) * (conv.weight.dim() - 2)
            conv.padding = (dilation,) * (conv.weight.dim() - 2)


class PSPNet(SegmentationModel):
    """PSPNet over a registered encoder, 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        encoder: a registered encoder name or an :class:`Encoder` (default ``resnet50s``, the official
            deep-stem ResNet-50; ``resnet101s`` for PSPNet-101).
        encoder_options: options of a named encoder (``output_stride`` is set from ``output_stride``).
        encoder_weights: a local weight file for the encoder (timm ``resnet50s`` or hszhao's
            ``resnet50_v2.pth``).
        output_stride: the encoder's output stride (8 in the paper; 16 is cheaper).
        bins: pyramid pooling bin sizes.
        channels: width of the 3x3 conv after the pyramid (512).
        aux_channels: width of the auxiliary head's 3x3 conv (256).
        dropout: channel dropout before each classifier (0.1).
        deep_supervision: build the auxiliary head on the second-to-last encoder level (layer3) and return
            its logits in train mode (the reference counts include it).
        official_dilation: dilate every block of the dilated stages (see :func:`dilate_first_blocks`).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, output_stride: int = 8,
                 bins: Sequence[int] = (1, 2, 3, 6), channels: int = 512, aux_channels: int = 256,
                 dropout: float = 0.1, deep_supervision: bool = True, official_dilation: bool = True) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if min(channels, aux_channels) < 1 or not bins or min(bins) < 1:
            raise MedsegError(f"PSPNet channels, aux_channels and bins must be positive, got {channels}, "
                              f"{aux_channels} and {list(bins)}")
        self.spatial_dims = spatial_dims
        self.encoder = build_atrous_encoder(encoder, encoder_options, encoder_weights, in_channels,
                                            spatial_dims, output_stride, DEFAULT_ENCODER)
        if official_dilation:
            dilate_first_blocks(self.encoder)
        if len(self.encoder.channels) < 2:
            raise MedsegError("PSPNet needs an encoder with at least 2 levels (for the auxiliary head)")
        self.input_multiple = self.encoder.input_multiple
        top = self.encoder.channels[-1]
        # Fig. 3: pyramid pooling on the top feature, then the final conv and the classifier
        self.ppm = PyramidPooling(spatial_dims, top, bins)
        self.head = nn.Sequential(
            ConvNormAct(spatial_dims, self.ppm.out_channels, channels, 3, dropout=dropout),
            layers.conv(spatial_dims, channels, num_classes, 1, padding=0))
        # Sec. 3.3 / 4.1: the auxiliary loss on res4b22 (layer3), training only
        self.aux_head: nn.Module | None = None
        if deep_supervision:
            self.aux_head = nn.Sequential(
                ConvNormAct(spatial_dims, self.encoder.channels[-2], aux_channels, 3, dropout=dropout),
                layers.conv(spatial_dims, aux_channels, num_classes, 1, padding=0))

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        size = list(x.shape[2:])
        features = self.encoder(x)
        logits = layers.resize_to(self.head(self.ppm(features[-1])), size, align_corners=True)
        if self.training and self.aux_head is not None:
            aux = layers.resize_to(self.aux_head(features[-2]), size, align_corners=True)
            return SegOutput(logits, aux=[aux])
        return logits


OFFICIAL_CODE = "hszhao/semseg model/pspnet.py"


@register_model(
    "pspnet",
    paper="Zhao et al. 2017, Pyramid Scene Parsing Network (CVPR)",
    dims=(2, 3),
    default_loss="pspnet",
    input_multiple=8,
    references=[
        Reference(options={"in_channels": 3, "num_classes": 19}, params=49_080_038,
                  source=f"{OFFICIAL_CODE} PSPNet(layers=50, classes=19), train mode (with aux 2,364,691)"),
        Reference(options={"in_channels": 3, "num_classes": 19, "encoder": "resnet101s"}, params=68_072_166,
                  source=f"{OFFICIAL_CODE} PSPNet(layers=101, classes=19), train mode (with aux)"),
    ],
    small_options={"encoder": "resnet18", "encoder_options": {"widths": (8, 8, 16, 16), "stem_width": 8,
                                                              "depths": (1, 1, 1, 1)},
                   "channels": 8, "aux_channels": 8},
)
def build_pspnet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> PSPNet:
    """Build :class:`PSPNet` (see its docstring for the options)."""
    return PSPNet(spatial_dims, in_channels, num_classes, **options)
