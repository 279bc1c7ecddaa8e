"""MSNet and M2SNet (Zhao et al., MICCAI 2021 and 2023): multi-scale subtraction networks.

Fig. 2 of M2SNet: an encoder gives ``x1 .. x5``; ``x2 .. x5`` are reduced to 64 channels by a CBR
(``x1`` already has 64); the subtraction pyramid (:class:`~medseg.blocks.subtraction.SubtractionPyramid`)
turns them into the complementary features ``C1 .. C4``; a top-down decoder adds them:
``d5 = CBR(x5)``, ``o4 = CBR(up(d5) + C4)``, ``o3 = CBR(up(o4) + C3)``, ``o2 = CBR(up(o3) + C2)``,
``logits = conv3x3(up(o2) + C1)`` upsampled to the input size. MSNet is the same network with plain
subtraction units (no all-ones filters). Wiring checked against the official code
(Xiaoqi-Zhao-DLUT/MSNet-M2SNet, ``model/miccai_msnet.py``); generalised here to any number of levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.subtraction import SubtractionPyramid, conv_bn_relu
from medseg.encoders.base import Encoder, build_encoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model

DEFAULT_ENCODER = {2: "res2net50_v1b_26w_4s", 3: "resnet34"}


class M2SNet(SegmentationModel):
    """M2SNet (Zhao et al. 2023, Fig. 2) over any registered encoder, 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        encoder: a registered encoder name or an :class:`Encoder` (default: Res2Net-50 v1b 26w4s in 2D
            as in the paper, ``resnet34`` in 3D).
        encoder_options: options of a named encoder (widths, depths, ...).
        encoder_weights: a local weight file for the encoder.
        channels: width of the decoder (64).
        filter_sizes: all-ones filter sizes of the multi-scale subtraction units ((3, 5)); ``()`` gives
            MSNet.
        shared_filters: one set of all-ones filter branches (with their batch norms) shared by all units,
            as in the official code.
        refine_top: the extra CBR on the coarser input of the top pyramid unit (official code).
        pool_stem: the official ``x1`` is the stem after its 3x3 stride-2 max-pool (1/4), while our
            ResNet-family encoders return the stem before it (1/2). When the encoder's first two levels
            are at 1/2 and 1/4 the model applies that max-pool to the first level (so the compute
            matches the paper); other layouts (VGG 1/1, PVT 1/4) are left as they are.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, channels: int = 64,
                 filter_sizes: Sequence[int] = (3, 5), shared_filters: bool = True, refine_top: bool = True,
                 pool_stem: bool = True) -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        if channels < 1:
            raise MedsegError(f"channels must be >= 1, got {channels}")
        self.spatial_dims = spatial_dims
        self.encoder = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims,
                                     weights=encoder_weights, options=encoder_options,
                                     default=DEFAULT_ENCODER)
        widths, reductions = list(self.encoder.channels), list(self.encoder.reductions)
        if len(widths) < 3:
            raise MedsegError(f"M2SNet needs an encoder with at least 3 levels, got {len(widths)}")
        self.input_multiple = self.encoder.input_multiple
        self.stem_pool = layers.max_pool(spatial_dims, 3, 2, 1) \
            if pool_stem and reductions[0] == 2 and reductions[1] == 4 else None
        # The paper's x1 has 64 channels and enters the pyramid as is; every other level gets a CBR.
        self.reduce = nn.ModuleList(
            nn.Identity() if level == 0 and width == channels else conv_bn_relu(spatial_dims, width, channels)
            for level, width in enumerate(widths))
        self.pyramid = SubtractionPyramid(spatial_dims, len(widths), channels, filter_sizes, shared_filters,
                                          refine_top)
        self.top = conv_bn_relu(spatial_dims, widths[-1], channels)
        # fuse[k] produces o_{N-1-k}: coarse to fine, one per complementary feature except the finest.
        self.fuse = nn.ModuleList(conv_bn_relu(spatial_dims, channels, channels)
                                  for _ in range(len(widths) - 2))
        self.head = layers.conv(spatial_dims, channels, num_classes, 3)

    @property
    def fine_channels(self) -> int:
        """Channels of the fine map of :meth:`coarse_and_fine` (the decoder width)."""
        return int(self.head.in_channels)

    def coarse_and_fine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """PointRend's protocol: the logits at the finest pyramid level (1/4 with ResNet-family encoders)
        and the feature the head reads there, ``up(o2) + C1`` (``channels`` wide)."""
        features = self.encoder(x)
        if self.stem_pool is not None:
            features = [self.stem_pool(features[0]), *features[1:]]
        complementary = self.pyramid([reduce(f) for reduce, f in zip(self.reduce, features, strict=True)])
        y = self.top(features[-1])
        for fuse, c in zip(self.fuse, complementary[:0:-1], strict=True):
            y = fuse(layers.resize_to(y, list(c.shape[2:])) + c)
        finest = complementary[0]
        fine = layers.resize_to(y, list(finest.shape[2:])) + finest
        return self.head(fine), fine

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        logits, _ = self.coarse_and_fine(x)
        return layers.resize_to(logits, list(x.shape[2:]))


class MSNet(M2SNet):
    """MSNet (Zhao et al., MICCAI 2021): :class:`M2SNet` with plain subtraction units (Eq. 1).

    Takes the options of :class:`M2SNet` except ``filter_sizes`` and ``shared_filters``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 encoder: str | Encoder | None = None, encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, channels: int = 64, refine_top: bool = True,
                 pool_stem: bool = True) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, encoder, encoder_options, encoder_weights,
                         channels, (), True, refine_top, pool_stem)


OFFICIAL_CODE = "Xiaoqi-Zhao-DLUT/MSNet-M2SNet model/miccai_msnet.py"
PAPER_OPTIONS = {"in_channels": 3, "num_classes": 1, "spatial_dims": 2}
SMALL_OPTIONS = {"encoder": "resnet18", "encoder_options": {"widths": (8, 16, 32, 64), "stem_width": 8},
                 "channels": 8}


@register_model(
    "m2snet",
    paper="Zhao et al. 2023, M2SNet: Multi-scale in Multi-scale Subtraction Network for Medical Image "
          "Segmentation",
    dims=(2, 3),
    default_loss="m2snet",
    input_multiple=32,
    references=[Reference(options=dict(PAPER_OPTIONS), params=27_692_585,
                          source=f"{OFFICIAL_CODE} M2SNet (Res2Net-50 v1b 26w4s, no fc)")],
    small_options=SMALL_OPTIONS,
)
def build_m2snet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> M2SNet:
    """Build :class:`M2SNet` (see its docstring for the options)."""
    return M2SNet(spatial_dims, in_channels, num_classes, **options)


@register_model(
    "msnet",
    paper="Zhao et al. 2021, Automatic Polyp Segmentation via Multi-scale Subtraction Network (MICCAI)",
    dims=(2, 3),
    default_loss="m2snet",
    input_multiple=32,
    references=[Reference(options=dict(PAPER_OPTIONS), params=27_692_329,
                          source=f"{OFFICIAL_CODE} MSNet (Res2Net-50 v1b 26w4s, no fc)")],
    small_options=SMALL_OPTIONS,
)
def build_msnet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> MSNet:
    """Build :class:`MSNet` (see :class:`M2SNet` for the options; no ``filter_sizes``)."""
    return MSNet(spatial_dims, in_channels, num_classes, **options)
