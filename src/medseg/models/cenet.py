"""CE-Net (Gu et al., IEEE TMI 2019, "CE-Net: Context Encoder Network for 2D Medical Image Segmentation").

Fig. 2 of the paper: a ResNet-34 encoder (ImageNet weights in the paper), the context extractor at
its 1/32 output — the dense atrous convolution block (:class:`~medseg.blocks.context.DenseAtrousConv`)
then residual multi-kernel pooling (:class:`~medseg.blocks.context.ResidualMultiKernelPooling`, 4 more
channels) — and a decoder of blocks (1x1 conv to a quarter, 3x3 stride-2 transposed conv, 1x1 conv,
each with BN and ReLU) whose outputs are summed with the encoder features (d4 = D(e4) + e3, ...);
a 4x4 stride-2 transposed conv, two 3x3 convs and the logits at the input size. Wiring from the official
code (Guzaiwang/CE-Net, ``networks/cenet.py``, ``CE_Net_``); any registered encoder works. The RMP pools
need a 1/32 feature of at least 6 per side (inputs >= 192) with the default kernels. 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.context import DenseAtrousConv, ResidualMultiKernelPooling
from medseg.encoders.base import Encoder, build_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model

DEFAULT_ENCODER = {2: "resnet34", 3: "resnet34"}


class CENetDecoderBlock(nn.Sequential):
    """1x1 conv to ``in/4``, 3x3 stride-2 transposed conv, 1x1 conv to ``out_channels``; BN-ReLU after
    each (convs with bias, as the official code)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        mid = in_channels // 4
        super().__init__(
            layers.conv(spatial_dims, in_channels, mid, 1, padding=0),
            layers.norm("batch", spatial_dims, mid),
            layers.activation("relu"),
            layers.conv_transpose(spatial_dims, mid, mid, 3, 2, padding=1, output_padding=1),
            layers.norm("batch", spatial_dims, mid), layers.activation("relu"),
            layers.conv(spatial_dims, mid, out_channels, 1, padding=0),
            layers.norm("batch", spatial_dims, out_channels), layers.activation("relu"))


class CENet(SegmentationModel):
    """CE-Net (Gu et al. 2019, Fig. 2) over a ResNet-family encoder, 2D (the paper) or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        encoder: a registered encoder with five levels at 1/2 .. 1/32 (``resnet34``, the paper) or an
            :class:`Encoder`; only the levels 1/4 .. 1/32 are used.
        encoder_options, encoder_weights: options and a local weight file of a named encoder.
        dac_rates: the three atrous rates of the DAC block (1, 3, 5).
        rmp_kernels: the pooling kernels of the RMP block (2, 3, 5, 6).
        head_channels: width of the final transposed conv and 3x3 conv (32).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, dac_rates: tuple[int, int, int] = (1, 3, 5),
                 rmp_kernels: Sequence[int] = (2, 3, 5, 6), head_channels: int = 32) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        self.spatial_dims = spatial_dims
        self.encoder = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims,
                                     weights=encoder_weights, options=encoder_options,
                                     default=DEFAULT_ENCODER)
        if list(self.encoder.reductions)[-4:] != [4, 8, 16, 32] or len(self.encoder.channels) < 4:
            raise MedsegError(f"CE-Net needs an encoder whose last four levels are at 1/4 .. 1/32, got "
                              f"reductions {list(self.encoder.reductions)}")
        self.input_multiple = 32
        c1, c2, c3, c4 = list(self.encoder.channels)[-4:]
        self.dac = DenseAtrousConv(spatial_dims, c4, dac_rates)
        self.rmp = ResidualMultiKernelPooling(spatial_dims, c4, rmp_kernels)
        self.decoder4 = CENetDecoderBlock(spatial_dims, self.rmp.out_channels, c3)
        self.decoder3 = CENetDecoderBlock(spatial_dims, c3, c2)
        self.decoder2 = CENetDecoderBlock(spatial_dims, c2, c1)
        self.decoder1 = CENetDecoderBlock(spatial_dims, c1, c1)
        self.head = nn.Sequential(
            layers.conv_transpose(spatial_dims, c1, head_channels, 4, 2, padding=1),
            layers.activation("relu"),
            layers.conv(spatial_dims, head_channels, head_channels, 3), layers.activation("relu"),
            layers.conv(spatial_dims, head_channels, num_classes, 3))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        e1, e2, e3, e4 = self.encoder(x)[-4:]
        d4 = self.decoder4(self.rmp(self.dac(e4))) + e3
        d3 = self.decoder3(d4) + e2
        d2 = self.decoder2(d3) + e1
        return layers.resize_to(self.head(self.decoder1(d2)), list(x.shape[2:]))


@register_model(
    "cenet",
    paper="Gu et al. 2019, CE-Net: Context Encoder Network for 2D Medical Image Segmentation (IEEE TMI)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=32,
    references=[Reference(options={"in_channels": 3, "num_classes": 1, "spatial_dims": 2}, params=29_003_093,
                          source="Guzaiwang/CE-Net networks/cenet.py CE_Net_ (ResNet-34 without fc), counted "
                                 "layer by layer in tests/models/test_cenet.py")],
    small_options={"encoder": "resnet18", "encoder_options": {"widths": (8, 16, 32, 64), "stem_width": 8},
                   "rmp_kernels": (1,), "head_channels": 8},
    aliases=("ce_net",),
)
def build_cenet(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> CENet:
    """Build :class:`CENet` (see its docstring for the options)."""
    return CENet(spatial_dims, in_channels, num_classes, **options)
