"""Reusable network blocks, each for 2D and 3D (``spatial_dims`` in {2, 3})."""

from medseg.blocks import context_residual, sdi, shifted_mlp, subtraction  # noqa: F401
from medseg.blocks.attention import CBAM, ChannelAttention, NonLocalBlock, SpatialAttention, SqueezeExcitation
from medseg.blocks.attention_gate import AttentionGate, MultiAttentionGate
from medseg.blocks.context import ASPP, DenseASPP, DenseAtrousConv, PyramidPooling, ResidualMultiKernelPooling
from medseg.blocks.conv import ConvNormAct, DepthwiseSeparableConv, DoubleConv
from medseg.blocks.dense import DenseBlock, DenseLayer, InceptionBlock, NormActConv
from medseg.blocks.heads import DeepSupervisionHeads, SegmentationHead
from medseg.blocks.recurrent import RecurrentConv, RecurrentConvUnit, RecurrentResidualUnit
from medseg.blocks.residual import BottleneckBlock, ResidualBlock, projection_shortcut

__all__ = [
    "ASPP", "CBAM", "AttentionGate", "BottleneckBlock", "ChannelAttention", "ConvNormAct",
    "DeepSupervisionHeads", "DenseASPP", "DenseAtrousConv", "DenseBlock", "DenseLayer",
    "DepthwiseSeparableConv", "DoubleConv", "InceptionBlock", "MultiAttentionGate", "NonLocalBlock",
    "NormActConv", "PyramidPooling", "RecurrentConv", "RecurrentConvUnit", "RecurrentResidualUnit",
    "ResidualBlock", "ResidualMultiKernelPooling", "SegmentationHead", "SpatialAttention",
    "SqueezeExcitation", "projection_shortcut",
]
