"""U-Net v2 (Peng et al. 2023, "U-Net v2: Rethinking the Skip Connections of U-Net for Medical Image
Segmentation") and the ablations of its Table 4/5: U-Net and UNet++ over the PVT encoder.

Fig. 2: an encoder gives levels f_1..f_L (PVT-v2-b2: 1/4..1/32); each passes channel and spatial
attention and a 1x1 conv to c channels; one SDI module per level multiplies all levels resized to it
(:mod:`medseg.blocks.sdi`); the decoder adds the 2x transposed-conv up-sampled coarser output to each
SDI map (y_L = SDI_L, y_i = ConvT(y_{i+1}) + SDI_i), with a 1x1 head per level up-sampled to the input.
Numbers checked against the official code (yaoppeng/U-Net_v2, ``PolypSeg/unet_v2/UNet_v2.py``) without
its unused ``deconv5``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.heads import DeepSupervisionHeads, SegmentationHead
from medseg.blocks.sdi import SemanticDetailSkips
from medseg.encoders.base import Encoder, build_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.models.unet import UNetDecoder
from medseg.models.unetpp import UNetPlusPlus
from medseg.outputs import SegOutput

DEFAULT_ENCODERS = {2: "pvt_v2_b2", 3: "resnet34"}
"""The default encoder per ``spatial_dims``: the paper's PVT-v2-b2 in 2D, a 3D ResNet-34 in 3D (ours)."""

PVT_FINE_LEVELS = (64, 32)
"""Widths of the two levels that the official "UNet++ with PVT" code adds above PVT's 1/4 level (1/2
and 1/1, ``nb_filter = [32, 64, 64, 128, 320, 512]`` in ``PolypSeg/lib/pvt_unet_plus.py``)."""


def check_halving(reductions: Sequence[int], model: str) -> None:
    """Raise unless every encoder level is half the size of the previous one."""
    if len(reductions) < 2 or any(b != 2 * a for a, b in zip(reductions, reductions[1:], strict=False)):
        raise MedsegError(f"{model} needs at least two encoder levels that halve one after another, "
                          f"got reductions {list(reductions)}")


class UpsampledLevels(Encoder):
    """An encoder with extra finer levels: each is the previous finest level up-sampled 2x (nearest)
    and a 1x1 conv (with bias) to the next width of ``widths``, as the official PVT ablation code does to
    reach the input resolution. The wrapped encoder is ``self.encoder`` (its weight file loads there)."""

    def __init__(self, encoder: Encoder, widths: Sequence[int]) -> None:
        super().__init__()
        scale = 2 ** len(widths)
        if encoder.reductions[0] % scale:
            raise MedsegError(f"fine_levels {list(widths)}: the encoder's finest level (1/"
                              f"{encoder.reductions[0]}) cannot be up-sampled {len(widths)} times")
        self.encoder = encoder
        self.spatial_dims = encoder.spatial_dims
        previous = [encoder.channels[0], *widths[:-1]]
        self.fine = nn.ModuleList(layers.conv(encoder.spatial_dims, c_in, c_out, 1)
                                  for c_in, c_out in zip(previous, widths, strict=True))
        self.channels = [*reversed(widths), *encoder.channels]
        self.reductions = [encoder.reductions[0] // 2 ** (k + 1) for k in reversed(range(len(widths)))]
        self.reductions += list(encoder.reductions)
        self.first_conv = f"encoder.{encoder.first_conv}" if encoder.first_conv else None
        self.new_layers = ("fine.", *(f"encoder.{prefix}" for prefix in encoder.new_layers))

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {f"encoder.{k}": v for k, v in self.encoder.convert_state_dict(state).items()}

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.encoder(x)
        finer: list[Tensor] = []
        x = features[0]
        for conv in self.fine:
            x = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            finer.insert(0, x)
        return finer + list(features)


class UNetV2(SegmentationModel):
    """U-Net v2 (Peng et al. 2023, Fig. 2), over any registered encoder, 2D or 3D.

    Args:
        spatial_dims: 2 or 3 (3D: trilinear SDI resizing, 3D pooling; ours).
        in_channels: image channels.
        num_classes: output channels.
        encoder: registered encoder name or :class:`~medseg.encoders.Encoder`, or a mapping from
            spatial_dims to either; default ``pvt_v2_b2`` in 2D and ``resnet34`` in 3D. Its levels
            must halve one after another (every level is used, finest to coarsest).
        encoder_options: options of a named encoder (or a mapping from spatial_dims to options).
        encoder_weights: a local weight file for the encoder.
        channels: the SDI width c (32 in the paper).
        attention: the channel and spatial attention before the 1x1 convs (``False`` is the paper's
            ablation "without SC").
        deep_supervision: in train mode return ``SegOutput(logits, aux)`` with the logits of the
            ``supervised_levels - 1`` decoder levels below the finest as ``aux``.
        supervised_levels: decoder levels returned in train mode with deep supervision (2 in the
            official code: the full- and the half-resolution maps). Every level has a head (spec and
            official code); with the default the two coarsest heads are idle in training, as there.

    Each head is a 1x1 conv up-sampled (bilinear/trilinear) by the finest level's reduction (x4 for
    PVT), so the level-i map comes out at 1/2^(i-1) of the input: the aux map of the default is at
    half resolution, as in the official code (a loss resizes it to the mask).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | Mapping | None = None, encoder_options: Mapping | None = None,
                 encoder_weights: str | None = None, channels: int = 32, attention: bool = True,
                 deep_supervision: bool = True, supervised_levels: int = 2) -> None:
        super().__init__()
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.encoder = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims,
                                     weights=encoder_weights, options=encoder_options,
                                     default=DEFAULT_ENCODERS)
        reductions = list(self.encoder.reductions)
        check_halving(reductions, "UNetV2")
        levels = len(reductions)
        if not 1 <= supervised_levels <= levels:
            raise MedsegError(f"supervised_levels must be in 1..{levels}, got {supervised_levels}")
        self.input_multiple = self.encoder.input_multiple
        self.deep_supervision = deep_supervision
        self.supervised_levels = supervised_levels
        self.head_scale = float(reductions[0])
        self.skips = SemanticDetailSkips(spatial_dims, self.encoder.channels, channels, attention)
        # up[i] lifts y_{i+1} to level i: ConvTranspose k4 s2 p1 without bias (Fig. 2).
        self.up = nn.ModuleList(layers.conv_transpose(spatial_dims, channels, channels, 4, 2, padding=1,
                                                      bias=False) for _ in range(levels - 1))
        self.heads = DeepSupervisionHeads(spatial_dims, [channels] * levels, num_classes)

    def decode(self, x: Tensor) -> list[Tensor]:
        """The decoder outputs y_1..y_L, finest first."""
        infused = self.skips(self.encoder(x))
        y = infused[-1]
        outputs = [y]
        for i in reversed(range(len(self.up))):
            y = self.up[i](y) + infused[i]
            outputs.insert(0, y)
        return outputs

    def level_logits(self, y: Tensor, level: int) -> Tensor:
        logits = self.heads.heads[level](y)
        if self.head_scale == 1.0:
            return logits
        return F.interpolate(logits, scale_factor=self.head_scale, mode=layers.interpolation_mode(
            self.spatial_dims), align_corners=False)

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        decoded = self.decode(x)
        logits = self.level_logits(decoded[0], 0)
        if self.training and self.deep_supervision and self.supervised_levels > 1:
            aux = [self.level_logits(decoded[i], i) for i in range(1, self.supervised_levels)]
            return SegOutput(logits, aux=aux)
        return logits


class EncoderUNet(SegmentationModel):
    """U-Net's expansive path (plain concatenation skips, :class:`~medseg.models.unet.UNetDecoder`)
    over the levels of an encoder, widths = the encoder's channels; the logits are resized to the input
    when the finest level is smaller. U-Net v2's "U-Net with PVT" ablation.

    Args:
        spatial_dims, in_channels, num_classes: as every model.
        encoder: an :class:`~medseg.encoders.Encoder` (or a registered name) whose levels halve.
        encoder_options, encoder_weights: for a named encoder.
        norm, act, upsample: of the decoder levels (see :class:`~medseg.models.unet.UNet`).
        deep_supervision: 1x1 heads on the decoder levels below the finest, returned as ``aux``
            (resized to the logits) in train mode.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, encoder: str | Encoder,
                 encoder_options: Mapping | None = None, encoder_weights: str | None = None,
                 norm: str | None = "batch", act: str | None = "relu", upsample: str = "transpose",
                 deep_supervision: bool = False) -> None:
        super().__init__()
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.encoder = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims,
                                     weights=encoder_weights, options=encoder_options)
        check_halving(self.encoder.reductions, "EncoderUNet")
        self.input_multiple = self.encoder.input_multiple
        widths = list(self.encoder.channels)
        self.decoder = UNetDecoder(spatial_dims, widths, norm=norm, act=act, upsample=upsample)
        self.head = SegmentationHead(spatial_dims, widths[0], num_classes)
        self.aux_heads = (DeepSupervisionHeads(spatial_dims, self.decoder.channels[1:], num_classes)
                          if deep_supervision and len(widths) > 2 else None)

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        decoded = self.decoder(self.encoder(x))
        logits = layers.resize_to(self.head(decoded[0]), list(x.shape[2:]))
        if self.training and self.aux_heads is not None:
            return SegOutput(logits, aux=self.aux_heads(decoded[1:], output_size=logits.shape[2:]))
        return logits


PAPER = ("Peng et al. 2023, U-Net v2: Rethinking the Skip Connections of U-Net for Medical Image "
         "Segmentation (arXiv:2311.17791)")
OFFICIAL = "yaoppeng/U-Net_v2 PolypSeg/unet_v2/UNet_v2.py"
SMALL_PVT = {"embed_dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
SMALL_RESNET = {"widths": (4, 8, 16, 32), "stem_width": 8}
SMALL_V2 = {"encoder": {2: "pvt_v2_b0", 3: "resnet18"}, "encoder_options": {2: SMALL_PVT, 3: SMALL_RESNET},
            "channels": 8}


@register_model(
    "unet_v2",
    paper=PAPER,
    dims=(2, 3),
    default_loss="structure",
    input_multiple=32,
    references=[
        Reference(options={"in_channels": 3, "num_classes": 1, "spatial_dims": 2}, params=25_128_652,
                  source=f"{OFFICIAL} UNetV2 (25,145,036) without its unused deconv5 (16,384)"),
    ],
    small_options=SMALL_V2,
    aliases=("unetv2",),
)
def build_unet_v2(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> UNetV2:
    """Build :class:`UNetV2` (see its docstring for the options)."""
    return UNetV2(spatial_dims, in_channels, num_classes, **options)


@register_model(
    "unet_v2_no_sc",
    paper=PAPER + "; ablation without spatial and channel attention (Table 5)",
    dims=(2, 3),
    default_loss="structure",
    input_multiple=32,
    references=[
        Reference(options={"in_channels": 3, "num_classes": 1, "spatial_dims": 2}, params=25_080_132,
                  source="unet_v2 reference minus the attention of the spec (CA 48,128 + SA 4x98)"),
    ],
    small_options=SMALL_V2,
)
def build_unet_v2_no_sc(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> UNetV2:
    """:class:`UNetV2` with ``attention=False`` (the paper's ablation "without SC")."""
    return UNetV2(spatial_dims, in_channels, num_classes, attention=False, **options)


def pvt_pyramid(in_channels: int, spatial_dims: int, encoder: str | Encoder, encoder_options: Mapping | None,
                encoder_weights: str | None, fine_levels: Sequence[int]) -> Encoder:
    """The official PVT ablations' pyramid: the encoder's levels plus ``fine_levels`` up to 1/1."""
    base = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims, weights=encoder_weights,
                         options=encoder_options)
    return UpsampledLevels(base, fine_levels) if fine_levels else base


SMALL_PVT_ABLATION = {"encoder": "pvt_v2_b0", "encoder_options": SMALL_PVT, "fine_levels": (8, 4)}
PYRAMID_NOTE = ("decoder widths of the official UNet++-with-PVT code (pvt_unet_plus.py, nb_filter "
                "[32, 64, 64, 128, 320, 512]); no official U-Net-with-PVT code exists, it uses the "
                "same pyramid")


@register_model(
    "unet_pvt",
    paper=PAPER + "; ablation: U-Net with the PVT encoder (Table 4). " + PYRAMID_NOTE,
    dims=(2,),
    default_loss="structure",
    input_multiple=32,
    small_options=SMALL_PVT_ABLATION,
)
def build_unet_pvt(*, in_channels: int, num_classes: int, spatial_dims: int,
                   encoder: str | Encoder = "pvt_v2_b2", encoder_options: Mapping | None = None,
                   encoder_weights: str | None = None,
                   fine_levels: Sequence[int] = PVT_FINE_LEVELS, **options: Any) -> EncoderUNet:
    """:class:`EncoderUNet` over PVT-v2 with the official pyramid (:class:`UpsampledLevels`)."""
    pyramid = pvt_pyramid(in_channels, spatial_dims, encoder, encoder_options, encoder_weights, fine_levels)
    return EncoderUNet(spatial_dims, in_channels, num_classes, encoder=pyramid, **options)


@register_model(
    "unetpp_pvt",
    paper=PAPER + "; ablation: UNet++ with the PVT encoder (Table 4). " + PYRAMID_NOTE,
    dims=(2,),
    default_loss="structure",
    input_multiple=32,
    small_options=SMALL_PVT_ABLATION,
)
def build_unetpp_pvt(*, in_channels: int, num_classes: int, spatial_dims: int,
                     encoder: str | Encoder = "pvt_v2_b2", encoder_options: Mapping | None = None,
                     encoder_weights: str | None = None, fine_levels: Sequence[int] = PVT_FINE_LEVELS,
                     **options: Any) -> UNetPlusPlus:
    """:class:`~medseg.models.unetpp.UNetPlusPlus` over PVT-v2 with the official pyramid."""
    pyramid = pvt_pyramid(in_channels, spatial_dims, encoder, encoder_options, encoder_weights, fine_levels)
    return UNetPlusPlus(spatial_dims, in_channels, num_classes, encoder=pyramid, **options)
