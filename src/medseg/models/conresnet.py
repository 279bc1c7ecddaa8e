"""ConResNet (Zhang et al., "Inter-slice Context Residual Learning for 3D Medical Image Segmentation",
IEEE TMI 2020).

Fig. 2 of the paper: a shared encoder of pre-activation residual blocks (GroupNorm, weight-standardised
convs), a segmentation decoder and a context residual decoder bridged at 1/4, 1/2 and full resolution by
:class:`~medseg.blocks.context_residual.ContextResidualModule`. The residual decoder starts from the
input's own inter-slice residual ``|x[s] - x[s-1]|``, computed here from the image (the official code takes
it from the data loader) and resized to 1/4. Unlike the official code the crop size is not baked in: any
input whose sizes are multiples of 8 works.

Training mode returns ``SegOutput(seg, extras={"residual_logits": [res, res x2, res x4]})``, every map at
the input size; eval mode the segmentation logits only. The default loss is
:class:`~medseg.losses.conresnet.ConResNetLoss` (registered as ``conresnet``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.context_residual import (
    ContextResidualModule,
    PreActivationConv,
    PreActivationResidualBlock,
    check_slice_axis,
    inter_slice_residual,
    standardized_conv,
)
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.outputs import SegOutput

RESIDUAL_KEY = "residual_logits"
"""Key of the residual logits ``[res, res x2, res x4]`` in the training output's ``extras``."""


def _stage(spatial_dims: int, in_channels: int, out_channels: int, blocks: int, dilation: int = 1,
           stride: int = 2) -> nn.Sequential:
    """A strided GN-ReLU-Conv3x3 to ``out_channels`` (none at stride 1 and equal widths), then residual
    blocks."""
    modules: list[nn.Module] = []
    if stride != 1 or in_channels != out_channels:
        modules.append(PreActivationConv(spatial_dims, in_channels, out_channels, 3, stride=stride))
    modules += [PreActivationResidualBlock(spatial_dims, out_channels, out_channels, dilation)
                for _ in range(blocks)]
    return nn.Sequential(*modules)


class ConResNetEncoder(nn.Module):
    """The shared encoder (Fig. 2, left): five stages and a fusion conv.

    conv3x3 in -> w0 + 1 block (full size), stride-2 conv w0 -> w1 + 2 blocks (1/2), w1 -> w2 + 2 blocks
    (1/4), w2 -> w3 + 2 blocks (1/8), 2 blocks with dilation 2 (1/8), then GN-ReLU-Dropout-Conv3x3 w3 -> w2.
    ``forward`` returns ``[skip 1, skip 1/2, skip 1/4, fused 1/8]`` (coarsest last).
    """

    def __init__(self, spatial_dims: int, in_channels: int, widths: Sequence[int] = (32, 64, 128, 256),
                 dropout: float = 0.1) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.channels = [w0, w1, w2, w2]
        self.reductions = [1, 2, 4, 8]
        self.stem = nn.Sequential(standardized_conv(spatial_dims, in_channels, w0, 3),
                                  PreActivationResidualBlock(spatial_dims, w0, w0))
        self.stage1 = _stage(spatial_dims, w0, w1, 2)
        self.stage2 = _stage(spatial_dims, w1, w2, 2)
        self.stage3 = _stage(spatial_dims, w2, w3, 2)
        self.stage4 = _stage(spatial_dims, w3, w3, 2, dilation=2, stride=1)
        self.fusion = nn.Sequential(
            layers.norm("group", spatial_dims, w3),
            layers.activation("relu"),
            layers.dropout(spatial_dims, dropout),
            standardized_conv(spatial_dims, w3, w2, 3),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        skip1 = self.stem(x)
        skip2 = self.stage1(skip1)
        skip3 = self.stage2(skip2)
        deep = self.stage4(self.stage3(skip3))
        return [skip1, skip2, skip3, self.fusion(deep)]


def _up(x: Tensor, like: Tensor) -> Tensor:
    """Trilinear resize of ``x`` to the spatial size of ``like`` (align_corners as the official code)."""
    return layers.resize_to(x, list(like.shape[2:]), align_corners=True)


class ConResNet(SegmentationModel):
    """ConResNet (Zhang et al. 2020, Fig. 2): encoder, segmentation decoder, context residual decoder.

    Args:
        spatial_dims: 3 (the residual is between slices of a volume).
        in_channels: image channels (4 MRI modalities for BraTS).
        num_classes: output channels of the segmentation and of each residual head.
        widths: the four stage widths ``(w0, w1, w2, w3)`` (paper: 32, 64, 128, 256).
        slice_axis: spatial axis of the slices (0: depth of ``[B, C, D, H, W]``).
        context_residual: context residual mapping in every module (ablation switch).
        context_attention: context attention mapping in every module (ablation switch).
        dropout: channel dropout of the encoder's fusion conv.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 widths: Sequence[int] = (32, 64, 128, 256), slice_axis: int = 0,
                 context_residual: bool = True, context_attention: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise MedsegError(f"conresnet is a 3D network (inter-slice residuals), got spatial_dims "
                              f"{spatial_dims}")
        widths = [int(w) for w in widths]
        if len(widths) != 4 or min(widths) < 1:
            raise MedsegError(f"conresnet option widths: expected 4 positive stage widths, got {widths}")
        self.spatial_dims = spatial_dims
        self.input_multiple = 8
        self.slice_axis = check_slice_axis(slice_axis, spatial_dims)
        w0, w1, w2, _ = widths
        self.encoder = ConResNetEncoder(spatial_dims, in_channels, widths, dropout)
        switches = {"slice_axis": self.slice_axis, "context_residual": context_residual,
                    "context_attention": context_attention}
        self.context4 = ContextResidualModule(spatial_dims, w2, w1, in_channels, residual_is_image=True,
                                              **switches)
        self.context2 = ContextResidualModule(spatial_dims, w1, w0, w1, **switches)
        self.context1 = ContextResidualModule(spatial_dims, w0, w0, w0, **switches)
        self.seg_head = layers.conv(spatial_dims, w0, num_classes, 1)
        self.res_head = layers.conv(spatial_dims, w0, num_classes, 1)
        self.res2_head = layers.conv(spatial_dims, w0, num_classes, 1)
        self.res4_head = layers.conv(spatial_dims, w1, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        skip1, skip2, skip3, deep = self.encoder(x)
        res4 = _up(inter_slice_residual(x, self.slice_axis), skip3)
        seg4, res4 = self.context4(_up(deep, skip3) + skip3, res4)
        seg2, res2 = self.context2(_up(seg4, skip2) + skip2, _up(res4, skip2))
        seg1, res1 = self.context1(_up(seg2, skip1) + skip1, _up(res2, skip1))
        logits = self.seg_head(seg1)
        if not self.training:
            return logits
        residuals = [self.res_head(res1), _up(self.res2_head(res2), logits),
                     _up(self.res4_head(res4), logits)]
        return SegOutput(logits, extras={RESIDUAL_KEY: residuals})


PAPER = ("Zhang et al. 2020, Inter-slice Context Residual Learning for 3D Medical Image Segmentation "
         "(IEEE TMI)")


@register_model(
    "conresnet",
    paper=PAPER,
    dims=(3,),
    default_loss="conresnet",
    input_multiple=8,
    references=[
        Reference(options={"in_channels": 4, "num_classes": 3, "spatial_dims": 3}, params=19_018_732,
                  source="jianpengz/ConResNet models/ConResNet.py (19,441,196) without its 422,464 "
                         "parameters in layers never called"),
        Reference(options={"in_channels": 1, "num_classes": 2, "spatial_dims": 3}, params=19_010_792,
                  source="pancreas form of jianpengz/ConResNet (19,428,072) without its 417,280 "
                         "parameters in layers never called"),
    ],
    small_options={"widths": (8, 8, 16, 16)},
)
def build_conresnet(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> ConResNet:
    """Build :class:`ConResNet` (see its docstring for the options)."""
    return ConResNet(spatial_dims, in_channels, num_classes, **options)
