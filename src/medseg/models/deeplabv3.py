"""DeepLabV3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation") and
DeepLabV3+ (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution").

DeepLabV3 (Sec. 3.3, Fig. 5): an atrous encoder (ResNet, or Xception) at output stride 16 (or 8), ASPP
(:class:`~medseg.blocks.context.ASPP`: 1x1 + three 3x3 atrous convs at rates 6/12/18, doubled at output
stride 8, + image pooling, 256 channels each, concatenated, 1x1 conv 256 with BN, ReLU and dropout), a
1x1 conv to the classes and bilinear up-sampling to the input. ``head_conv`` adds torchvision's extra 3x3
conv-BN-ReLU of ``DeepLabHead``; ``deep_supervision`` torchvision's auxiliary ``FCNHead`` (its ``aux_loss``)
on the second-coarsest level (layer3), returned in train mode as ``SegOutput.aux`` (the option name is the
one every zoo model uses for auxiliary outputs, and what ``loss.deep_supervision`` switches on).

DeepLabV3+ (Sec. 3.2, Fig. 2): the encoder's stride-4 features go through a 1x1 conv to 48 channels,
are concatenated with the ASPP output up-sampled to their size (x4 at output stride 16), refined by two
3x3 convs of 256 and classified; the logits are up-sampled (x4) to the input. ``separable`` makes the
ASPP's atrous convs and the decoder's 3x3 convs depthwise-separable.

Both take a ``crf`` option (the dense CRF of DeepLab V1/V2, eval mode only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.context import ASPP
from medseg.blocks.conv import ConvNormAct, DepthwiseSeparableConv
from medseg.blocks.crf import DenseCRF, build_crf
from medseg.blocks.heads import FCNHead
from medseg.encoders.base import Encoder, build_atrous_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.outputs import SegOutput

PAPER_V3 = "Chen et al. 2017, Rethinking Atrous Convolution for Semantic Image Segmentation"
PAPER_V3PLUS = ("Chen et al. 2018, Encoder-Decoder with Atrous Separable Convolution for Semantic Image "
                "Segmentation")
OUTPUT_STRIDES = (8, 16)


class DeepLabV3(SegmentationModel):
    """DeepLabV3 over any registered encoder that takes ``output_stride`` (ResNet, Xception), 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        encoder: a registered encoder name or instance (default ``resnet101`` as the paper).
        encoder_options: options of a named encoder.
        encoder_weights: a local weight file for the encoder.
        output_stride: 16 (default) or 8; the encoder's last strides become dilation.
        rates: the ASPP's atrous rates at output stride 16 (6, 12, 18), scaled by ``16 / output_stride``.
        aspp_channels: width of the ASPP branches and projection (256).
        aspp_dropout: dropout after the ASPP projection (0.5 as torchvision; the TF code uses 0.1).
        separable: depthwise-separable atrous convs in the ASPP (and the V3+ decoder).
        head_conv: torchvision's 3x3 conv-BN-ReLU between the ASPP and the classifier.
        deep_supervision: torchvision's auxiliary FCN head on the second-coarsest level (``aux_loss``),
            returned in train mode.
        norm: the normalisation of the head (``batch``; ``group`` for batches of 1).
        crf: fully connected CRF in eval mode (:func:`~medseg.blocks.crf.build_crf`: True or options).
    """

    default_encoder = {2: "resnet101", 3: "resnet50"}

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, output_stride: int = 16,
                 rates: Sequence[int] = (6, 12, 18), aspp_channels: int = 256, aspp_dropout: float = 0.5,
                 separable: bool = False, head_conv: bool = False, deep_supervision: bool = False,
                 norm: str = "batch", crf: bool | dict[str, Any] | DenseCRF | None = None) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if output_stride not in OUTPUT_STRIDES:
            raise MedsegError(f"DeepLab output_stride must be 8 or 16, got {output_stride!r}")
        if aspp_channels < 1:
            raise MedsegError(f"aspp_channels must be >= 1, got {aspp_channels}")
        self.spatial_dims = spatial_dims
        self.encoder = build_atrous_encoder(encoder, encoder_options, encoder_weights, in_channels,
                                            spatial_dims, output_stride, self.default_encoder)
        self.input_multiple = self.encoder.input_multiple
        self.separable = separable
        self.norm = norm
        scaled = [int(r) * 16 // output_stride for r in rates]
        self.aspp = ASPP(spatial_dims, self.encoder.channels[-1], aspp_channels, scaled, aspp_dropout,
                         separable=separable, norm=norm)
        self.head = ConvNormAct(spatial_dims, aspp_channels, aspp_channels, 3, norm=norm) if head_conv \
            else nn.Identity()
        self.classifier = layers.conv(spatial_dims, self.decoder_channels(aspp_channels), num_classes, 1)
        self.aux_head = FCNHead(spatial_dims, self.encoder.channels[-2], num_classes, norm=norm) \
            if deep_supervision else None
        self.crf = build_crf(crf)

    def decoder_channels(self, aspp_channels: int) -> int:
        """Channels entering the classifier (V3: the ASPP's)."""
        return aspp_channels

    def decode(self, features: list[Tensor]) -> Tensor:
        """Features at the classifier's resolution (V3: the ASPP output at the output stride)."""
        return self.head(self.aspp(features[-1]))

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        size = list(x.shape[2:])
        features = self.encoder(x)
        logits = layers.resize_to(self.classifier(self.decode(features)), size)
        if self.training and self.aux_head is not None:
            return SegOutput(logits, aux=[layers.resize_to(self.aux_head(features[-2]), size)])
        if self.crf is not None and not self.training:
            logits = self.crf(logits, x)
        return logits


class DeepLabV3Plus(DeepLabV3):
    """DeepLabV3+: DeepLabV3's encoder and ASPP plus the decoder of Fig. 2 (see the module docstring).

    Takes :class:`DeepLabV3`'s options (default encoder ``xception65`` as the paper, output stride 16)
    and:

    Args:
        low_level_channels: the 1x1 reduction of the stride-4 features (48).
        decoder_channels: width of the two 3x3 decoder convs (256).
        low_level_reduction: the reduction of the encoder level used as low-level features (4).
    """

    default_encoder = {2: "xception65", 3: "resnet50"}

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, *,
                 low_level_channels: int = 48, decoder_channels: int = 256, low_level_reduction: int = 4,
                 **options: Any) -> None:
        if "head_conv" in options:
            raise MedsegError("deeplabv3plus: head_conv is a DeepLabV3 option (the decoder replaces it)")
        self._decoder_width = decoder_channels
        super().__init__(spatial_dims, in_channels, num_classes, **options)
        reductions = list(self.encoder.reductions)
        if low_level_reduction not in reductions:
            raise MedsegError(f"deeplabv3plus: the encoder has no level at reduction {low_level_reduction} "
                              f"(its reductions: {reductions})")
        self.low_level_index = reductions.index(low_level_reduction)
        self.reduce = ConvNormAct(spatial_dims, self.encoder.channels[self.low_level_index],
                                  low_level_channels, 1, norm=self.norm)
        fused = self.aspp.out_channels + low_level_channels

        def conv3x3(cin: int) -> nn.Module:
            if self.separable:
                return DepthwiseSeparableConv(spatial_dims, cin, decoder_channels, 3, norm=self.norm)
            return ConvNormAct(spatial_dims, cin, decoder_channels, 3, norm=self.norm)

        self.fuse = nn.Sequential(conv3x3(fused), conv3x3(decoder_channels))

    def decoder_channels(self, aspp_channels: int) -> int:
        return self._decoder_width

    def decode(self, features: list[Tensor]) -> Tensor:
        low = self.reduce(features[self.low_level_index])
        high = layers.resize_to(self.aspp(features[-1]), list(low.shape[2:]))
        return self.fuse(torch.cat([high, low], dim=1))


_SMALL_RESNET = {"encoder": "resnet18",
                 "encoder_options": {"widths": (4, 4, 8, 8), "depths": (1, 1, 1, 1), "stem_width": 4},
                 "aspp_channels": 8}


@register_model(
    "deeplabv3",
    paper=PAPER_V3,
    dims=(2, 3),
    default_loss="ce",
    input_multiple=16,
    references=[
        Reference(options={"in_channels": 3, "num_classes": 21, "encoder": "resnet50", "output_stride": 8,
                           "head_conv": True, "deep_supervision": True},
                  params=42_004_074,
                  source="classic-zoo spec: torchvision deeplabv3_resnet50(num_classes=21, aux_loss=True)"),
        Reference(options={"in_channels": 3, "num_classes": 21, "encoder": "resnet101", "output_stride": 8,
                           "head_conv": True, "deep_supervision": True},
                  params=60_996_202, source="torchvision deeplabv3_resnet101(num_classes=21, aux_loss=True), "
                                            "its documented num_params"),
    ],
    small_options={**_SMALL_RESNET, "deep_supervision": True, "aspp_dropout": 0.0},
)
def build_deeplabv3(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> DeepLabV3:
    """Build :class:`DeepLabV3` (see its docstring for the options)."""
    return DeepLabV3(spatial_dims, in_channels, num_classes, **options)


@register_model(
    "deeplabv3plus",
    paper=PAPER_V3PLUS,
    dims=(2, 3),
    default_loss="ce",
    input_multiple=16,
    aliases=("deeplabv3+",),
    small_options={**_SMALL_RESNET, "low_level_channels": 4, "decoder_channels": 8, "separable": True,
                   "aspp_dropout": 0.0},
)
def build_deeplabv3plus(*, in_channels: int, num_classes: int, spatial_dims: int,
                        **options: Any) -> DeepLabV3Plus:
    """Build :class:`DeepLabV3Plus` (see its docstring for the options)."""
    return DeepLabV3Plus(spatial_dims, in_channels, num_classes, **options)
