"""Reusable network blocks, each for 2D and 3D (``spatial_dims`` in {2, 3})."""

from medseg.blocks.conv import ConvNormAct, DepthwiseSeparableConv, DoubleConv
from medseg.blocks.heads import DeepSupervisionHeads, SegmentationHead

__all__ = ["ConvNormAct", "DeepSupervisionHeads", "DepthwiseSeparableConv", "DoubleConv", "SegmentationHead"]
