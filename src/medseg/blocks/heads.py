"""Output heads: the segmentation head, deep-supervision heads and the FCN auxiliary head (2D and 3D)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct


class SegmentationHead(nn.Sequential):
    """Optional dropout, a ``kernel_size`` conv to ``num_classes`` logits, optional up-sampling."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, kernel_size: int = 1,
                 upsample: float = 1, dropout: float = 0.0, mode: str = "linear") -> None:
        modules: list[nn.Module] = []
        if dropout > 0:
            modules.append(layers.dropout(spatial_dims, dropout, channelwise=False))
        modules.append(layers.conv(spatial_dims, in_channels, num_classes, kernel_size, padding="same"))
        if upsample != 1:
            modules.append(layers.upsample(spatial_dims, upsample, mode))
        super().__init__(*modules)


class DeepSupervisionHeads(nn.Module):
    """One 1x1 logit head per decoder level (Lee et al. 2015, deeply-supervised nets).

    ``forward(features)`` maps a list of feature maps to a list of logits of the same order;
    with ``output_size`` each map is resized (bilinear/trilinear) to that size.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], num_classes: int,
                 kernel_size: int = 1) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            layers.conv(spatial_dims, c, num_classes, kernel_size, padding="same") for c in in_channels)

    def forward(self, features: Sequence[Tensor],
                output_size: Sequence[int] | None = None) -> list[Tensor]:
        if len(features) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} feature maps, got {len(features)}")
        outputs = [head(f) for head, f in zip(self.heads, features, strict=True)]
        if output_size is not None:
            outputs = [layers.resize_to(o, list(output_size)) for o in outputs]
        return outputs


class FCNHead(nn.Sequential):
    """torchvision's ``FCNHead``, the auxiliary head of its DeepLabV3 (and PSPNet's, Zhao et al. 2017):
    3x3 conv (no bias) to ``in_channels // 4`` (or ``channels``), BN, ReLU, dropout 0.1, 1x1 conv to
    ``num_classes``."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: int | None = None,
                 dropout: float = 0.1, norm: str | None = "batch") -> None:
        inter = channels or max(1, in_channels // 4)
        super().__init__(ConvNormAct(spatial_dims, in_channels, inter, 3, norm=norm, act="relu"),
                         layers.dropout(spatial_dims, dropout, channelwise=False),
                         layers.conv(spatial_dims, inter, num_classes, 1))
