"""RefineNet (Lin et al. 2017, "RefineNet: Multi-Path Refinement Networks for High-Resolution Semantic
Segmentation", Fig. 2c and Sec. 3), the 4-cascade form on a ResNet encoder, 2D and 3D.

The ResNet's four stages (1/4 .. 1/32) are each reduced by a 3x3 conv to 512 channels (the coarsest) or 256
and refined coarse to fine: RefineNet-4 takes the top path alone, RefineNet-m fuses the output of
RefineNet-(m+1) with stage m (:class:`~medseg.blocks.refinenet.RefineNetBlock`: 2 RCUs per path, fusion,
chained residual pooling, an output RCU). Two more RCUs, dropout and a 3x3 classifier on the 1/4 map give
the logits, up-sampled to the input size.

Checked against the official MatConvNet code (guosheng/refinenet ``main/gen_network_refine_group.m``,
``gen_net_opts_model_type1.m``, ``gen_network_loss_group.m``): input adaptation ``[512 256 256 256]`` (3x3
conv, no bias, then 2 RCUs), dropout (0.5) on the encoder outputs wider than 512, 2 CRP blocks of 5x5
pools, 3 RCUs after each block's CRP and no RCU on the carried path of the next block, which is the paper's
"output RCU + 2 input RCUs" (Sec. 3.2: three RCUs between blocks) with the same layers; dropout 0.5 and a
3x3 conv to the classes.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.refinenet import RefineNetBlock, ResidualConvUnit
from medseg.encoders.base import Encoder, build_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model

DEFAULT_ENCODER = {2: "resnet101", 3: "resnet101"}


class RefineNet(SegmentationModel):
    """The multi-path (cascaded) RefineNet over a registered encoder, 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        encoder: a registered encoder name or an :class:`Encoder` (default ResNet-101, the paper's).
        encoder_options: options of a named encoder.
        encoder_weights: a local weight file for the encoder.
        levels: how many of the encoder's coarsest levels are refined (4: RefineNet-4 .. RefineNet-1 on the
            ResNet stages at 1/32 .. 1/4; the stem level is not used).
        features: width of every path but the coarsest (256).
        top_features: width of the coarsest path (512).
        rcus: RCUs per input path of a block (2).
        crp_blocks: pooling blocks of each chained residual pooling (2; the paper's released code also
            tried 4).
        conv_first: the official code's CRP (conv, then pool); False: the paper figure's order.
        final_rcus: RCUs before the classifier (2).
        feature_dropout: dropout on the encoder outputs wider than 512 channels (the official 0.5).
        dropout: dropout before the classifier (the official 0.5).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, levels: int = 4, features: int = 256,
                 top_features: int = 512, rcus: int = 2, crp_blocks: int = 2, conv_first: bool = True,
                 final_rcus: int = 2, feature_dropout: float = 0.5, dropout: float = 0.5) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if min(features, top_features) < 1 or rcus < 0 or final_rcus < 0:
            raise MedsegError(f"RefineNet features and top_features must be >= 1 and the RCU counts >= 0, "
                              f"got {features}, {top_features}, {rcus}, {final_rcus}")
        self.spatial_dims = spatial_dims
        self.encoder = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims,
                                     weights=encoder_weights, options=encoder_options,
                                     default=DEFAULT_ENCODER)
        if not 1 <= levels <= len(self.encoder.channels):
            raise MedsegError(f"RefineNet levels must lie in 1..{len(self.encoder.channels)} (the encoder's "
                              f"levels), got {levels}")
        self.levels = levels
        self.input_multiple = self.encoder.input_multiple
        encoder_widths = self.encoder.channels[-levels:][::-1]  # coarse to fine
        widths = [top_features] + [features] * (levels - 1)
        # input adaptation: dropout on wide levels, a 3x3 conv to the path width
        self.adapt = nn.ModuleList(
            nn.Sequential(
                layers.dropout(spatial_dims, feature_dropout if c > 512 else 0.0, channelwise=False),
                layers.conv(spatial_dims, c, w, 3, bias=False))
            for c, w in zip(encoder_widths, widths, strict=True))
        # the cascade RefineNet-4 .. RefineNet-1: block k takes block k-1's output and path k
        self.refine = nn.ModuleList()
        carried = None
        for width in widths:
            inputs = [width] if carried is None else [carried, width]
            self.refine.append(RefineNetBlock(spatial_dims, inputs, min(inputs), rcus, crp_blocks,
                                              conv_first=conv_first))
            carried = min(inputs)
        self.head = nn.Sequential(
            *[ResidualConvUnit(spatial_dims, carried) for _ in range(final_rcus)],
            layers.dropout(spatial_dims, dropout, channelwise=False),
            layers.conv(spatial_dims, carried, num_classes, 3, bias=True))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        features = self.encoder(x)[-self.levels:][::-1]
        out: Tensor | None = None
        for adapt, block, feature in zip(self.adapt, self.refine, features, strict=True):
            path = adapt(feature)
            out = block([path] if out is None else [out, path])
        return layers.resize_to(self.head(out), list(x.shape[2:]))


@register_model(
    "refinenet",
    paper="Lin et al. 2017, RefineNet: Multi-Path Refinement Networks for High-Resolution Semantic "
          "Segmentation (CVPR)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=32,
    small_options={"encoder": "resnet18", "encoder_options": {"widths": (8, 8, 16, 16), "stem_width": 8,
                                                              "depths": (1, 1, 1, 1)},
                   "features": 8, "top_features": 16},
)
def build_refinenet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> RefineNet:
    """Build :class:`RefineNet` (see its docstring for the options)."""
    return RefineNet(spatial_dims, in_channels, num_classes, **options)
