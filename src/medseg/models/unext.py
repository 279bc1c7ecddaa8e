"""UNeXt (Valanarasu & Patel, "UNeXt: MLP-based Rapid Medical Image Segmentation Network", MICCAI 2022).

Fig. 2 of the paper: a convolutional stage of three levels (3x3 conv, BN, 2x2 max-pool, ReLU), a tokenized
MLP stage of two levels (overlapping patch embedding, one shifted-MLP block, LayerNorm), and a mirrored
decoder (3x3 conv, BN, bilinear x2, ReLU, skip added; shifted-MLP blocks on the two token levels), then a
1x1 conv. Five widths ``channels = (c1, c2, c3, c4, c5)``: three conv levels, two token levels.

The default widths are the official code's 16/32/128/160/256 (its 1.47 M parameters and ~0.56 GMACs at
256x256 are the numbers the paper reports); ``unext_s`` is the official UNext_S (8/16/32, tokens 64/128),
``unext_paper`` the widths of the paper's text (32/64/128/160/256). Ours: ``in_channels`` is honoured
(the official code hard-codes 3 input channels) and ``spatial_dims=3`` builds the 3D network (3x3x3 convs,
trilinear up-sampling, shifts along D, H and W; see :class:`medseg.blocks.shifted_mlp.ShiftedMLP`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.blocks.shifted_mlp import OverlapPatchEmbed, ShiftedMLPBlock
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model

UNEXT_CHANNELS = (16, 32, 128, 160, 256)
UNEXT_S_CHANNELS = (8, 16, 32, 64, 128)
UNEXT_PAPER_CHANNELS = (32, 64, 128, 160, 256)


class ConvDownStage(nn.Sequential):
    """Encoder conv level: 3x3 conv (with bias), BN, 2x2 max-pool, ReLU. The ReLU is applied before the
    pool here, which gives the same values (max-pooling commutes with a monotone activation)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm="batch", act="relu", bias=True),
            layers.max_pool(spatial_dims, 2),
        )


class ConvUpStage(nn.Sequential):
    """Decoder conv level: 3x3 conv (with bias), BN (absent on the last level), bilinear/trilinear x2,
    ReLU (after the up-sampling, as in the official code; it does not commute with interpolation)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str | None = "batch"):
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm=norm, act=None, bias=True),
            layers.upsample(spatial_dims, 2, "linear"),
            nn.ReLU(inplace=True),
        )


class TokenizedMLPStage(nn.Sequential):
    """Encoder token level (Fig. 2): overlapping patch embedding (1/2 resolution), one shifted-MLP block,
    LayerNorm over the channels."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, mlp_ratio: float = 1.0,
                 shift_size: int = 5, drop: float = 0.0) -> None:
        super().__init__(
            OverlapPatchEmbed(spatial_dims, in_channels, out_channels),
            ShiftedMLPBlock(spatial_dims, out_channels, mlp_ratio, shift_size, drop),
            layers.ChannelLayerNorm(out_channels, eps=1e-5),
        )


class UNeXt(SegmentationModel):
    """UNeXt: conv stage (3 levels) + tokenized shifted-MLP stage (2 levels), additive skips (Fig. 2).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        channels: the five level widths ``(c1, c2, c3, c4, c5)``; conv levels c1-c3 at 1/2-1/8, token
            levels c4 (1/16) and c5 (bottleneck, 1/32). Default: the official code's 16/32/128/160/256.
        mlp_ratio: hidden width of the shifted MLPs relative to their channels (1 in UNeXt).
        shift_size: channel groups of the shift (5: shifts -2..2).
        drop: dropout inside the shifted MLPs (0 in UNeXt).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 channels: Sequence[int] = UNEXT_CHANNELS, mlp_ratio: float = 1.0, shift_size: int = 5,
                 drop: float = 0.0) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        if len(widths) != 5 or min(widths) < 1:
            raise MedsegError(f"channels {list(channels)}: expected 5 positive widths "
                              "(3 conv levels, 2 token levels)")
        c1, c2, c3, c4, c5 = widths
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.input_multiple = 32
        self.channels = widths
        # encoder: conv stage, then tokenized MLP stage
        self.encoder1 = ConvDownStage(spatial_dims, in_channels, c1)
        self.encoder2 = ConvDownStage(spatial_dims, c1, c2)
        self.encoder3 = ConvDownStage(spatial_dims, c2, c3)
        self.encoder4 = TokenizedMLPStage(spatial_dims, c3, c4, mlp_ratio, shift_size, drop)
        self.bottleneck = TokenizedMLPStage(spatial_dims, c4, c5, mlp_ratio, shift_size, drop)
        # decoder: token levels (conv up, add skip, shifted block, LN), then conv levels
        self.decoder1 = ConvUpStage(spatial_dims, c5, c4)
        self.dblock1 = ShiftedMLPBlock(spatial_dims, c4, mlp_ratio, shift_size, drop)
        self.dnorm1 = layers.ChannelLayerNorm(c4, eps=1e-5)
        self.decoder2 = ConvUpStage(spatial_dims, c4, c3)
        self.dblock2 = ShiftedMLPBlock(spatial_dims, c3, mlp_ratio, shift_size, drop)
        self.dnorm2 = layers.ChannelLayerNorm(c3, eps=1e-5)
        self.decoder3 = ConvUpStage(spatial_dims, c3, c2)
        self.decoder4 = ConvUpStage(spatial_dims, c2, c1)
        self.decoder5 = ConvUpStage(spatial_dims, c1, c1, norm=None)
        self.head = layers.conv(spatial_dims, c1, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        t1 = self.encoder1(x)  # c1, 1/2
        t2 = self.encoder2(t1)  # c2, 1/4
        t3 = self.encoder3(t2)  # c3, 1/8
        t4 = self.encoder4(t3)  # c4, 1/16
        out = self.bottleneck(t4)  # c5, 1/32
        out = self.dnorm1(self.dblock1(self.decoder1(out) + t4))
        out = self.dnorm2(self.dblock2(self.decoder2(out) + t3))
        out = self.decoder3(out) + t2
        out = self.decoder4(out) + t1
        return self.head(self.decoder5(out))


PAPER = ("Valanarasu & Patel 2022, UNeXt: MLP-based Rapid Medical Image Segmentation Network (MICCAI); "
         "official code jeya-maria-jose/UNeXt-pytorch")
SMALL_OPTIONS = {"channels": (4, 8, 20, 24, 32)}  # token widths that split into 5 shift groups
LOSS = "dice_ce"  # sigmoid Dice + BCE for binary data; the paper's 0.5 BCE + Dice is configs/unext-isic.yaml


VARIANTS = (
    ("unext", UNEXT_CHANNELS, 1_471_921, "official archs.py UNext (paper: 1.47 M)"),
    ("unext_s", UNEXT_S_CHANNELS, 253_561, "official archs.py UNext_S"),
    ("unext_paper", UNEXT_PAPER_CHANNELS, 1_580_961, "UNeXt paper Sec. 2 widths 32/64/128/160/256"),
)
"""The registered names: the official code's widths, UNeXt-S, and the widths of the paper's text."""


def build_unext(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> UNeXt:
    """Build :class:`UNeXt`; the registered variants differ in their default ``channels``."""
    return UNeXt(spatial_dims, in_channels, num_classes, **options)


for _name, _channels, _params, _source in VARIANTS:
    _reference_options = {"in_channels": 3, "num_classes": 1, "spatial_dims": 2}
    register_model(_name, paper=PAPER, dims=(2, 3), default_loss=LOSS, input_multiple=32,
                   references=[Reference(options=_reference_options, params=_params, source=_source)],
                   small_options=SMALL_OPTIONS, defaults={"channels": _channels})(build_unext)
