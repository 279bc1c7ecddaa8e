"""BPR's refinement network (Tang et al. 2021, "Look Closer to Segment Better: Boundary Patch Refinement for
Instance Segmentation", CVPR, Sec. 3.2 and Fig. 3), 2D and 3D.

Input: an image patch and the coarse mask patch of the same window, as one tensor whose **last** channel
is the mask (0/1); the network normalises it to ``(m - 0.5) / 0.5`` (the official
``EncoderDecoderRefine``). Backbone: :class:`~medseg.encoders.hrnet.HRNetEncoder` with ``mask_channels=1``
(the mask's own 3x3 stride-2 conv, 1 -> 64 without bias, added to the stem's first conv output before its
BN: the official ``HRNetRefine``). Head (mmseg's ``FCNHead`` with ``resize_concat``, ``kernel_size=1``,
``num_convs=1``): every branch up-sampled bilinearly to 1/4 and concatenated, 1x1 conv (no bias) + BN +
ReLU, 1x1 conv to the classes (2: background / foreground, softmax cross-entropy); the logits are
up-sampled to the input size.

Configurations of the official ``configs/bpr/``: ``hrnet_w18_small_v2`` at 128x128 patches (default) and
``hrnet_w48`` at 256x256. Parameter counts (3 image channels + the mask, 2 classes): 3,935,278 and
65,846,978.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.encoders.base import load_encoder_weights
from medseg.encoders.hrnet import HRNetEncoder, HRNetSpec
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.hrnet import SMALL, upsample_concat
from medseg.models.registry import Reference, register_model


def fcn_head(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Sequential:
    """mmseg's one-conv FCN head on the concatenated branches: 1x1 conv (no bias) + BN + ReLU, then a 1x1
    conv (with bias) to the class logits."""
    return nn.Sequential(
        layers.conv(spatial_dims, in_channels, in_channels, 1, padding=0, bias=False),
        layers.norm("batch", spatial_dims, in_channels),
        nn.ReLU(inplace=True),
        layers.conv(spatial_dims, in_channels, num_classes, 1, padding=0),
    )


class BoundaryPatchRefiner(SegmentationModel):
    """BPR's refinement network: HRNet over an image patch plus its coarse mask (Tang et al. 2021, Fig. 3).

    Args:
        spatial_dims: 2 or 3 (3D: cubic patches, our extension).
        in_channels: input channels **including** the coarse mask, which is the last one (4 for RGB).
        num_classes: output classes (2 in the paper: background and foreground).
        config: the HRNet backbone, ``hrnet_w18_small_v2`` (default, 128x128 patches) or ``hrnet_w48``
            (256x256) or any other configuration of :data:`medseg.encoders.hrnet.CONFIGS`.
        width, stem_width, stage1_channels, fuse_upsample: as in
            :class:`~medseg.encoders.hrnet.HRNetEncoder`.
        encoder_weights: a local HRNet weight file (official or timm keys) for the backbone; the mask conv
            keeps its own initialisation.
    """

    input_multiple = 1

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int = 2,
                 config: str | HRNetSpec = "hrnet_w18_small_v2", width: int | None = None,
                 stem_width: int | None = None, stage1_channels: int | None = None,
                 fuse_upsample: str = "nearest", encoder_weights: str | None = None) -> None:
        super().__init__()
        if in_channels < 2:
            raise MedsegError(f"bpr needs the image channels plus the coarse mask (in_channels >= 2), got "
                              f"{in_channels}")
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.encoder = HRNetEncoder(in_channels - 1, spatial_dims, config, width, stem_width, stage1_channels,
                                    fuse_upsample=fuse_upsample, mask_channels=1)
        if encoder_weights is not None:
            load_encoder_weights(self.encoder, encoder_weights)
        self.head = fcn_head(spatial_dims, sum(self.encoder.channels), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        image, mask = x[:, :-1], x[:, -1:]
        features = self.encoder(torch.cat([image, (mask - 0.5) / 0.5], dim=1))
        return layers.resize_to(self.head(upsample_concat(features)), list(x.shape[2:]))


PAPER = ("Tang et al. 2021, Look Closer to Segment Better: Boundary Patch Refinement for Instance "
         "Segmentation (CVPR)")
SOURCE = "tinyalpha/BPR configs/bpr/"


def _references() -> list[Reference]:
    counts = {"hrnet_w18_small_v2": (3_935_278, "hrnet18s_128.py"),
              "hrnet_w48": (65_846_978, "hrnet48_256.py")}
    return [Reference(options={"in_channels": 4, "num_classes": 2, "spatial_dims": 2, "config": name},
                      params=params, source=f"{SOURCE}{file} (3 image channels + the mask, 2 classes)")
            for name, (params, file) in counts.items()]


@register_model("bpr", paper=PAPER, dims=(2, 3), default_loss="ce", input_multiple=1,
                references=_references(), small_options=SMALL, aliases=("bpr_hrnet", "bpr3d"))
def build_bpr(*, in_channels: int, num_classes: int, spatial_dims: int,
              **options: Any) -> BoundaryPatchRefiner:
    """BPR's refinement network (see :class:`BoundaryPatchRefiner`); the last input channel is the mask."""
    return BoundaryPatchRefiner(spatial_dims, in_channels, num_classes, **options)
