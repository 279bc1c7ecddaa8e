"""V-Net (Milletari et al. 2016, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
Segmentation").

Fig. 2: every stage learns a residual function: its input is added to the output of its last 5x5x5
convolution. The left part halves the resolution with 2x2x2 stride-2 convolutions (doubling the channels,
16-256), the right part doubles it with 2x2x2 transposed convolutions and concatenates the features of
the left part before its convolutions. PReLU non-linearities throughout (the paper); batch norm after
every convolution and the number of convolutions per stage follow the reference implementations
(MONAI ``VNet``, vnet.pytorch). In 2D every kernel is 5x5 / 2x2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model

REFERENCE_DOWN_CONVS = (1, 2, 3, 2)
REFERENCE_UP_CONVS = (2, 2, 1, 1)


class ResidualConvs(nn.Module):
    """The residual part of a V-Net stage (Fig. 2): ``act(convs(dropout(x)) + x)`` with ``num_convs``
    ``kernel_size`` conv-norm-act layers that keep the channels."""

    def __init__(self, spatial_dims: int, channels: int, num_convs: int, kernel_size: int = 5,
                 norm: str | None = "batch", act: str | None = "prelu", bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = layers.dropout(spatial_dims, dropout)
        self.convs = nn.Sequential(*(ConvNormAct(spatial_dims, channels, channels, kernel_size, norm=norm,
                                                 act=act, bias=bias) for _ in range(num_convs)))
        self.act = layers.activation(act, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.convs(self.dropout(x)) + x)


class VNetInputStage(nn.Module):
    """Stage 1: one ``kernel_size`` conv (with norm) to ``channels``, plus the input repeated along the
    channels (truncated when ``channels`` is not a multiple of ``in_channels``), then the activation."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, kernel_size: int = 5,
                 norm: str | None = "batch", act: str | None = "prelu", bias: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.repeats = -(-channels // in_channels)
        self.conv = ConvNormAct(spatial_dims, in_channels, channels, kernel_size, norm=norm, act=None,
                                bias=bias)
        self.act = layers.activation(act, channels)

    def forward(self, x: Tensor) -> Tensor:
        repeats = [1, self.repeats] + [1] * (x.dim() - 2)
        return self.act(self.conv(x) + x.repeat(repeats).narrow(1, 0, self.channels))


class VNetDownStage(nn.Module):
    """A left-part stage: 2x2(x2) stride-2 conv doubling the channels (with norm and act), then
    :class:`ResidualConvs` on the down-sampled map."""

    def __init__(self, spatial_dims: int, in_channels: int, num_convs: int, kernel_size: int = 5,
                 norm: str | None = "batch", act: str | None = "prelu", bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        channels = 2 * in_channels
        self.down = ConvNormAct(spatial_dims, in_channels, channels, 2, stride=2, padding="valid", norm=norm,
                                act=act, bias=bias)
        self.residual = ResidualConvs(spatial_dims, channels, num_convs, kernel_size, norm, act, bias,
                                      dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(self.down(x))


class VNetUpStage(nn.Module):
    """A right-part stage: 2x2(x2) stride-2 transposed conv to ``out_channels / 2`` (with norm and act),
    concatenation with the left part's feature (``out_channels / 2`` channels), :class:`ResidualConvs`."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, num_convs: int,
                 kernel_size: int = 5, norm: str | None = "batch", act: str | None = "prelu",
                 bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        half = out_channels // 2
        self.up = nn.Sequential(layers.conv_transpose(spatial_dims, in_channels, half, 2, 2),
                                layers.norm(norm, spatial_dims, half), layers.activation(act, half))
        self.residual = ResidualConvs(spatial_dims, out_channels, num_convs, kernel_size, norm, act, bias,
                                      dropout)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.residual(torch.cat([self.up(x), skip], dim=1))


class VNetOutputStage(nn.Sequential):
    """The output: a ``kernel_size`` conv-norm-act to ``num_classes`` channels, then a 1x1 conv."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, kernel_size: int = 5,
                 norm: str | None = "batch", act: str | None = "prelu", bias: bool = True) -> None:
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, num_classes, kernel_size, norm=norm, act=act, bias=bias),
            layers.conv(spatial_dims, num_classes, num_classes, 1))


class VNet(SegmentationModel):
    """V-Net (Milletari et al. 2016, Fig. 2), 3D or 2D.

    Stage widths are ``features * 2**i`` for the input stage and the ``len(down_convs)`` down stages
    (16-256 by default); the up stage at level ``i`` outputs ``2 * features * 2**i`` channels (its
    up-convolution's half concatenated with the left part's feature), so the last one has 32.

    Args:
        spatial_dims: 3 (the paper) or 2.
        in_channels: image channels.
        num_classes: output channels.
        features: width of the input stage.
        down_convs: convolutions of the residual part of each down stage, finest first (default 1,2,3,2 as
            in MONAI; the paper's Fig. 2 is 2,3,3,3 and vnet.pytorch 1,2,3,3). Its length is the number of
            down-samplings; inputs must be multiples of ``2 ** len(down_convs)``.
        up_convs: convolutions of each up stage, coarsest first (default 2,2,1,1; the paper 3,3,2,1).
        kernel_size: kernel of the stage convolutions (5).
        norm: normalisation after every convolution (``batch`` default, as the reference code).
        act: activation (``prelu`` as in the paper, one slope per channel; the references use ``elu``).
        bias: convolution biases (the reference count has them, next to batch norm).
        dropout: channel dropout on the residual branch of the two coarsest down and up stages
            (vnet.pytorch uses 0.2; default 0).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, features: int = 16,
                 down_convs: Sequence[int] = REFERENCE_DOWN_CONVS,
                 up_convs: Sequence[int] = REFERENCE_UP_CONVS, kernel_size: int = 5,
                 norm: str | None = "batch", act: str | None = "prelu", bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        down_convs, up_convs = tuple(down_convs), tuple(up_convs)
        if len(down_convs) != len(up_convs) or not down_convs:
            raise MedsegError(f"down_convs and up_convs need the same non-zero length, got {down_convs} and "
                              f"{up_convs}")
        depth = len(down_convs)
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.input_multiple = 2**depth
        widths = [features * 2**i for i in range(depth + 1)]
        common = {"kernel_size": kernel_size, "norm": norm, "act": act, "bias": bias}

        def stage_dropout(level: int) -> float:
            return dropout if level >= depth - 1 else 0.0

        self.input_stage = VNetInputStage(spatial_dims, in_channels, features, **common)
        self.down_stages = nn.ModuleList(
            VNetDownStage(spatial_dims, widths[i], n, dropout=stage_dropout(i + 1), **common)
            for i, n in enumerate(down_convs))
        self.up_stages = nn.ModuleList(
            VNetUpStage(spatial_dims, widths[-1] if level == depth - 1 else 2 * widths[level + 1],
                        2 * widths[level], n, dropout=stage_dropout(level + 1), **common)
            for level, n in zip(reversed(range(depth)), up_convs, strict=True))
        self.output_stage = VNetOutputStage(spatial_dims, 2 * features, num_classes, **common)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = self.input_stage(x)
        skips = [x]
        for stage in self.down_stages:
            x = stage(x)
            skips.append(x)
        for i, stage in enumerate(self.up_stages):
            x = stage(x, skips[-2 - i])
        return self.output_stage(x)


@register_model(
    "vnet",
    paper="Milletari et al. 2016, V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image "
          "Segmentation (3DV)",
    dims=(2, 3),
    default_loss="dice",
    input_multiple=16,
    references=[
        Reference(options={"in_channels": 1, "num_classes": 2, "spatial_dims": 3, "act": "elu"},
                  params=45_600_316,
                  source="MONAI networks/nets/vnet.py topology (convs 1,2,3,2 / 2,2,1,1, ELU, batch norm) "
                         "with conv biases, 2 classes"),
    ],
    small_options={"features": 4},
)
def build_vnet(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> VNet:
    """Build :class:`VNet` (see its docstring for the options)."""
    return VNet(spatial_dims, in_channels, num_classes, **options)
