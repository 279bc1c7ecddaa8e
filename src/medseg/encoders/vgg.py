"""VGG-16 encoders (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks", Table 1 config D), 2D/3D.

The convolutional part is one ``nn.Sequential`` named ``features`` whose indices follow timm's ``vgg16`` /
``vgg16_bn`` (identical to torchvision's): conv, [BN,] ReLU per layer and a 2x2 max-pool between blocks, so
``features.N.weight`` of a timm or torchvision weight file loads key for key (the classifier is ignored).
The returned levels are the last ReLU of each block, before its max-pool (relu1_2, relu2_2, relu3_3,
relu4_3, relu5_3): reductions 1, 2, 4, 8, 16. ``output_stride=8`` (DeepLab, Chen et al. 2015, Sec. 3.1)
makes the last max-pool 3x3 with stride 1 and dilates the convs after it by 2 (the keys do not change).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medseg import layers
from medseg.encoders.base import Encoder, register_encoder
from medseg.errors import MedsegError

VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_CONVS = (2, 2, 3, 3, 3)
"""Config D of Simonyan & Zisserman 2015, Table 1: output channels and 3x3 conv count of the five blocks."""


class VGGEncoder(Encoder):
    """The VGG convolutional blocks as a multi-level encoder.

    Args:
        in_channels: input image channels.
        spatial_dims: 2 or 3 (3D: the same layout with 3x3x3 convs and 2x2x2 pools).
        widths: output channels of the five blocks (default VGG-16's).
        convs: number of 3x3 convs per block (default VGG-16's).
        depth: number of blocks (and returned levels), 1..5; ``depth=4`` stops after relu4_3.
        batch_norm: a BatchNorm after each conv (``vgg16_bn``).
        ceil_mode: max-pools round up (Caffe's pooling, as the official FCN), so odd sizes keep their last
            row and column: level ``i`` is ``ceil(size / 2 ** i)``.
        output_stride: the coarsest level's reduction, a power of 2 (default ``2 ** (depth - 1)``, i.e. 16).
            A smaller value turns the pools that would go beyond it into 3x3 stride-1 pools (padding 1)
            and doubles the dilation of the convs after each such pool (DeepLab's atrous VGG-16).
    """

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2, widths: Sequence[int] = VGG16_WIDTHS,
                 convs: Sequence[int] = VGG16_CONVS, depth: int = 5, batch_norm: bool = False,
                 ceil_mode: bool = False, output_stride: int | None = None) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if not 1 <= depth <= len(convs):
            raise MedsegError(f"VGG depth must be between 1 and {len(convs)}, got {depth}")
        if len(widths) != len(convs):
            raise MedsegError(f"VGG widths needs {len(convs)} values (one per block), got {len(widths)}")
        full_stride = 2 ** (depth - 1)
        output_stride = full_stride if output_stride is None else output_stride
        if output_stride < 1 or output_stride > full_stride or output_stride & (output_stride - 1):
            raise MedsegError(f"VGG output_stride must be a power of 2 up to {full_stride} (depth {depth}), "
                              f"got {output_stride!r}")
        modules: list[nn.Module] = []
        taps: list[int] = []
        reductions: list[int] = []
        channels, reduction, dilation = in_channels, 1, 1
        for block, (width, count) in enumerate(zip(widths[:depth], convs[:depth], strict=True)):
            if block > 0 and reduction * 2 > output_stride:
                modules.append(layers.max_pool(spatial_dims, 3, 1, padding=1))
                dilation *= 2
            elif block > 0:
                modules.append(layers.max_pool(spatial_dims, 2, 2, ceil_mode=ceil_mode))
                reduction *= 2
            reductions.append(reduction)
            for _ in range(count):
                modules.append(layers.conv(spatial_dims, channels, width, 3, padding=dilation,
                                           dilation=dilation, bias=True))
                if batch_norm:
                    modules.append(layers.norm("batch", spatial_dims, width))
                modules.append(layers.activation("relu"))
                channels = width
            taps.append(len(modules) - 1)
        self.features = nn.Sequential(*modules)
        self.taps = taps
        self.spatial_dims = spatial_dims
        self.channels = [int(w) for w in widths[:depth]]
        self.convs = [int(c) for c in convs[:depth]]
        self.ceil_mode = ceil_mode
        self.reductions = reductions
        self.first_conv = "features.0.weight"

    def forward(self, x: Tensor) -> list[Tensor]:
        features: list[Tensor] = []
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.taps:
                features.append(x)
        return features


_PAPER = "Simonyan & Zisserman 2015, Very Deep Convolutional Networks for Large-Scale Image Recognition"


@register_encoder("vgg16", paper=_PAPER, dims=(2, 3), params=14_714_688, timm_name="vgg16")
def vgg16(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> VGGEncoder:
    """VGG-16 (config D) without batch norm; keys as timm's / torchvision's ``vgg16``."""
    return VGGEncoder(in_channels, spatial_dims, batch_norm=False, **options)  # type: ignore[arg-type]


@register_encoder("vgg16_bn", paper=_PAPER, dims=(2, 3), params=14_723_136, timm_name="vgg16_bn")
def vgg16_bn(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> VGGEncoder:
    """VGG-16 (config D) with a BatchNorm after every conv; keys as timm's / torchvision's ``vgg16_bn``."""
    return VGGEncoder(in_channels, spatial_dims, batch_norm=True, **options)  # type: ignore[arg-type]
