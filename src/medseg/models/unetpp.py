"""UNet++ (Zhou et al. 2018, "UNet++: A Nested U-Net Architecture for Medical Image Segmentation").

Fig. 1: the backbone nodes X(i,0) are U-Net's contracting path; the nested nodes follow Eq. 1,

    X(i,j) = H([X(i,0), ..., X(i,j-1), U(X(i+1,j-1))]),   j >= 1,

with H two 3x3 conv-ReLU layers and U a 2x up-convolution. Deep supervision puts a 1x1 head on each
of X(0,1..L); at inference their maps are averaged ("accurate mode") or the network is pruned to
UNet++ L^l, which runs only the nodes X(i,j) with i + j <= l and reads the head of X(0,l) ("fast mode").
Widths, transposed up-convolutions and head placement follow the official code
(MrGiovanni/UNetPlusPlus, ``keras/helper_functions.py``). With ``encoder=`` the backbone nodes X(i,0)
are the levels of a registered :class:`~medseg.encoders.Encoder` instead (e.g. U-Net v2's "UNet++ with
the PVT encoder" ablation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import DoubleConv
from medseg.blocks.heads import DeepSupervisionHeads, SegmentationHead
from medseg.encoders.base import Encoder, build_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.models.unet import UNetEncoder, UpConvolution
from medseg.outputs import SegOutput


class NestedNode(nn.Module):
    """X(i,j) of Eq. 1: two 3x3 convs on ``[X(i,0), ..., X(i,j-1), U(X(i+1,j-1))]``."""

    def __init__(self, spatial_dims: int, j: int, channels: int, below_channels: int,
                 norm: str | None = "batch", act: str | None = "relu", upsample: str = "transpose") -> None:
        super().__init__()
        self.up = UpConvolution(spatial_dims, below_channels, channels, upsample)
        self.conv = DoubleConv(spatial_dims, (j + 1) * channels, channels, norm=norm, act=act)

    def forward(self, same_level: list[Tensor], below: Tensor) -> Tensor:
        return self.conv(torch.cat(same_level + [self.up(below)], dim=1))


class NestedDiagonal(nn.Module):
    """The nested nodes X(d-1,1), X(d-2,2), ..., X(0,d) that become computable once X(d,0) exists."""

    def __init__(self, spatial_dims: int, d: int, widths: list[int], norm: str | None = "batch",
                 act: str | None = "relu", upsample: str = "transpose") -> None:
        super().__init__()
        self.nodes = nn.ModuleList(
            NestedNode(spatial_dims, j, widths[d - j], widths[d - j + 1], norm, act, upsample)
            for j in range(1, d + 1))

    def forward(self, grid: list[list[Tensor]]) -> list[list[Tensor]]:
        """Append X(d-j, j) to row ``d - j`` of ``grid`` (rows 0..d, row i holds X(i,0..))."""
        d = len(grid) - 1
        for k, node in enumerate(self.nodes):
            i = d - 1 - k
            grid[i].append(node(grid[i], grid[i + 1][k]))
        return grid


class UNetPlusPlus(SegmentationModel):
    """UNet++ (Zhou et al. 2018, Fig. 1), 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        depth: number of down-samplings L (4 in the paper); inputs must be multiples of ``2 ** depth``.
        features: width of level 0, doubled per level (32 gives the paper's 32-512).
        norm: normalisation after every conv (``batch`` default; ``none`` is the official network).
        act: activation after every conv.
        upsample: ``transpose`` (2x2 up-convolution, official) or ``interpolate``.
        dropout: channel dropout after the deepest backbone node.
        deep_supervision: 1x1 heads on X(0,1..L). In train mode the forward returns ``SegOutput`` whose
            ``aux[j-1]`` is the head of X(0,j) (the paper's loss averages the losses of these heads) and
            whose ``logits`` is their average, the accurate-mode prediction. Without it, one head on X(0,L).
        prune_level: in eval mode, run only UNet++ L^l and return the head of X(0,l) (1..L; levels
            below L need ``deep_supervision``). ``None`` (default) averages all heads. Training always
            runs the whole network; the attribute can be changed after training.
        encoder: a registered encoder name or an :class:`~medseg.encoders.Encoder` whose levels are the
            backbone nodes (``features``, ``depth`` and ``dropout`` then do not apply: the widths are the
            encoder's channels, L is its level count - 1). Its levels must halve in size one after
            another; when the finest is smaller than the input, the logits are resized (bilinear or
            trilinear) to the input size.
        encoder_options: options of a named encoder.
        encoder_weights: a local weight file for the encoder.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, depth: int = 4,
                 features: int = 32, norm: str | None = "batch", act: str | None = "relu",
                 upsample: str = "transpose", dropout: float = 0.0, deep_supervision: bool = False,
                 prune_level: int | None = None, encoder: str | Encoder | None = None,
                 encoder_options: dict | None = None, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.encoder: UNetEncoder | Encoder
        if encoder is None:
            self.encoder = UNetEncoder(spatial_dims, in_channels, features, depth, "same", norm, act, dropout)
            self.input_multiple = 2**depth
        else:
            self.encoder = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims,
                                         weights=encoder_weights, options=encoder_options)
            reductions = self.encoder.reductions
            if any(b != 2 * a for a, b in zip(reductions, reductions[1:], strict=False)):
                raise MedsegError(f"UNet++ needs encoder levels that halve one after another, "
                                  f"got reductions {list(reductions)}")
            depth = len(reductions) - 1
            self.input_multiple = self.encoder.input_multiple
        self.depth = depth
        widths = list(self.encoder.channels)
        self.diagonals = nn.ModuleList(
            NestedDiagonal(spatial_dims, d, widths, norm, act, upsample) for d in range(depth + 1))
        if deep_supervision:
            self.heads = DeepSupervisionHeads(spatial_dims, [widths[0]] * depth, num_classes)
        else:
            self.head = SegmentationHead(spatial_dims, widths[0], num_classes)
        self._prune_level: int | None = None
        self.prune_level = prune_level

    @property
    def prune_level(self) -> int | None:
        """The level l of UNet++ L^l that eval mode runs (None: all heads averaged)."""
        return self._prune_level

    @prune_level.setter
    def prune_level(self, level: int | None) -> None:
        if level is not None:
            if not 1 <= level <= self.depth:
                raise MedsegError(f"prune_level must be in 1..{self.depth} (or None), got {level!r}")
            if level < self.depth and not self.deep_supervision:
                raise MedsegError(
                    f"prune_level {level} needs deep_supervision=True (X(0,{level}) has no head)")
        self._prune_level = level

    def nested_nodes(self, x: Tensor, level: int) -> list[Tensor]:
        """X(0,1), ..., X(0,level), computing only the nodes X(i,j) with i + j <= ``level``."""
        grid: list[list[Tensor]] = []
        if isinstance(self.encoder, Encoder):  # an encoder computes all its levels at once
            for d, (feature, diagonal) in enumerate(zip(self.encoder(x), self.diagonals, strict=True)):
                if d <= level:
                    grid.append([feature])
                    grid = diagonal(grid)
            return grid[0][1:]
        for d, (backbone, diagonal) in enumerate(zip(self.encoder.levels, self.diagonals, strict=True)):
            if d <= level:
                x = backbone(x)
                grid.append([x])
                grid = diagonal(grid)
        return grid[0][1:]

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        prune = None if self.training else self._prune_level
        level = self.depth if prune is None else prune
        nodes = self.nested_nodes(x, level)
        size = list(x.shape[2:])
        if not self.deep_supervision:
            return layers.resize_to(self.head(nodes[-1]), size)
        maps: list[Tensor] = []
        for j, head in enumerate(self.heads.heads):
            if j < level:
                maps.append(layers.resize_to(head(nodes[j]), size))
        if prune is not None:
            return maps[-1]
        logits = torch.stack(maps, dim=0).mean(dim=0)
        if self.training:
            return SegOutput(logits, aux=maps)
        return logits


OFFICIAL_CODE = "MrGiovanni/UNetPlusPlus keras/helper_functions.py"
OFFICIAL_OPTIONS = {"in_channels": 1, "num_classes": 1, "spatial_dims": 2, "features": 32, "norm": "none"}


@register_model(
    "unetpp",
    paper="Zhou et al. 2018, UNet++: A Nested U-Net Architecture for Medical Image Segmentation (DLMIA)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=16,
    references=[
        Reference(options={**OFFICIAL_OPTIONS}, params=9_041_601, source=f"{OFFICIAL_CODE} UNetPlusPlus"),
        Reference(options={**OFFICIAL_OPTIONS, "deep_supervision": True}, params=9_041_700,
                  source=f"{OFFICIAL_CODE} UNetPlusPlus(deep_supervision=True)"),
    ],
    small_options={"features": 4},
    aliases=("unet++", "nested_unet"),
)
def build_unetpp(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> UNetPlusPlus:
    """Build :class:`UNetPlusPlus` (see its docstring for the options)."""
    return UNetPlusPlus(spatial_dims, in_channels, num_classes, **options)
