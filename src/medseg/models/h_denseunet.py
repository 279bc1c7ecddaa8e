"""H-DenseUNet (Li et al. 2018, "H-DenseUNet: Hybrid Densely Connected UNet for Liver and Tumor
Segmentation from CT Volumes", IEEE TMI).

Fig. 2: a 2D DenseUNet runs on every slice of the volume (the paper: 3 adjacent slices as channels); its
per-slice features and probability maps are stacked back into volumes; a 3D DenseUNet takes the volume
concatenated with the 2D probabilities; the hybrid feature fusion (HFF) layer adds the 2D features to the
3D ones and a 3x3x3 conv-norm-act and a 1x1x1 conv give the prediction. The paper's 2D DenseUNet is a
DenseNet-161 encoder with a five-stage decoder; here both DenseUNets are :class:`DenseUNet` (one dense
block per level) with their own widths, a small configuration by default. 3D input only: the slices run
along the first spatial axis.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.blocks.heads import SegmentationHead
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.dense_unet import DenseUNet
from medseg.models.registry import register_model
from medseg.models.slices import slices_to_volume, volume_to_slices
from medseg.outputs import SegOutput


def probabilities(logits: Tensor) -> Tensor:
    """Softmax over the classes, or the sigmoid of a single-channel map."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


class HDenseUNet(SegmentationModel):
    """H-DenseUNet (Li et al. 2018, Fig. 2), 3D input.

    Args:
        spatial_dims: must be 3.
        in_channels: image channels.
        num_classes: output channels.
        options_2d: :class:`DenseUNet` options of the slice network (default: width 16, depth 3).
        options_3d: :class:`DenseUNet` options of the volume network (default: width 16, depth 2).
        dropout: dropout before the HFF layer's classifier (0; the paper uses 0.3).
        norm, act: normalisation and activation of both networks and the HFF layer.

    In train mode the forward returns ``SegOutput(hybrid logits, aux=[2D logits, 3D logits])``: the
    paper's loss is on the hybrid output, the 2D network being trained first on its own (its aux map).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 options_2d: dict[str, Any] | None = None, options_3d: dict[str, Any] | None = None,
                 dropout: float = 0.0, norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()
        if spatial_dims != 3:
            raise MedsegError(f"h_denseunet takes 3D volumes only (spatial_dims 3), got {spatial_dims!r}")
        self.spatial_dims = 3
        common = {"norm": norm, "act": act}
        self.net_2d = DenseUNet(2, in_channels, num_classes, **{"features": 16, "depth": 3, **common,
                                                                **(options_2d or {})})
        self.net_3d = DenseUNet(3, in_channels + num_classes, num_classes,
                                **{"features": 16, "depth": 2, **common, **(options_3d or {})})
        self.input_multiple = max(self.net_2d.input_multiple, self.net_3d.input_multiple)
        c2, c3 = self.net_2d.out_channels, self.net_3d.out_channels
        self.project_2d = nn.Identity() if c2 == c3 else layers.conv(3, c2, c3, 1)
        self.fusion = ConvNormAct(3, c3, c3, 3, norm=norm, act=act)
        self.head = SegmentationHead(3, c3, num_classes, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        features_2d = self.net_2d.decode(volume_to_slices(x))
        logits_2d = slices_to_volume(self.net_2d.head(features_2d), x.shape[0])
        features_2d = slices_to_volume(features_2d, x.shape[0])
        features_3d = self.net_3d.decode(torch.cat([x, probabilities(logits_2d)], dim=1))
        logits = self.head(self.fusion(features_3d + self.project_2d(features_2d)))  # hybrid feature fusion
        if self.training:
            return SegOutput(logits, aux=[logits_2d, self.net_3d.head(features_3d)])
        return logits


@register_model(
    "h_denseunet",
    paper="Li et al. 2018, H-DenseUNet: Hybrid Densely Connected UNet for Liver and Tumor Segmentation from "
          "CT Volumes (IEEE TMI)",
    dims=(3,),
    default_loss="dice_ce",
    input_multiple=8,
    small_options={"options_2d": {"features": 4, "depth": 2, "layers_per_block": 2, "growth_rate": 2},
                   "options_3d": {"features": 4, "depth": 1, "layers_per_block": 2, "growth_rate": 2}},
    aliases=("hdenseunet",),
)
def build_h_denseunet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> HDenseUNet:
    """Build :class:`HDenseUNet` (see its docstring for the options)."""
    return HDenseUNet(spatial_dims, in_channels, num_classes, **options)
