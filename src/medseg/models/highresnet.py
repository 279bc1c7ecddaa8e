"""HighResNet (Li et al., IPMI 2017, "On the Compactness, Efficiency, and Representation of 3D
Convolutional Networks: Brain Parcellation as a Pretext Task").

Fig. 2 of the paper: a 3x3x3 conv to 16 channels, then three groups of three pre-activation residual
blocks (BN-ReLU-3x3 conv twice, plus the identity) with dilation 1, 2 and 4 and 16, 32 and 64 channels,
all at the input resolution (no down-sampling), then a 1x1 conv to 80 channels and a 1x1 conv to the
classes. Where a group widens the features, the identity is zero-padded along the channels (NiftyNet's
``highres3dnet``; ``channel_matching="project"`` uses a 1x1 conv instead). The layout and the count at
the default configuration (808,866 parameters, 1 -> 1 class) are MONAI's ``HighResNet``, except that the
last conv is followed by batch norm only, as NiftyNet's output layer (MONAI adds a ReLU to the logits).
2D and 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.blocks.dense import NormActConv
from medseg.errors import MedsegError, check_choice
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model

CHANNEL_MATCHING = ("pad", "project")


class HighResBlock(nn.Module):
    """A HighResNet residual block: ``len(kernels)`` BN-ReLU-conv units at ``dilation`` plus the input,
    zero-padded along the channels (``pad``, split evenly in front and behind as NiftyNet and MONAI) or
    projected by a 1x1 conv with bias (``project``) when the width grows."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilation: int = 1,
                 kernels: Sequence[int] = (3, 3), norm: str | None = "batch", act: str | None = "relu",
                 channel_matching: str = "pad") -> None:
        super().__init__()
        check_choice("channel_matching", channel_matching, CHANNEL_MATCHING)
        units = []
        for i, k in enumerate(kernels):
            units.append(NormActConv(spatial_dims, in_channels if i == 0 else out_channels, out_channels, k,
                                     dilation=dilation, norm=norm, act=act, bias=False))
        self.units = nn.Sequential(*units)
        self.project: nn.Module | None = None
        self.pad: list[int] = []
        if in_channels != out_channels:
            if channel_matching == "project":
                self.project = layers.conv(spatial_dims, in_channels, out_channels, 1, padding=0)
            elif in_channels > out_channels:
                raise MedsegError(f"HighResBlock: channel padding cannot shrink {in_channels} channels to "
                                  f"{out_channels}; use channel_matching='project'")
            else:
                front = (out_channels - in_channels) // 2
                self.pad = [0, 0] * spatial_dims + [front, out_channels - in_channels - front]

    def shortcut(self, x: Tensor) -> Tensor:
        if self.project is not None:
            return self.project(x)
        if len(self.pad) > 0:
            return F.pad(x, self.pad)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.units(x) + self.shortcut(x)


class HighResNet(SegmentationModel):
    """HighResNet (Li et al. 2017, Fig. 2), 3D (the paper) or 2D; any input size.

    Args:
        spatial_dims: 3 or 2.
        in_channels: image channels.
        num_classes: output channels.
        stem_channels: width of the first 3x3 conv (16).
        widths: width of each residual group (16, 32, 64); group ``i`` has dilation ``2**i``.
        blocks_per_group: residual blocks per group (3).
        head_channels: width of the 1x1 conv before the classifier (80).
        norm: normalisation (``batch``).
        act: activation (``relu``).
        dropout: channel dropout after the 80-wide 1x1 conv (0).
        channel_matching: ``pad`` (zero-pad the identity, the paper) or ``project`` (1x1 conv).
        output_norm: batch norm on the logits (NiftyNet's and MONAI's output layer; gives MONAI's count).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, stem_channels: int = 16,
                 widths: Sequence[int] = (16, 32, 64), blocks_per_group: int = 3, head_channels: int = 80,
                 norm: str | None = "batch", act: str | None = "relu", dropout: float = 0.0,
                 channel_matching: str = "pad", output_norm: bool = True) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if min(stem_channels, head_channels, blocks_per_group, *widths) < 1:
            raise MedsegError("HighResNet widths, head_channels and blocks_per_group must be positive")
        self.spatial_dims = spatial_dims
        self.stem = ConvNormAct(spatial_dims, in_channels, stem_channels, 3, norm=norm, act=act, bias=False)
        blocks: list[nn.Module] = []
        channels = stem_channels
        for group, width in enumerate(widths):
            for _ in range(blocks_per_group):
                blocks.append(HighResBlock(spatial_dims, channels, width, 2**group, norm=norm, act=act,
                                           channel_matching=channel_matching))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvNormAct(spatial_dims, channels, head_channels, 1, norm=norm, act=act, bias=False,
                                dropout=dropout)
        self.classifier = ConvNormAct(spatial_dims, head_channels, num_classes, 1,
                                      norm=norm if output_norm else None, act=None,
                                      bias=not output_norm or (norm or "none") == "none")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.classifier(self.head(self.blocks(self.stem(x))))


@register_model(
    "highresnet",
    paper="Li et al. 2017, On the Compactness, Efficiency, and Representation of 3D Convolutional Networks: "
          "Brain Parcellation as a Pretext Task (IPMI)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=1,
    references=[
        Reference(options={"in_channels": 1, "num_classes": 1, "spatial_dims": 3}, params=808_866,
                  source="MONAI 1.6.1 monai.networks.nets.HighResNet() (default configuration), measured"),
        Reference(options={"in_channels": 1, "num_classes": 1, "spatial_dims": 2}, params=274_050,
                  source="MONAI 1.6.1 monai.networks.nets.HighResNet(spatial_dims=2), measured"),
    ],
    small_options={"stem_channels": 4, "widths": (4, 8, 8), "blocks_per_group": 1, "head_channels": 8},
    aliases=("highresnet3d",),
)
def build_highresnet(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> HighResNet:
    """Build :class:`HighResNet` (see its docstring for the options)."""
    return HighResNet(spatial_dims, in_channels, num_classes, **options)
