"""Aligned Xception-65 (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution", Sec. 3.3
and Fig. 4), the DeepLabV3+ backbone, 2D and 3D.

The paper's modified Xception: more middle-flow blocks (16) than Chollet's Xception, every max-pool
replaced by a strided depthwise-separable conv, and batch norm after every depthwise conv. Module names
follow timm's ``xception65`` (timm/models/xception_aligned.py, the port of the TF DeepLab checkpoints):
``stem.0``/``stem.1`` (3x3 conv-BN-ReLU, 32 then 64), ``blocks.N`` of :class:`XceptionModule` with
``shortcut.conv``/``shortcut.bn`` and ``stack.conv1..3`` of :class:`SeparableConvBN`
(``conv_dw``/``bn_dw``/``conv_pw``/``bn_pw``), so a timm weight file loads key for key (``head`` is
ignored). Convs have no bias; BN eps is 1e-3 as the TF checkpoints.

As the official code (and timm), a ReLU comes *before* each separable conv of the entry/middle/exit
blocks and the ReLU inside the separable conv (after the depthwise BN) is only used by the last exit-flow
block; ``depthwise_relu=True`` adds it everywhere, as the paper's text reads. Returned levels are timm's
``features_only`` taps: the ReLU'd input of the strided conv of each down-sampling block (128, 256, 728,
1024 channels at 1/2, 1/4, 1/8, 1/16) and the exit flow's output (2048 at 1/32). ``output_stride`` 16 or 8
turns the later strides into dilation (timm's rule: the block losing its stride keeps the old dilation).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medseg import layers
from medseg.encoders.base import Encoder, register_encoder
from medseg.encoders.resnet import kaiming_init
from medseg.errors import MedsegError

BN_EPS = 1e-3
OUTPUT_STRIDES = (8, 16, 32)

XCEPTION65_BLOCKS: tuple[tuple[int, tuple[int, int, int], int], ...] = (
    # entry flow
    (64, (128, 128, 128), 2),
    (128, (256, 256, 256), 2),
    (256, (728, 728, 728), 2),
    # middle flow: 16 identical blocks
    *((728, (728, 728, 728), 1),) * 16,
    # exit flow (the last block has no shortcut and ReLUs inside its separable convs)
    (728, (728, 1024, 1024), 2),
    (1024, (1536, 1536, 2048), 1),
)
"""``(in_channels, (out1, out2, out3), stride)`` of each block of Aligned Xception-65 (timm's block_cfg)."""


class ConvBNAct(nn.Module):
    """Conv (no bias), BN, optional ReLU: timm's ``ConvNormAct`` layout (``conv``, ``bn``)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = layers.conv(spatial_dims, in_channels, out_channels, kernel_size, stride,
                                padding=kernel_size // 2, bias=False)
        self.bn = layers.norm("batch", spatial_dims, out_channels)
        self.act = layers.activation("relu" if act else "none")

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SeparableConvBN(nn.Module):
    """3x3 depthwise conv, BN, [ReLU], 1x1 pointwise conv, BN, [ReLU] (timm's ``SeparableConv2d``)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                 dilation: int = 1, act_depthwise: bool = False, act_pointwise: bool = False) -> None:
        super().__init__()
        self.conv_dw = layers.conv(spatial_dims, in_channels, in_channels, 3, stride, padding=dilation,
                                   dilation=dilation, groups=in_channels, bias=False)
        self.bn_dw = layers.norm("batch", spatial_dims, in_channels)
        self.act_dw = layers.activation("relu" if act_depthwise else "none")
        self.conv_pw = layers.conv(spatial_dims, in_channels, out_channels, 1, padding=0, bias=False)
        self.bn_pw = layers.norm("batch", spatial_dims, out_channels)
        self.act_pw = layers.activation("relu" if act_pointwise else "none")

    def forward(self, x: Tensor) -> Tensor:
        return self.act_pw(self.bn_pw(self.conv_pw(self.act_dw(self.bn_dw(self.conv_dw(x))))))


class XceptionModule(nn.Module):
    """Three separable convs (the last one strided) plus a shortcut (Fig. 4 of Chen et al. 2018).

    ``start_with_relu``: a ReLU before each separable conv (``stack.act1..3``); otherwise the separable
    convs carry their own ReLUs. The shortcut is a strided 1x1 conv-BN when the shape changes, identity
    otherwise, absent with ``no_skip``. ``forward`` returns the output and the input of the last
    separable conv (after ``act3``: the pre-stride feature the encoder returns).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: Sequence[int], stride: int = 1,
                 dilation: int = 1, start_with_relu: bool = True, no_skip: bool = False,
                 depthwise_relu: bool = False) -> None:
        super().__init__()
        self.out_channels = int(out_channels[-1])
        self.no_skip = no_skip
        self.shortcut: nn.Module | None = None
        if not no_skip and (self.out_channels != in_channels or stride != 1):
            self.shortcut = ConvBNAct(spatial_dims, in_channels, self.out_channels, 1, stride, act=False)
        self.stack = nn.Sequential()
        channels = in_channels
        for i, width in enumerate(out_channels):
            if start_with_relu:
                self.stack.add_module(f"act{i + 1}", nn.ReLU(inplace=i > 0))
            self.stack.add_module(f"conv{i + 1}", SeparableConvBN(
                spatial_dims, channels, width, stride if i == 2 else 1, dilation,
                act_depthwise=depthwise_relu or not start_with_relu, act_pointwise=not start_with_relu))
            channels = width

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        modules = list(self.stack.children())
        y = x
        for module in modules[:-1]:
            y = module(y)
        tap = y
        y = modules[-1](y)
        if not self.no_skip:
            y = y + (x if self.shortcut is None else self.shortcut(x))
        return y, tap


class XceptionEncoder(Encoder):
    """Aligned Xception as a five-level encoder (see the module docstring).

    Args:
        in_channels: input image channels.
        spatial_dims: 2 or 3.
        blocks: ``(in, (out1, out2, out3), stride)`` per block; the last block is the exit flow's
            no-shortcut block with inner ReLUs (default: Xception-65's).
        output_stride: 32 (default), 16 or 8.
        depthwise_relu: a ReLU after every depthwise BN (the paper's text) instead of only in the last
            block (the official code and timm); parameters and keys are the same.
    """

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2,
                 blocks: Sequence[tuple[int, Sequence[int], int]] = XCEPTION65_BLOCKS,
                 output_stride: int = 32, depthwise_relu: bool = False) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if output_stride not in OUTPUT_STRIDES:
            raise MedsegError(f"Xception output_stride must be one of {OUTPUT_STRIDES}, "
                              f"got {output_stride!r}")
        if len(blocks) < 2 or any(len(out) != 3 for _, out, _ in blocks):
            raise MedsegError("Xception blocks need at least 2 entries of (in, (out1, out2, out3), stride)")
        self.spatial_dims = spatial_dims
        stem_width = int(blocks[0][0])
        self.stem = nn.Sequential(ConvBNAct(spatial_dims, in_channels, stem_width // 2, 3, 2),
                                  ConvBNAct(spatial_dims, stem_width // 2, stem_width, 3, 1))
        self.blocks = nn.ModuleList()
        taps: list[int] = []
        channels: list[int] = []
        reductions: list[int] = []
        reduction, dilation = 2, 1
        for index, (block_in, block_out, stride) in enumerate(blocks):
            last = index == len(blocks) - 1
            block_dilation = dilation
            if stride > 1:
                taps.append(index)
                channels.append(int(block_out[1]))
                reductions.append(reduction)
                if reduction * stride > output_stride:
                    dilation, stride = dilation * stride, 1
                else:
                    reduction *= stride
            self.blocks.append(XceptionModule(spatial_dims, int(block_in), [int(c) for c in block_out],
                                              stride, block_dilation, start_with_relu=not last,
                                              no_skip=last, depthwise_relu=depthwise_relu))
        self.taps = taps
        self.channels = channels + [self.blocks[-1].out_channels]
        self.reductions = reductions + [reduction]
        self.output_stride = output_stride
        self.first_conv = "stem.0.conv.weight"
        kaiming_init(self)
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.eps = BN_EPS

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features: list[Tensor] = []
        for index, block in enumerate(self.blocks):
            x, tap = block(x)
            if index in self.taps:
                features.append(tap)
        features.append(x)
        return features


@register_encoder("xception65", paper="Chen et al. 2018, Encoder-Decoder with Atrous Separable Convolution "
                  "(Aligned Xception-65)", dims=(2, 3), params=37_867_312, timm_name="xception65")
def xception65(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> XceptionEncoder:
    """Aligned Xception-65; channels [128, 256, 728, 1024, 2048] at 1/2 .. 1/32."""
    return XceptionEncoder(in_channels, spatial_dims, **options)  # type: ignore[arg-type]
