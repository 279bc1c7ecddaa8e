"""HRNetV1, HRNetV2 and HRNetV2p for segmentation (Wang et al. 2020, "Deep High-Resolution Representation
Learning for Visual Recognition", TPAMI, Fig. 4; Sun et al. 2019), 2D and 3D.

The backbone is :class:`~medseg.encoders.hrnet.HRNetEncoder` (four branches at 1/4 ... 1/32). The heads of
Fig. 4:

* V1 (a): the highest-resolution branch only (C channels).
* V2 (b): every branch up-sampled bilinearly to 1/4 and concatenated (15C channels), then 1x1 conv + BN +
  ReLU + 1x1 conv to the classes (the official ``last_layer``; here ``head.0``, ``head.1``, ``head.3``).
* V2p (c): a feature pyramid built from the V2 representation. Our reading, after the paper's text and the
  official detection neck (HRFPN): a 1x1 conv reduces the 15C map to ``pyramid_channels``; average pooling
  by 2^k gives ``pyramid_levels`` levels (1/4, 1/8, 1/16, 1/32), each followed by a 3x3 conv; for
  segmentation the levels are up-sampled back to 1/4 and summed, then the V2 head classifies the sum.

The logits (at 1/4) are up-sampled bilinearly to the input size. Every model exposes
:meth:`HRNet.coarse_and_fine` (the 1/4 logits and the 1/4 feature map the head reads, ``fine_channels``
wide) for point-based refinement (PointRend).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.heads import DeepSupervisionHeads
from medseg.encoders.base import load_encoder_weights
from medseg.encoders.hrnet import HRNetEncoder, HRNetSpec
from medseg.errors import MedsegError, check_choice
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.outputs import SegOutput

HEADS = ("v1", "v2", "v2p")


def upsample_concat(features: Sequence[Tensor]) -> Tensor:
    """HRNetV2's representation: every map resized (bilinear/trilinear) to the first one's size and
    concatenated along the channels."""
    size = list(features[0].shape[2:])
    return torch.cat([features[0], *[layers.resize_to(f, size) for f in features[1:]]], dim=1)


def classifier(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Sequential:
    """The HRNetV2 segmentation head: 1x1 conv + BN + ReLU, then a 1x1 conv to the class logits."""
    return nn.Sequential(
        layers.conv(spatial_dims, in_channels, in_channels, 1, padding=0),
        layers.norm("batch", spatial_dims, in_channels),
        nn.ReLU(inplace=True),
        layers.conv(spatial_dims, in_channels, num_classes, 1, padding=0),
    )


class FeaturePyramid(nn.Module):
    """HRNetV2p's pyramid from one high-resolution map (Fig. 4c), combined back for segmentation.

    A 1x1 conv to ``channels`` (``reduction``); level k (0..``levels``-1) is the average over 2^k-sized
    cells (adaptive pooling to ``ceil(size / 2^k)``, so odd sizes work) and a 3x3 conv (``convs.k``).
    ``pyramid(x)`` returns the levels finest first; ``forward(x)`` their sum after up-sampling each
    (bilinear/trilinear) to the input size.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int = 256, levels: int = 4) -> None:
        super().__init__()
        if levels < 1 or channels < 1:
            raise MedsegError(f"pyramid_levels and pyramid_channels must be >= 1, got {levels} and "
                              f"{channels}")
        self.spatial_dims = spatial_dims
        self.reduction = layers.conv(spatial_dims, in_channels, channels, 1, padding=0)
        self.convs = nn.ModuleList(layers.conv(spatial_dims, channels, channels, 3) for _ in range(levels))

    def pyramid(self, x: Tensor) -> list[Tensor]:
        x = self.reduction(x)
        size = list(x.shape[2:])
        outputs: list[Tensor] = []
        for k, conv in enumerate(self.convs):
            if k == 0:
                pooled = x
            else:
                cells = [-(-s // 2**k) for s in size]
                pooled = (F.adaptive_avg_pool2d(x, cells) if self.spatial_dims == 2
                          else F.adaptive_avg_pool3d(x, cells))
            outputs.append(conv(pooled))
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        levels = self.pyramid(x)
        size = list(levels[0].shape[2:])
        total = levels[0]
        for level in levels[1:]:
            total = total + layers.resize_to(level, size)
        return total


class HRNet(SegmentationModel):
    """HRNet for segmentation with the V1, V2 or V2p head (Wang et al. 2020, Fig. 4).

    Args:
        spatial_dims: 2 or 3 (3D: the same network with cubic kernels).
        in_channels: image channels.
        num_classes: output channels.
        head: ``v1`` (highest-resolution branch), ``v2`` (all branches concatenated, 15C) or ``v2p``
            (a pyramid from the V2 representation, see the module docstring).
        config: the backbone, ``hrnet_w18_small`` (W18-Small-v1), ``hrnet_w18_small_v2``, ``hrnet_w18``,
            ``hrnet_w32`` or ``hrnet_w48`` (default, the paper's segmentation model); ``w48`` works too.
        width: replaces the branch widths C, 2C, 4C, 8C of the configuration (the topology stays).
        stem_width, stage1_channels: replace the stem width (64) and stage 1's bottleneck width.
        fuse_upsample: up-sampling in the fuse layers, ``nearest`` (paper, timm) or ``linear``.
        deep_supervision: in train mode also return one logit map per backbone branch (1x1 conv, resized to
            the input), ``SegOutput(logits, aux=[1/4, 1/8, 1/16, 1/32])``.
        pyramid_channels, pyramid_levels: the V2p pyramid (default 256 channels, 4 levels); V2p only.
        encoder_weights: a local weight file (official or timm HRNet keys) loaded into ``encoder``.

    Any input size works; ``coarse_and_fine`` maps are at ``ceil(size / 4)``.
    """

    input_multiple = 1

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, head: str = "v2",
                 config: str | HRNetSpec = "hrnet_w48", width: int | None = None,
                 stem_width: int | None = None, stage1_channels: int | None = None,
                 fuse_upsample: str = "nearest", deep_supervision: bool = False,
                 pyramid_channels: int | None = None,
                 pyramid_levels: int | None = None, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.head_kind = check_choice("head", head, HEADS)
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        if head != "v2p" and (pyramid_channels is not None or pyramid_levels is not None):
            raise MedsegError(f"pyramid_channels and pyramid_levels belong to the v2p head, not {head}")
        self.encoder = HRNetEncoder(in_channels, spatial_dims, config, width, stem_width, stage1_channels,
                                    multi_scale_output=head != "v1" or deep_supervision,
                                    fuse_upsample=fuse_upsample)
        if encoder_weights is not None:
            load_encoder_weights(self.encoder, encoder_weights)
        widths = self.encoder.channels
        self.pyramid: FeaturePyramid | None = None
        if head == "v1":
            self.fine_channels = widths[0]
        elif head == "v2":
            self.fine_channels = sum(widths)
        else:
            channels = 256 if pyramid_channels is None else int(pyramid_channels)
            self.pyramid = FeaturePyramid(spatial_dims, sum(widths), channels,
                                          4 if pyramid_levels is None else int(pyramid_levels))
            self.fine_channels = channels
        self.head = classifier(spatial_dims, self.fine_channels, num_classes)
        self.aux_heads = DeepSupervisionHeads(spatial_dims, widths, num_classes) if deep_supervision else None

    def represent(self, features: list[Tensor]) -> Tensor:
        """The stride-4 map the head reads: branch 0 (V1), the 15C concatenation (V2), the summed
        pyramid (V2p)."""
        if self.head_kind == "v1":
            return features[0]
        fine = upsample_concat(features)
        return fine if self.pyramid is None else self.pyramid(fine)

    def coarse_and_fine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits [B, K, *ceil(size/4)], features [B, fine_channels, *ceil(size/4)])``: the head's
        stride-4 logits and the map it reads (for PointRend)."""
        self.check_input(x)
        fine = self.represent(self.encoder(x))
        return self.head(fine), fine

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        features = self.encoder(x)
        size = list(x.shape[2:])
        logits = layers.resize_to(self.head(self.represent(features)), size)
        if self.training and self.aux_heads is not None:
            return SegOutput(logits, aux=self.aux_heads(features, output_size=size))
        return logits


PAPER = ("Wang et al. 2020, Deep High-Resolution Representation Learning for Visual Recognition (TPAMI); "
         "Sun et al. 2019, High-Resolution Representations for Labeling Pixels and Regions")
SOURCE = "HRNet/HRNet-Semantic-Segmentation lib/models/seg_hrnet.py with experiments/cityscapes/"
SMALL = {"config": "hrnet_w18_small", "width": 4, "stem_width": 8, "stage1_channels": 4}
"""W18-Small-v1's topology with narrow widths: the shared model test's instance."""


def _references() -> list[Reference]:
    counts = {"hrnet_w48": 65_859_379, "hrnet_w18": 9_641_119, "hrnet_w18_small": 1_540_819,
              "hrnet_w18_small_v2": 3_939_579}
    return [Reference(options={"in_channels": 3, "num_classes": 19, "spatial_dims": 2, "config": name},
                      params=params, source=f"{SOURCE}seg_{name.removeprefix('hrnet_')}*.yaml (19 classes)")
            for name, params in counts.items()]


def _build(head: str, in_channels: int, num_classes: int, spatial_dims: int,
           options: dict[str, Any]) -> HRNet:
    if "head" in options:
        raise MedsegError(f"the head is given by the model name (hrnet_{head}), not by a 'head' option")
    return HRNet(spatial_dims, in_channels, num_classes, head=head, **options)


@register_model("hrnet_v1", paper=PAPER, dims=(2, 3), default_loss="dice_ce", input_multiple=1,
                small_options=SMALL, aliases=("hrnetv1",))
def build_hrnet_v1(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> HRNet:
    """HRNetV1: the head reads the highest-resolution branch only (see :class:`HRNet`)."""
    return _build("v1", in_channels, num_classes, spatial_dims, options)


@register_model("hrnet_v2", paper=PAPER, dims=(2, 3), default_loss="dice_ce", input_multiple=1,
                references=_references(), small_options=SMALL, aliases=("hrnet", "hrnetv2", "hrnet3d"))
def build_hrnet_v2(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> HRNet:
    """HRNetV2: all branches up-sampled to 1/4 and concatenated (see :class:`HRNet`)."""
    return _build("v2", in_channels, num_classes, spatial_dims, options)


@register_model("hrnet_v2p", paper=PAPER, dims=(2, 3), default_loss="dice_ce", input_multiple=1,
                small_options={**SMALL, "pyramid_channels": 8}, aliases=("hrnetv2p",))
def build_hrnet_v2p(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> HRNet:
    """HRNetV2p: a pyramid of the V2 representation, combined back at 1/4 (see :class:`HRNet`)."""
    return _build("v2p", in_channels, num_classes, spatial_dims, options)
