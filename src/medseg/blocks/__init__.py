"""Reusable network blocks, each for 2D and 3D (``spatial_dims`` in {2, 3})."""

from medseg.blocks.attention import CBAM, ChannelAttention, NonLocalBlock, SpatialAttention, SqueezeExcitation
from medseg.blocks.attention_gate import AttentionGate, MultiAttentionGate
from medseg.blocks.context import (
    ASPP,
    DenseASPP,
    DenseAtrousConv,
    PyramidPooling,
    ResidualMultiKernelPooling,
    SummedASPP,
)
from medseg.blocks.context_residual import (
    ContextResidualModule,
    PreActivationResidualBlock,
    inter_slice_residual,
)
from medseg.blocks.conv import ConvNormAct, DepthwiseSeparableConv, DoubleConv
from medseg.blocks.crf import DenseCRF, build_crf
from medseg.blocks.dense import (
    DenseBlock,
    DenseLayer,
    InceptionBlock,
    NormActConv,
    TransitionDown,
    TransitionUp,
)
from medseg.blocks.heads import DeepSupervisionHeads, FCNHead, SegmentationHead
from medseg.blocks.recurrent import RecurrentConv, RecurrentConvUnit, RecurrentResidualUnit
from medseg.blocks.residual import BottleneckBlock, ResidualBlock, projection_shortcut
from medseg.blocks.sdi import SemanticDetailInfusion, SemanticDetailSkips
from medseg.blocks.shifted_mlp import OverlapPatchEmbed, ShiftedMLP, ShiftedMLPBlock, shift_tokens
from medseg.blocks.subtraction import (
    AllOnesFilter,
    MultiScaleFilters,
    MultiScaleSubtractionUnit,
    SubtractionPyramid,
    SubtractionUnit,
)
from medseg.blocks.upsampling import BilinearUpsampling, MaxUnpool

__all__ = [
    "ASPP", "AllOnesFilter", "AttentionGate", "BilinearUpsampling", "BottleneckBlock", "CBAM",
    "ChannelAttention", "ContextResidualModule", "ConvNormAct", "DeepSupervisionHeads", "DenseASPP",
    "DenseAtrousConv", "DenseBlock", "DenseCRF", "DenseLayer", "DepthwiseSeparableConv", "DoubleConv",
    "FCNHead", "InceptionBlock", "MaxUnpool",
    "MultiAttentionGate", "MultiScaleFilters", "MultiScaleSubtractionUnit", "NonLocalBlock",
    "NormActConv", "OverlapPatchEmbed", "PreActivationResidualBlock", "PyramidPooling", "RecurrentConv",
    "RecurrentConvUnit", "RecurrentResidualUnit", "ResidualBlock", "ResidualMultiKernelPooling",
    "SegmentationHead", "SemanticDetailInfusion", "SemanticDetailSkips", "ShiftedMLP", "ShiftedMLPBlock",
    "SpatialAttention", "SqueezeExcitation", "SubtractionPyramid", "SubtractionUnit", "SummedASPP",
    "TransitionDown", "TransitionUp", "build_crf", "inter_slice_residual", "projection_shortcut",
    "shift_tokens",
]
