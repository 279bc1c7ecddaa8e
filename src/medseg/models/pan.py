"""PAN, the Pyramid Attention Network (Li et al. 2018, BMVC, Fig. 1 and Sec. 3), 2D and 3D.

A ResNet (dilated last stage, output stride 16) gives four feature maps; Feature Pyramid Attention
(:class:`~medseg.blocks.pyramid_attention.FeaturePyramidAttention`) turns the top one into ``channels``
context features, and Global Attention Upsample modules
(:class:`~medseg.blocks.pyramid_attention.GlobalAttentionUpsample`) decode through layer3, layer2 and layer1,
each weighting the low-level feature by the global context of the high-level one. A 3x3 classifier on the
1/4 map gives the logits, up-sampled to the input size. The authors released no code; see the blocks'
module for the choices where the paper is silent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.pyramid_attention import FeaturePyramidAttention, GlobalAttentionUpsample
from medseg.encoders.base import Encoder, build_atrous_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model

DEFAULT_ENCODER = {2: "resnet101", 3: "resnet101"}


class PAN(SegmentationModel):
    """Pyramid Attention Network over a registered encoder, 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        encoder: a registered encoder name or an :class:`Encoder` (default ResNet-101, the paper's).
        encoder_options: options of a named encoder (``output_stride`` is set from ``output_stride``).
        encoder_weights: a local weight file for the encoder.
        output_stride: the encoder's output stride (16: the last stage dilated, as the paper's res5b).
        channels: width of the FPA output and of every GAU (256).
        pyramid_channels: width of the FPA pyramid (1: a spatial attention map).
        kernel_sizes: kernels of the FPA pyramid levels, finest first (7, 5, 3).
        decoder_levels: how many encoder levels below the top the GAUs decode (3: layer3, layer2, layer1).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, output_stride: int = 16, channels: int = 256,
                 pyramid_channels: int = 1, kernel_sizes: Sequence[int] = (7, 5, 3),
                 decoder_levels: int = 3) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if channels < 1:
            raise MedsegError(f"PAN channels must be >= 1, got {channels}")
        self.spatial_dims = spatial_dims
        self.encoder = build_atrous_encoder(encoder, encoder_options, encoder_weights, in_channels,
                                            spatial_dims, output_stride, DEFAULT_ENCODER)
        widths = self.encoder.channels
        if not 0 <= decoder_levels < len(widths):
            raise MedsegError(f"PAN decoder_levels must lie in 0..{len(widths) - 1}, got {decoder_levels}")
        self.decoder_levels = decoder_levels
        self.input_multiple = self.encoder.input_multiple
        self.fpa = FeaturePyramidAttention(spatial_dims, widths[-1], channels, pyramid_channels, kernel_sizes)
        # coarse to fine: GAU k decodes level -(k + 2) with the previous output as the high-level feature
        self.gau = nn.ModuleList(GlobalAttentionUpsample(spatial_dims, widths[-(k + 2)], channels, channels)
                                 for k in range(decoder_levels))
        self.classifier = layers.conv(spatial_dims, channels, num_classes, 3)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        features = self.encoder(x)
        out = self.fpa(features[-1])
        for k, gau in enumerate(self.gau):
            out = gau(features[-(k + 2)], out)
        return layers.resize_to(self.classifier(out), list(x.shape[2:]))


@register_model(
    "pan",
    paper="Li et al. 2018, Pyramid Attention Network for Semantic Segmentation (BMVC)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=16,
    small_options={"encoder": "resnet18", "encoder_options": {"widths": (8, 8, 16, 16), "stem_width": 8,
                                                              "depths": (1, 1, 1, 1)},
                   "channels": 8},
)
def build_pan(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> PAN:
    """Build :class:`PAN` (see its docstring for the options)."""
    return PAN(spatial_dims, in_channels, num_classes, **options)
