"""ResNet-18/34/50/101 encoders (He et al. 2016, "Deep Residual Learning", Table 1), 2D and 3D.

Module names follow timm's ``ResNet`` (``conv1``, ``bn1``, ``layer1``..``layer4`` of
:class:`~medseg.blocks.residual.ResidualBlock` / :class:`~medseg.blocks.residual.BottleneckBlock`), so a
timm or torchvision weight file loads key for key (``fc`` is ignored). Returned levels: the stem's ReLU
output (1/2, before the max-pool) and the four stages (1/4, 1/8, 1/16, 1/32).

Options shared by every ResNet: ``deep_stem`` (three 3x3 convs instead of the 7x7, timm's ``stem_type='deep'``
with ``conv1.0/1/3/4/6`` keys; ``resnet50s``/``resnet101s`` are the PSPNet ResNets of hszhao/semseg) and
``output_stride`` 8 or 16 (the last stages' strides become dilations, as torchvision's
``replace_stride_with_dilation`` and timm's ``output_stride``: the reductions become e.g. 1/8, 1/8 at 8).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.residual import BottleneckBlock, ResidualBlock
from medseg.encoders.base import Encoder, register_encoder
from medseg.errors import MedsegError

STAGE_WIDTHS = (64, 128, 256, 512)
"""Base widths of the four stages (He et al. 2016, Table 1); bottleneck stages output 4x these."""

OUTPUT_STRIDES = (8, 16, 32)


def stage_strides(output_stride: int = 32) -> list[tuple[int, int]]:
    """``(stride, dilation)`` of the four stages for an output stride of 8, 16 or 32.

    Stage 1 keeps stride 1 (after the stem's 1/4); each later stage halves the resolution until the output
    stride is reached, then keeps it and doubles the dilation instead (OS 8: layer3 dilation 2, layer4
    dilation 4; OS 16: layer4 dilation 2), as torchvision's ``replace_stride_with_dilation``.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise MedsegError(f"ResNet output_stride must be one of {list(OUTPUT_STRIDES)}, "
                          f"got {output_stride!r}")
    reduction, dilation, strides = 4, 1, [(1, 1)]
    for _ in range(3):
        if reduction * 2 <= output_stride:
            reduction *= 2
            strides.append((2, dilation))
        else:
            dilation *= 2
            strides.append((1, dilation))
    return strides


def kaiming_init(module: nn.Module) -> None:
    """He-normal (fan-out) conv weights and unit/zero norm affine, as timm's and the official ResNets."""
    for m in module.modules():
        if any(p.is_meta for p in m.parameters(recurse=False)):
            continue  # nothing to initialise (and normal_ on meta tensors is slow the first time)
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNetEncoder(Encoder):
    """A ResNet trunk returning five levels ``[stem, layer1, layer2, layer3, layer4]``.

    Subclasses change the stem (:meth:`make_stem`) and the residual unit (:meth:`make_block`); the
    stage layout (first block of stages 2-4 strided) is shared.

    Args:
        in_channels: input image channels.
        spatial_dims: 2 or 3 (3D: the same layout with cubic kernels).
        depths: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        bottleneck: bottleneck units (output = width * 4) instead of basic units.
        widths: base widths of the four stages.
        stem_width: output channels of the 7x7 stem conv (deep stem: of its first two convs; it outputs
            twice this).
        norm: the trunk's normalisation (:func:`medseg.layers.norm`): ``batch``, or ``frozen_batch`` for
            torchvision's detection backbones (statistics and affine as buffers), ``group``, ...
        deep_stem: three 3x3 conv-norm-ReLU (in -> w -> w -> 2w, the first strided) instead of the 7x7 conv
            (Bag of Tricks' ResNet-C; timm ``stem_type='deep'``; hszhao/semseg's PSPNet ResNet).
        output_stride: 32, or 16 / 8 with dilated last stages (:func:`stage_strides`); a stage's first block
            keeps the previous dilation in its strided conv (torchvision, timm).
    """

    expansion_bottleneck = 4

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2, depths: Sequence[int] = (2, 2, 2, 2),
                 bottleneck: bool = False, widths: Sequence[int] = STAGE_WIDTHS,
                 stem_width: int = 64, norm: str = "batch", deep_stem: bool = False,
                 output_stride: int = 32) -> None:
        super().__init__()
        self.norm = norm  # read by make_stem / make_block while the trunk is built
        self.deep_stem = deep_stem
        strides = stage_strides(output_stride)
        layers.check_spatial_dims(spatial_dims)
        if len(widths) != 4 or len(depths) != 4:
            raise MedsegError(f"ResNet widths and depths need 4 values each, got {list(widths)} and "
                              f"{list(depths)}")
        if min(depths) < 1 or min(widths) < 1 or stem_width < 1:
            raise MedsegError("ResNet widths, depths and stem_width must be positive")
        self.spatial_dims = spatial_dims
        self.bottleneck = bottleneck
        stem_out = self.make_stem(spatial_dims, in_channels, stem_width)
        self.maxpool = layers.max_pool(spatial_dims, 3, 2, padding=1)
        channels = [stem_out]
        in_ch, previous_dilation, reduction = stem_out, 1, 4
        self.reductions = [2]
        for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            stage_stride, dilation = strides[index]
            reduction *= stage_stride
            blocks = []
            for b in range(depth):
                blocks.append(self.make_block(spatial_dims, in_ch, width, stage_stride if b == 0 else 1,
                                              first=b == 0, dilation=dilation,
                                              first_dilation=previous_dilation if b == 0 else None))
                in_ch = width * (self.expansion_bottleneck if bottleneck else 1)
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            channels.append(in_ch)
            self.reductions.append(reduction)
            previous_dilation = dilation
        self.channels = channels
        self.dilations = [1] + [dilation for _, dilation in strides]
        """The dilation of each level's convs (a stage's first block keeps the previous one)."""
        kaiming_init(self)

    def make_stem(self, spatial_dims: int, in_channels: int, stem_width: int) -> int:
        """The 7x7 stride-2 conv, BN and ReLU (timm's ``conv1``/``bn1``/``act1``), or the deep stem as timm's
        ``conv1`` Sequential (indices 0, 1, 3, 4, 6) plus ``bn1``; returns its output channels."""
        out = stem_width
        if self.deep_stem:
            out = 2 * stem_width
            self.conv1 = nn.Sequential(
                layers.conv(spatial_dims, in_channels, stem_width, 3, 2, padding=1, bias=False),
                layers.norm(self.norm, spatial_dims, stem_width),
                layers.activation("relu"),
                layers.conv(spatial_dims, stem_width, stem_width, 3, padding=1, bias=False),
                layers.norm(self.norm, spatial_dims, stem_width),
                layers.activation("relu"),
                layers.conv(spatial_dims, stem_width, out, 3, padding=1, bias=False),
            )
            self.first_conv = "conv1.0.weight"
        else:
            self.conv1 = layers.conv(spatial_dims, in_channels, stem_width, 7, 2, padding=3, bias=False)
            self.first_conv = "conv1.weight"
        self.bn1 = layers.norm(self.norm, spatial_dims, out)
        self.act1 = layers.activation("relu")
        return out

    def make_block(self, spatial_dims: int, in_channels: int, width: int, stride: int, first: bool,
                   dilation: int = 1, first_dilation: int | None = None) -> nn.Module:
        """One residual unit of a stage (``first``: the stage's first block; ``first_dilation``: the
        dilation of its strided conv when it differs from the stage's ``dilation``)."""
        if self.bottleneck:
            return BottleneckBlock(spatial_dims, in_channels, width, stride, dilation,
                                   first_dilation=first_dilation, norm=self.norm)
        return ResidualBlock(spatial_dims, in_channels, width, stride, dilation, first_dilation,
                             norm=self.norm)

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A deep stem also takes hszhao/semseg's layout (``conv1/bn1/conv2/bn2/conv3/bn3``, the PSPNet
        ImageNet files): renamed to timm's ``conv1.0/1/3/4/6`` and ``bn1``; other layouts are unchanged."""
        if not self.deep_stem or "conv2.weight" not in state or "conv1.0.weight" in state:
            return state
        renames = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4",
                   "conv3": "conv1.6", "bn3": "bn1"}
        converted = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            converted[f"{renames[head]}.{rest}" if head in renames and rest else key] = value
        return converted

    def stem(self, x: Tensor) -> Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward(self, x: Tensor) -> list[Tensor]:
        x0 = self.stem(x)
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x0, x1, x2, x3, x4]


_PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition"


@register_encoder("resnet18", paper=_PAPER, dims=(2, 3), params=11_176_512, timm_name="resnet18")
def resnet18(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> ResNetEncoder:
    """ResNet-18: basic units, depths (2, 2, 2, 2); channels [64, 64, 128, 256, 512]."""
    options = {"depths": (2, 2, 2, 2), **options}
    return ResNetEncoder(in_channels, spatial_dims, bottleneck=False, **options)  # type: ignore[arg-type]


@register_encoder("resnet34", paper=_PAPER, dims=(2, 3), params=21_284_672, timm_name="resnet34")
def resnet34(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> ResNetEncoder:
    """ResNet-34: basic units, depths (3, 4, 6, 3); channels [64, 64, 128, 256, 512]."""
    options = {"depths": (3, 4, 6, 3), **options}
    return ResNetEncoder(in_channels, spatial_dims, bottleneck=False, **options)  # type: ignore[arg-type]


@register_encoder("resnet50", paper=_PAPER, dims=(2, 3), params=23_508_032, timm_name="resnet50")
def resnet50(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> ResNetEncoder:
    """ResNet-50: bottleneck units, depths (3, 4, 6, 3); channels [64, 256, 512, 1024, 2048]."""
    options = {"depths": (3, 4, 6, 3), **options}
    return ResNetEncoder(in_channels, spatial_dims, bottleneck=True, **options)  # type: ignore[arg-type]


@register_encoder("resnet101", paper=_PAPER, dims=(2, 3), params=42_500_160, timm_name="resnet101")
def resnet101(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> ResNetEncoder:
    """ResNet-101: bottleneck units, depths (3, 4, 23, 3); channels [64, 256, 512, 1024, 2048]."""
    options = {"depths": (3, 4, 23, 3), **options}
    return ResNetEncoder(in_channels, spatial_dims, bottleneck=True, **options)  # type: ignore[arg-type]


_PSPNET_RESNET = "hszhao/semseg model/resnet.py (deep_base)"


@register_encoder("resnet50s", paper=f"{_PAPER}; deep stem as {_PSPNET_RESNET}", dims=(2, 3),
                  params=23_631_808, timm_name="resnet50s")
def resnet50s(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> ResNetEncoder:
    """ResNet-50 with the 64-64-128 deep stem (PSPNet's; timm ``resnet50s``); channels [128, 256, ..]."""
    options = {"depths": (3, 4, 6, 3), "deep_stem": True, "stem_width": 64, **options}
    return ResNetEncoder(in_channels, spatial_dims, bottleneck=True, **options)  # type: ignore[arg-type]


@register_encoder("resnet101s", paper=f"{_PAPER}; deep stem as {_PSPNET_RESNET}", dims=(2, 3),
                  params=42_623_936, timm_name="resnet101s")
def resnet101s(in_channels: int = 3, spatial_dims: int = 2, **options: object) -> ResNetEncoder:
    """ResNet-101 with the 64-64-128 deep stem (PSPNet's; timm ``resnet101s``)."""
    options = {"depths": (3, 4, 23, 3), "deep_stem": True, "stem_width": 64, **options}
    return ResNetEncoder(in_channels, spatial_dims, bottleneck=True, **options)  # type: ignore[arg-type]
