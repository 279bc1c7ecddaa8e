"""ENet (Paszke et al. 2016, "ENet: A Deep Neural Network Architecture for Real-Time Semantic Segmentation").

Table 1: an initial block (3x3 stride-2 conv concatenated with max-pooling, 16 maps), stage 1 (a
down-sampling bottleneck to 64 and four regular bottlenecks), stages 2 and 3 at 128 maps (regular, dilated
2/4/8/16 and asymmetric 5x1 + 1x5 bottlenecks; stage 2 starts with a down-sampling bottleneck), the decoder
stages 4 and 5 (up-sampling bottlenecks with max-unpooling by the encoder's pooling indices, 64 then 16
maps) and a final 3x3 transposed conv to the classes at the input size. Bottlenecks (Fig. 2b): 1x1
projection to a quarter of the width, the main conv, 1x1 expansion, spatial dropout (0.01 in stage 1, 0.1
after), added to the shortcut (max-pooled and zero-padded when down-sampling). PReLU with one slope per
layer in the encoder, ReLU in the decoder, no conv biases, as the reference PyTorch code
(davidtvs/PyTorch-ENet ``models/enet.py``). 3D: the same network with 3D convs, pools and unpooling (the
asymmetric conv becomes 5x1x1, 1x5x1, 1x1x5).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.factorized import DownsamplerBlock, FactorizedConv
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model


def _act(kind: str | None, channels: int) -> nn.Module:
    """ENet's activation: PReLU has one shared slope per layer (the reference code's ``nn.PReLU()``)."""
    return layers.activation(kind, 1 if (kind or "").lower() == "prelu" else channels)


class Unit(nn.Sequential):
    """conv (no bias) - norm - optional act, with ENet's single-slope PReLU."""

    def __init__(self, spatial_dims: int, conv: nn.Module, channels: int, norm: str | None,
                 act: str | None) -> None:
        super().__init__(conv, layers.norm(norm, spatial_dims, channels), _act(act, channels))


class RegularBottleneck(nn.Module):
    """Regular / dilated / asymmetric bottleneck (Fig. 2b): ``x + dropout(expand(conv(project(x))))``, act."""

    def __init__(self, spatial_dims: int, channels: int, dilation: int = 1, asymmetric: int = 0,
                 dropout: float = 0.1, internal_ratio: int = 4, norm: str | None = "batch",
                 act: str | None = "prelu") -> None:
        super().__init__()
        inner = channels // internal_ratio
        self.project = Unit(spatial_dims, layers.conv(spatial_dims, channels, inner, 1, bias=False), inner,
                            norm, act)
        if asymmetric:
            main: nn.Module = FactorizedConv(spatial_dims, inner, inner, asymmetric, bias=False,
                                             inner_norm=norm, inner_act=act,
                                             prelu_channels=1 if act == "prelu" else None)
        else:
            main = layers.conv(spatial_dims, inner, inner, 3, dilation=dilation, bias=False)
        self.conv = Unit(spatial_dims, main, inner, norm, act)
        self.expand = Unit(spatial_dims, layers.conv(spatial_dims, inner, channels, 1, bias=False),
                                      channels, norm, act)
        self.drop = layers.dropout(spatial_dims, dropout)
        self.act = _act(act, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.drop(self.expand(self.conv(self.project(x)))))


class DownsamplingBottleneck(nn.Module):
    """Down-sampling bottleneck (Fig. 2b, Sec. 3): the projection is a 2x2 stride-2 conv; the shortcut is a
    2x2 max-pool (its indices kept for the decoder's unpooling) zero-padded to the output width."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dropout: float = 0.1,
                 internal_ratio: int = 4, norm: str | None = "batch", act: str | None = "prelu") -> None:
        super().__init__()
        inner = in_channels // internal_ratio
        self.extra_channels = out_channels - in_channels
        self.pool = layers.max_pool(spatial_dims, 2, return_indices=True)
        self.project = Unit(spatial_dims, layers.conv(spatial_dims, in_channels, inner, 2, 2,
                                                                 padding=0, bias=False), inner, norm, act)
        self.conv = Unit(spatial_dims, layers.conv(spatial_dims, inner, inner, 3, bias=False), inner, norm,
                         act)
        self.expand = Unit(spatial_dims, layers.conv(spatial_dims, inner, out_channels, 1,
                                                                bias=False), out_channels, norm, act)
        self.drop = layers.dropout(spatial_dims, dropout)
        self.act = _act(act, out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        main, indices = self.pool(x)
        main = F.pad(main, [0, 0] * (x.dim() - 2) + [0, self.extra_channels])
        ext = self.drop(self.expand(self.conv(self.project(x))))
        return self.act(main + ext), indices


class UpsamplingBottleneck(nn.Module):
    """Up-sampling bottleneck (Sec. 3): the shortcut is a 1x1 conv-norm then max-unpooling with the indices
    of the matching down-sampling bottleneck; the main conv a 2x2 stride-2 transposed conv."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dropout: float = 0.1,
                 internal_ratio: int = 4, norm: str | None = "batch", act: str | None = "relu") -> None:
        super().__init__()
        inner = in_channels // internal_ratio
        self.shortcut = Unit(spatial_dims, layers.conv(spatial_dims, in_channels, out_channels, 1,
                                                                  bias=False), out_channels, norm, None)
        self.unpool = layers.max_unpool(spatial_dims, 2)
        self.project = Unit(spatial_dims, layers.conv(spatial_dims, in_channels, inner, 1,
                                                                 bias=False), inner, norm, act)
        self.conv = Unit(spatial_dims, layers.conv_transpose(spatial_dims, inner, inner, 2, 2,
                                                                        bias=False), inner, norm, act)
        self.expand = Unit(spatial_dims, layers.conv(spatial_dims, inner, out_channels, 1,
                                                                bias=False), out_channels, norm, None)
        self.drop = layers.dropout(spatial_dims, dropout)
        self.act = _act(act, out_channels)

    def forward(self, x: Tensor, indices: Tensor) -> Tensor:
        main = self.unpool(self.shortcut(x), indices)
        return self.act(main + self.drop(self.expand(self.conv(self.project(x)))))


class ENet(SegmentationModel):
    """ENet (Paszke et al. 2016, Table 1), 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        widths: the widths of the initial block, stage 1 and stages 2-3 (16, 64, 128); the decoder goes
            back through stage 1's and the initial block's widths.
        norm: normalisation (batch norm).
        act: activation of the encoder (``prelu``: one slope per layer, as the reference code).
        decoder_act: activation of the decoder (``relu``).
        dropout: spatial dropout of stage 1 and of the later stages (0.01, 0.1).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 widths: tuple[int, int, int] = (16, 64, 128), norm: str | None = "batch",
                 act: str | None = "prelu", decoder_act: str | None = "relu",
                 dropout: tuple[float, float] = (0.01, 0.1)) -> None:
        super().__init__()
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.input_multiple = 8
        w0, w1, w2 = widths
        p1, p2 = dropout

        def regular(channels: int, p: float, dilation: int = 1, asymmetric: int = 0, a: str | None = act
                    ) -> RegularBottleneck:
            return RegularBottleneck(spatial_dims, channels, dilation, asymmetric, p, norm=norm, act=a)

        self.initial = DownsamplerBlock(spatial_dims, in_channels, w0, pool_kernel=3, bias=False, norm=norm,
                                        act=act, act_channels=1 if act == "prelu" else None)
        self.down1 = DownsamplingBottleneck(spatial_dims, w0, w1, p1, norm=norm, act=act)
        self.stage1 = nn.Sequential(*[regular(w1, p1) for _ in range(4)])
        self.down2 = DownsamplingBottleneck(spatial_dims, w1, w2, p2, norm=norm, act=act)
        stage = [(1, 0), (2, 0), (1, 5), (4, 0), (1, 0), (8, 0), (1, 5), (16, 0)]  # 2.1-2.8 and 3.0-3.7
        self.stage2 = nn.Sequential(*[regular(w2, p2, d, a) for d, a in stage])
        self.stage3 = nn.Sequential(*[regular(w2, p2, d, a) for d, a in stage])
        self.up4 = UpsamplingBottleneck(spatial_dims, w2, w1, p2, norm=norm, act=decoder_act)
        self.stage4 = nn.Sequential(*[regular(w1, p2, a=decoder_act) for _ in range(2)])
        self.up5 = UpsamplingBottleneck(spatial_dims, w1, w0, p2, norm=norm, act=decoder_act)
        self.stage5 = regular(w0, p2, a=decoder_act)
        self.fullconv = layers.conv_transpose(spatial_dims, w0, num_classes, 3, 2, padding=1,
                                              output_padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = self.initial(x)
        x, indices1 = self.down1(x)
        x, indices2 = self.down2(self.stage1(x))
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, indices2))
        x = self.stage5(self.up5(x, indices1))
        return self.fullconv(x)


REFERENCE = "davidtvs/PyTorch-ENet models/enet.py ENet(19)"


@register_model(
    "enet",
    paper="Paszke et al. 2016, ENet: A Deep Neural Network Architecture for Real-Time Semantic Segmentation "
          "(arXiv:1606.02147)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=8,
    references=[Reference(options={"in_channels": 3, "num_classes": 19, "spatial_dims": 2}, params=351_660,
                          source=f"{REFERENCE} (paper: 0.37M)")],
    small_options={"widths": (8, 16, 16)},
)
def build_enet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> ENet:
    """Build :class:`ENet` (see its docstring for the options)."""
    return ENet(spatial_dims, in_channels, num_classes, **options)
