"""Fast-SCNN (Poudel et al. 2019, "Fast-SCNN: Fast Semantic Segmentation Network", BMVC).

Table 1: learning to down-sample (a 3x3 stride-2 conv to 32 and two stride-2 depthwise-separable convs to
48 and 64: 1/8), the global feature extractor (MobileNetV2 bottlenecks, expansion 6: three at 64 with
stride 2, three at 96 with stride 2, three at 128; then a pyramid pooling module: 1/32), the feature fusion
module (the 1/32 features up-sampled x4, a depthwise conv and a 1x1 conv-BN, added to a 1x1 conv-BN of the
1/8 features, ReLU) and the classifier (two depthwise-separable convs, dropout, 1x1 conv; bilinear
up-sampling x8). Layer details and the optional auxiliary head on the 1/8 features as the reference code
(Tramac/Fast-SCNN-pytorch ``models/fast_scnn.py``); its first conv has no padding, ours "same" padding (the
same parameters; the sizes stay exact multiples).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.context import PyramidPooling
from medseg.blocks.conv import ConvNormAct, DepthwiseSeparableConv
from medseg.blocks.factorized import InvertedResidual
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.outputs import SegOutput


class LearningToDownsample(nn.Sequential):
    """conv 3x3/2 then two depthwise-separable convs with stride 2 (1/8 of the input)."""

    def __init__(self, spatial_dims: int, in_channels: int, widths: tuple[int, int, int],
                 norm: str | None = "batch", act: str | None = "relu") -> None:
        a, b, c = widths
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, a, 3, 2, norm=norm, act=act),
            DepthwiseSeparableConv(spatial_dims, a, b, 3, 2, norm=norm, act=act, act_depthwise=True),
            DepthwiseSeparableConv(spatial_dims, b, c, 3, 2, norm=norm, act=act, act_depthwise=True))


class GlobalFeatureExtractor(nn.Module):
    """Three stages of inverted residuals (strides 2, 2, 1) and pyramid pooling (bins 1, 2, 3, 6)."""

    def __init__(self, spatial_dims: int, in_channels: int, widths: tuple[int, int, int], out_channels: int,
                 expansion: int = 6, blocks: tuple[int, int, int] = (3, 3, 3), norm: str | None = "batch",
                 act: str | None = "relu") -> None:
        super().__init__()
        stages: list[nn.Module] = []
        channels = in_channels
        for width, count, stride in zip(widths, blocks, (2, 2, 1), strict=True):
            for i in range(count):
                step = stride if i == 0 else 1
                stages.append(InvertedResidual(spatial_dims, channels, width, expansion, step, norm, act))
                channels = width
        self.bottlenecks = nn.Sequential(*stages)
        self.ppm = PyramidPooling(spatial_dims, channels, norm=norm, act=act)
        self.project = ConvNormAct(spatial_dims, self.ppm.out_channels, out_channels, 1, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.ppm(self.bottlenecks(x)))


class FeatureFusion(nn.Module):
    """Feature fusion module: ``act(conv-norm(high) + conv-norm(dwconv(up x4(low))))``."""

    def __init__(self, spatial_dims: int, high_channels: int, low_channels: int, out_channels: int,
                 norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()
        self.dwconv = ConvNormAct(spatial_dims, low_channels, out_channels, 3, groups=low_channels, norm=norm,
                                  act=act)
        self.low = ConvNormAct(spatial_dims, out_channels, out_channels, 1, norm=norm, act=None, bias=True)
        self.high = ConvNormAct(spatial_dims, high_channels, out_channels, 1, norm=norm, act=None, bias=True)
        self.act = layers.activation(act, out_channels)

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        low = layers.resize_to(low, list(high.shape[2:]), align_corners=True)
        return self.act(self.high(high) + self.low(self.dwconv(low)))


class FastSCNN(SegmentationModel):
    """Fast-SCNN (Poudel et al. 2019, Table 1), 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        downsample_widths: the learning-to-down-sample widths (32, 48, 64).
        block_widths: the bottleneck stage widths (64, 96, 128).
        channels: the width of the global features, the fusion and the classifier (128).
        expansion: expansion factor of the bottlenecks (6).
        blocks: bottlenecks per stage ((3, 3, 3)).
        dropout: dropout before the last 1x1 conv (0.1).
        aux: the reference code's auxiliary head on the 1/8 features (3x3 conv-BN-ReLU to 32, dropout, 1x1);
            in train mode the forward returns ``SegOutput(logits, aux=[aux logits])``.
        norm, act: normalisation and activation (batch norm, ReLU).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 downsample_widths: tuple[int, int, int] = (32, 48, 64),
                 block_widths: tuple[int, int, int] = (64, 96, 128), channels: int = 128, expansion: int = 6,
                 blocks: tuple[int, int, int] = (3, 3, 3), dropout: float = 0.1, aux: bool = False,
                 norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.input_multiple = 32
        high = downsample_widths[-1]
        self.learning_to_downsample = LearningToDownsample(spatial_dims, in_channels, downsample_widths, norm,
                                                           act)
        self.global_features = GlobalFeatureExtractor(spatial_dims, high, block_widths, channels, expansion,
                                                      blocks, norm, act)
        self.fusion = FeatureFusion(spatial_dims, high, channels, channels, norm, act)
        self.classifier = nn.Sequential(
            DepthwiseSeparableConv(spatial_dims, channels, channels, norm=norm, act=act, act_depthwise=True),
            DepthwiseSeparableConv(spatial_dims, channels, channels, norm=norm, act=act, act_depthwise=True),
            layers.dropout(spatial_dims, dropout, channelwise=False),
            layers.conv(spatial_dims, channels, num_classes, 1))
        self.aux_head = nn.Sequential(
            ConvNormAct(spatial_dims, high, 32, 3, norm=norm, act=act),
            layers.dropout(spatial_dims, 0.1, channelwise=False),
            layers.conv(spatial_dims, 32, num_classes, 1)) if aux else None

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        size = list(x.shape[2:])
        high = self.learning_to_downsample(x)
        fused = self.fusion(high, self.global_features(high))
        logits = layers.resize_to(self.classifier(fused), size, align_corners=True)
        if self.training and self.aux_head is not None:
            return SegOutput(logits, aux=[layers.resize_to(self.aux_head(high), size, align_corners=True)])
        return logits


REFERENCE = "Tramac/Fast-SCNN-pytorch models/fast_scnn.py FastSCNN(19)"


@register_model(
    "fast_scnn",
    paper="Poudel et al. 2019, Fast-SCNN: Fast Semantic Segmentation Network (BMVC)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=32,
    references=[
        Reference(options={"in_channels": 3, "num_classes": 19, "spatial_dims": 2}, params=1_138_051,
                  source=f"{REFERENCE} (paper: 1.11M)"),
        Reference(options={"in_channels": 3, "num_classes": 19, "spatial_dims": 2, "aux": True},
                  params=1_157_174, source=f"{REFERENCE.replace('(19)', '(19, aux=True)')}"),
    ],
    small_options={"downsample_widths": (4, 6, 8), "block_widths": (8, 8, 8), "channels": 8, "expansion": 2,
                   "blocks": (1, 1, 1)},
    aliases=("fastscnn",),
)
def build_fast_scnn(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> FastSCNN:
    """Build :class:`FastSCNN` (see its docstring for the options)."""
    return FastSCNN(spatial_dims, in_channels, num_classes, **options)
