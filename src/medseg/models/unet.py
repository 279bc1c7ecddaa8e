"""U-Net (Ronneberger et al. 2015) and 3D U-Net (Çiçek et al. 2016).

Fig. 1 of the U-Net paper: a contracting path (two 3x3 convs per level, 2x2 max-pooling, channels
doubled per level) and an expansive path (2x2 up-convolution halving the channels, "copy and crop" of
the contracting feature, two 3x3 convs), then a 1x1 conv to the class logits. The 3D U-Net is the same
network with ``spatial_dims=3`` (the paper uses three down-samplings: ``depth=3``).

The pieces are public so that other networks can reuse them: :class:`UNetEncoder` (multi-level
features, coarsest last), :class:`UpConvolution`, :class:`ConcatSkip` (the skip combination, which a
``skip_factory`` can replace) and :class:`UNetDecoder`. ``skip="sdi"`` replaces the plain skips by
U-Net v2's semantics and detail infusion (:class:`medseg.blocks.sdi.SemanticDetailSkips`), which reads
all encoder levels at once, before the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import DoubleConv
from medseg.blocks.heads import DeepSupervisionHeads, SegmentationHead
from medseg.blocks.sdi import SemanticDetailSkips
from medseg.errors import InputSizeError, MedsegError, check_choice
from medseg.layers import center_crop
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model
from medseg.outputs import SegOutput

PADDINGS = ("same", "valid")
UPSAMPLINGS = ("transpose", "interpolate")
SKIPS = ("concat", "sdi")

SkipFactory = Callable[[int, int, int], nn.Module]
"""``factory(level, up_channels, skip_channels)`` -> a module ``fuse(up, skip)`` with ``out_channels``."""


def level_widths(features: int | Sequence[int], depth: int) -> list[int]:
    """Widths of the ``depth + 1`` levels: ``features`` doubled per down-sampling (64-1024 in Fig. 1), or
    an explicit sequence of ``depth + 1`` widths (e.g. MONAI BasicUNet's ``(32, 32, 64, 128, 256)``)."""
    if not isinstance(features, int):
        widths = [int(w) for w in features]
        if len(widths) != depth + 1 or min(widths) < 1:
            raise MedsegError(f"features {list(features)}: expected {depth + 1} positive widths "
                              f"(depth {depth})")
        return widths
    if features < 1 or depth < 1:
        raise MedsegError(f"features and depth must be >= 1, got {features} and {depth}")
    return [features * 2**level for level in range(depth + 1)]


class UpConvolution(nn.Sequential):
    """2x up-sampling to ``out_channels``: the 2x2 up-convolution of Fig. 1 (``transpose``) or
    bilinear/trilinear interpolation followed by a 1x1 conv (``interpolate``). ``scale`` (one factor per
    axis, e.g. ``(1, 2, 2)``) undoes an anisotropic pooling step instead."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 mode: str = "transpose", scale: Sequence[int] | None = None) -> None:
        check_choice("upsample", mode, UPSAMPLINGS)
        factor: int | tuple[int, ...] = 2 if scale is None else tuple(int(s) for s in scale)
        if mode == "transpose":
            super().__init__(layers.conv_transpose(spatial_dims, in_channels, out_channels, factor, factor))
        else:
            super().__init__(layers.upsample(spatial_dims, factor, "linear"),
                             layers.conv(spatial_dims, in_channels, out_channels, 1))


class ConcatSkip(nn.Module):
    """U-Net's skip combination: crop the encoder feature to the up-sampled one, concatenate
    ``[skip, up]``."""

    def __init__(self, up_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.out_channels = up_channels + skip_channels

    def forward(self, up: Tensor, skip: Tensor) -> Tensor:
        return torch.cat([center_crop(skip, list(up.shape[2:])), up], dim=1)


def check_pool_kernels(pool_kernels: Sequence[Sequence[int]] | None, spatial_dims: int, depth: int
                       ) -> list[tuple[int, ...]] | None:
    """Per down-sampling step one pooling factor (1 or 2) per axis, as nnU-Net's ``pool_op_kernel_sizes``
    (Isensee et al. 2021: an axis of coarse spacing is not pooled at the first levels), or None (2 on
    every axis)."""
    if pool_kernels is None:
        return None
    kernels = [tuple(int(k) for k in step) for step in pool_kernels]
    if len(kernels) != depth or any(len(k) != spatial_dims or set(k) - {1, 2} for k in kernels):
        raise MedsegError(f"pool_kernels {[list(k) for k in kernels]}: expected {depth} steps of "
                          f"{spatial_dims} factors, each 1 or 2")
    return kernels


def axis_multiples(kernels: Sequence[Sequence[int]], spatial_dims: int) -> list[int]:
    """Per axis the product of its pooling factors: what each input extent must be a multiple of."""
    return [math.prod(k[axis] for k in kernels) for axis in range(spatial_dims)]


def concat_skip(level: int, up_channels: int, skip_channels: int) -> nn.Module:
    """The default :data:`SkipFactory`: a :class:`ConcatSkip` at every level."""
    return ConcatSkip(up_channels, skip_channels)


class UNetEncoder(nn.Module):
    """The contracting path (Fig. 1): level 0 is two 3x3 convs, each further level a 2x2 max-pool then
    two 3x3 convs with the channels doubled. ``forward`` returns every level's feature, coarsest last.

    ``levels[i]`` computes level ``i`` from level ``i - 1`` (from the image for ``i = 0``), so a network
    can also run the levels one at a time (UNet++ does). ``dropout`` follows the deepest level (the paper's
    "drop-out layers at the end of the contracting path").
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: int | Sequence[int] = 64,
                 depth: int = 4, padding: str = "same", norm: str | None = "batch", act: str | None = "relu",
                 dropout: float = 0.0, pool_kernels: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        check_choice("padding", padding, PADDINGS)
        widths = level_widths(features, depth)
        kernels = check_pool_kernels(pool_kernels, spatial_dims, len(widths) - 1)
        self.channels = widths
        self.reductions = [2**level for level in range(depth + 1)]
        self.levels = nn.ModuleList()
        for level, width in enumerate(widths):
            conv = DoubleConv(spatial_dims, in_channels if level == 0 else widths[level - 1], width,
                              padding=padding, norm=norm, act=act, dropout=dropout if level == depth else 0.0)
            pool = 2 if kernels is None or level == 0 else kernels[level - 1]
            self.levels.append(conv if level == 0 else nn.Sequential(layers.max_pool(spatial_dims, pool),
                                                                     conv))

    def forward(self, x: Tensor) -> list[Tensor]:
        features: list[Tensor] = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class UNetDecoderLevel(nn.Module):
    """One expansive-path step (Fig. 1): up-convolution, skip combination, two 3x3 convs."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int,
                 fuse: nn.Module, padding: str = "same", norm: str | None = "batch", act: str | None = "relu",
                 upsample: str = "transpose", scale: Sequence[int] | None = None) -> None:
        super().__init__()
        self.up = UpConvolution(spatial_dims, in_channels, out_channels, upsample, scale)
        self.fuse = fuse
        self.conv = DoubleConv(spatial_dims, int(fuse.out_channels), out_channels, padding=padding, norm=norm,
                               act=act)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(self.fuse(self.up(x), skip))


class UNetDecoder(nn.Module):
    """The expansive path over encoder features ``[finest, ..., coarsest]`` with widths ``channels``.

    Level ``i`` up-samples the output of level ``i + 1`` (the bottleneck feature for the deepest level)
    to ``channels[i]`` channels and combines it with encoder feature ``i`` through
    ``skip_factory(i, channels[i], skip_channels[i])`` (default :class:`ConcatSkip`; ``skip_channels``
    defaults to ``channels[:-1]``). ``forward`` returns the decoder outputs finest first
    (``len(channels) - 1`` maps). ``pool_kernels``: the encoder's per-axis pooling factors, undone level
    by level (see :func:`check_pool_kernels`).
    """

    def __init__(self, spatial_dims: int, channels: Sequence[int], padding: str = "same",
                 norm: str | None = "batch", act: str | None = "relu", upsample: str = "transpose",
                 skip_factory: SkipFactory | None = None, skip_channels: Sequence[int] | None = None,
                 pool_kernels: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        factory = skip_factory or concat_skip
        self.channels = list(channels[:-1])
        skips = list(self.channels if skip_channels is None else skip_channels)
        if len(skips) != len(self.channels):
            raise MedsegError(f"skip_channels {skips}: expected {len(self.channels)} widths")
        kernels = check_pool_kernels(pool_kernels, spatial_dims, len(self.channels))
        self.levels = nn.ModuleList(
            UNetDecoderLevel(spatial_dims, channels[i + 1], skips[i], channels[i],
                             factory(i, channels[i], skips[i]), padding, norm, act, upsample,
                             None if kernels is None else kernels[i])
            for i in reversed(range(len(channels) - 1)))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        x = features[-1]
        outputs: list[Tensor] = []
        for i, level in enumerate(self.levels):
            x = level(x, features[-2 - i])
            outputs.insert(0, x)
        return outputs


class UNet(SegmentationModel):
    """U-Net (Ronneberger et al. 2015, Fig. 1), 2D or 3D (Çiçek et al. 2016).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        depth: number of down-samplings (4 in the paper, 3 in the 3D U-Net); inputs must be multiples
            of ``2 ** depth`` with ``same`` padding.
        features: width of the first level, doubled per level (64 gives 64-1024 as in Fig. 1).
        padding: ``same`` (output at the input size) or ``valid`` (the paper's unpadded convs with centre
            cropping of the skips; the output is the smaller central map of :meth:`output_size`, e.g.
            572 -> 388, and only the sizes of :meth:`valid_size` work).
        norm: normalisation after every conv (``batch`` default; ``none`` is the paper's network).
        act: activation after every conv.
        upsample: ``transpose`` (2x2 up-convolution) or ``interpolate`` (bilinear/trilinear + 1x1 conv).
        dropout: channel dropout after the deepest level (the end of the contracting path).
        deep_supervision: add 1x1 heads on the decoder levels below the finest; in train mode the forward
            returns ``SegOutput(logits, aux)`` with those maps resized to the logits' size, finest first.
        skip_factory: replaces the skip combination (see :data:`SkipFactory`), default concatenation.
        skip: ``concat`` (the encoder features are the skips) or ``sdi``: the skips are U-Net v2's
            semantics and detail infusion over all encoder levels, bottleneck included (Peng et al.
            2023, Fig. 2: attention, 1x1 conv + BN to ``sdi_channels``, one SDI per skip level), then
            combined by ``skip_factory`` as usual.
        sdi_channels: width c of the SDI skips (default: the first level's width).
        sdi_attention: the CBAM channel/spatial attention before the 1x1 convs of the SDI skips.
        pool_kernels: per down-sampling step a pooling factor (1 or 2) per axis, nnU-Net's anisotropic
            pooling (e.g. ``[[1, 2, 2], [1, 2, 2], [2, 2, 2]]`` for thick slices along the first axis);
            sets ``depth``; each axis must then be a multiple of its own product of factors
            (:attr:`axis_multiples`). None: 2 on every axis.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, depth: int = 4,
                 features: int | Sequence[int] = 64, padding: str = "same", norm: str | None = "batch",
                 act: str | None = "relu", upsample: str = "transpose", dropout: float = 0.0,
                 deep_supervision: bool = False, skip_factory: SkipFactory | None = None,
                 skip: str = "concat", sdi_channels: int | None = None, sdi_attention: bool = True,
                 pool_kernels: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        check_choice("skip", skip, SKIPS)
        if pool_kernels is not None:
            depth = len(pool_kernels)
        if deep_supervision and depth < 2:
            raise MedsegError("deep_supervision needs depth >= 2 (a decoder level below the finest)")
        if not isinstance(features, int):  # explicit level widths: the depth follows from them
            depth = len(features) - 1
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.depth = depth
        self.padding = check_choice("padding", padding, PADDINGS)
        kernels = check_pool_kernels(pool_kernels, spatial_dims, depth)
        if kernels is not None and (padding != "same" or skip != "concat"):
            raise MedsegError("pool_kernels needs padding 'same' and skip 'concat'")
        self.axis_multiples = [2**depth] * spatial_dims if kernels is None else \
            axis_multiples(kernels, spatial_dims)
        self.input_multiple = max(self.axis_multiples)  # pads every axis enough (all are powers of 2)
        self.encoder = UNetEncoder(spatial_dims, in_channels, features, depth, padding, norm, act, dropout,
                                   kernels)
        widths = self.encoder.channels
        self.skips: SemanticDetailSkips | None = None
        skip_channels = None
        if skip == "sdi":
            c = sdi_channels or widths[0]
            self.skips = SemanticDetailSkips(spatial_dims, widths, c, sdi_attention, targets=range(depth))
            skip_channels = [c] * depth
        self.decoder = UNetDecoder(spatial_dims, widths, padding, norm, act, upsample, skip_factory,
                                   skip_channels, kernels)
        self.head = SegmentationHead(spatial_dims, self.encoder.channels[0], num_classes)
        self.aux_heads = (DeepSupervisionHeads(spatial_dims, self.decoder.channels[1:], num_classes)
                          if deep_supervision else None)

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        self.check_input(x)
        features = self.encoder(x)
        if self.skips is not None:  # SDI reads every level at once: skips first, bottleneck last
            features = [*self.skips(features), features[-1]]
        decoded = self.decoder(features)
        logits = self.head(decoded[0])
        if self.training and self.aux_heads is not None:
            return SegOutput(logits, aux=self.aux_heads(decoded[1:], output_size=logits.shape[2:]))
        return logits

    # --- sizes: a multiple of 2 ** depth with same padding; the paper's rule with valid padding ---

    def check_input(self, x: Tensor) -> None:
        """With anisotropic ``pool_kernels`` each axis has its own multiple; else the shared rule."""
        if torch.jit.is_scripting() or torch.compiler.is_compiling() or \
                len(set(self.axis_multiples)) == 1 or x.dim() != self.spatial_dims + 2:
            super().check_input(x)
            return
        for extent, multiple in zip(x.shape[2:], self.axis_multiples, strict=True):
            if extent % multiple:
                raise InputSizeError(f"{type(self).__name__}: input size {tuple(x.shape[2:])} does not work; "
                                     f"the axes must be multiples of {tuple(self.axis_multiples)} "
                                     "(the pool_kernels)")

    def _output_extent(self, size: int) -> int | None:
        """Output extent of one input extent, or None when the network cannot process it."""
        shrink = 4 if self.padding == "valid" else 0  # two unpadded 3x3 convs per level
        for _ in range(self.depth):
            size -= shrink
            if size < 2 or size % 2:
                return None
            size //= 2
        size -= shrink
        for _ in range(self.depth):
            if size < 1:
                return None
            size = 2 * size - shrink
        return size if size >= 1 else None

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """Spatial output size for ``input_size`` (equal with ``same`` padding; 572 -> 388 with ``valid``)."""
        sizes = [self._output_extent(int(s)) for s in input_size]
        if any(s is None for s in sizes):
            bad = next(int(s) for s, o in zip(input_size, sizes, strict=True) if o is None)
            lower, upper = self.nearest_valid_sizes(bad)
            raise InputSizeError(
                f"{type(self).__name__}: input size {tuple(input_size)} does not work; each spatial size "
                f"must be {self.size_rule()} (nearest for {bad}: {lower} or {upper})")
        return tuple(int(s) for s in sizes if s is not None)

    def valid_size(self, size: int) -> bool:
        return self._output_extent(size) is not None

    def smallest_valid_size(self) -> int:
        """The smallest input extent the network processes."""
        size = 1
        while not self.valid_size(size):
            size += 1
        return size

    def nearest_valid_sizes(self, size: int) -> tuple[int, int]:
        smallest = self.smallest_valid_size()
        step = self.input_multiple
        if size <= smallest:
            return smallest, smallest
        lower = smallest + (size - smallest) // step * step
        upper = lower if lower == size else lower + step
        return lower, upper

    def size_rule(self) -> str:
        if self.padding == "same":
            return super().size_rule()
        smallest = self.smallest_valid_size()
        return f"{smallest} + k * {self.input_multiple} (valid padding, depth {self.depth})"

    # --- PointRend (medseg.models.pointrend) ---

    def pointrend_backbone(self) -> UNetPointRendBackbone:
        """This U-Net cut at stride 4 with a 1x1 coarse head: what :class:`~medseg.models.pointrend.PointRend`
        wraps (the point head replaces the decoder levels above stride 4)."""
        return UNetPointRendBackbone(self)


POINTREND_STRIDE = 4
"""The stride of PointRend's coarse prediction and fine features (the paper's P2 / HRNet's 1/4)."""


class UNetPointRendBackbone(SegmentationModel):
    """A U-Net's PointRend protocol: ``coarse_and_fine(x) -> (coarse logits, fine features)`` at stride 4.

    The contracting path and the expansive path down to stride 4 are the U-Net's own modules (shared, not
    copied); the decoder feature at stride 4 (``4 * features`` channels: 256 for the paper's 64) is the fine
    map as it is (no projection), and a new 1x1 conv on it gives the coarse logits, as PointRend's semantic
    FPN head predicts at stride 4. The U-Net's levels above stride 4 and its final head are not part of it:
    the point head takes their place (faithful to PointRend, cheaper, and no unused parameters under DDP).

    Needs ``padding="same"``, ``depth >= 2`` and concatenation skips (SDI skips read all levels at once).
    """

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        if unet.padding != "same" or unet.depth < 2 or unet.skips is not None:
            raise MedsegError(f"PointRend over a U-Net needs padding 'same', depth >= 2 and skip 'concat', "
                              f"got padding {unet.padding!r}, depth {unet.depth}, skip "
                              f"{'sdi' if unet.skips is not None else 'concat'!r}")
        self.spatial_dims = unet.spatial_dims
        self.input_multiple = unet.input_multiple
        self.encoder = unet.encoder
        # decoder level j produces the output at stride 2 ** (depth - 1 - j): keep those down to stride 4
        self.levels = nn.ModuleList(list(unet.decoder.levels)[:unet.depth - 2])
        self.fine_channels = int(unet.encoder.channels[2])
        num_classes = int(unet.head[-1].out_channels)
        self.coarse_head = SegmentationHead(unet.spatial_dims, self.fine_channels, num_classes)

    def coarse_and_fine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Coarse logits ``[B, K, *spatial / 4]`` and the stride-4 decoder feature (``4 * features``
        channels)."""
        features = self.encoder(x)
        y = features[-1]
        for i, level in enumerate(self.levels):
            y = level(y, features[-2 - i])
        return self.coarse_head(y), y


PAPER = ("Ronneberger et al. 2015, U-Net: Convolutional Networks for Biomedical Image Segmentation (MICCAI); "
         "3D: Çiçek et al. 2016, 3D U-Net (MICCAI)")


@register_model(
    "unet",
    paper=PAPER,
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=16,
    references=[
        Reference(options={"in_channels": 1, "num_classes": 2, "spatial_dims": 2, "padding": "valid",
                           "norm": "none"},
                  params=31_030_658, source="Ronneberger 2015 Fig. 1 (unpadded convs, no normalisation)"),
        Reference(options={"in_channels": 3, "num_classes": 1, "spatial_dims": 2, "padding": "same",
                           "norm": "none"},
                  params=31_031_745, source="classic-zoo spec: same padding, no normalisation"),
        Reference(options={"in_channels": 1, "num_classes": 1, "spatial_dims": 2, "features": 32,
                           "norm": "none"},
                  params=7_759_521, source="MrGiovanni/UNetPlusPlus keras/helper_functions.py U_Net"),
    ],
    small_options={"features": 4},
    aliases=("unet3d",),
)
def build_unet(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> UNet:
    """Build :class:`UNet` (see its docstring for the options)."""
    return UNet(spatial_dims, in_channels, num_classes, **options)
