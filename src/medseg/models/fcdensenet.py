"""FC-DenseNet56 / 67 / 103, "The One Hundred Layers Tiramisu" (Jégou et al. 2017).

Fig. 1 and Tables 1-2 of the paper: a 3x3 conv to 48 channels; on the down path, per level, a dense block
(layers BN-ReLU-3x3 conv-dropout 0.2 adding ``k`` channels each, every layer fed the concatenation of the
block input and all earlier outputs) whose output, input included, is the skip, then a transition down
(BN-ReLU-1x1 conv-dropout-2x2 max-pool); a bottleneck dense block; on the up path, per level, a transition
up (3x3 stride-2 transposed conv) of only the new feature maps of the previous dense block (not its input,
which would blow up the widths), concatenated with the skip, then a dense block; a 1x1 conv to the classes
on the last block's whole output. Wiring as the reference code (SimJeg/FC-DenseNet ``FC-DenseNet.py``).

The transposed convs are unpadded and centre-cropped to their skip, the pools floor: any input of at least
``2 ** pools`` per axis works. 3D is the same network with 3x3x3 convs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.dense import DenseBlock, TransitionDown, TransitionUp
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model


def block_layers(layers_per_block: int | Sequence[int], pools: int) -> list[int]:
    """The layer counts of the ``2 * pools + 1`` dense blocks (down path, bottleneck, up path)."""
    if pools < 1:
        raise MedsegError(f"FC-DenseNet needs pools >= 1, got {pools}")
    counts = [layers_per_block] * (2 * pools + 1) if isinstance(layers_per_block, int) \
        else [int(n) for n in layers_per_block]
    if len(counts) != 2 * pools + 1 or min(counts) < 1:
        raise MedsegError(f"layers_per_block {layers_per_block}: expected one positive count or "
                          f"{2 * pools + 1} of them (pools {pools})")
    return counts


class FCDenseNet(SegmentationModel):
    """FC-DenseNet (Jégou et al. 2017, Fig. 1), 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        layers_per_block: dense layers per block, one count for all or ``2 * pools + 1`` counts (down
            path, bottleneck, up path): 4 for FC-DenseNet56, 5 for 67, (4, 5, 7, 10, 12, 15, 12, 10, 7,
            5, 4) for 103.
        growth_rate: ``k``, the channels each dense layer adds (12 for 56, 16 for 67 and 103).
        first_channels: width of the first 3x3 conv (48).
        pools: number of transitions down (5).
        dropout: element-wise dropout of the dense layers and transitions down (0.2).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 layers_per_block: int | Sequence[int] = 4, growth_rate: int = 12, first_channels: int = 48,
                 pools: int = 5, dropout: float = 0.2) -> None:
        super().__init__()
        counts = block_layers(layers_per_block, pools)
        if growth_rate < 1 or first_channels < 1:
            raise MedsegError(f"growth_rate and first_channels must be >= 1, got {growth_rate} and "
                              f"{first_channels}")
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.pools = pools
        self.input_multiple = 1  # floor pools, cropped transitions up: any size >= 2 ** pools
        self.first_conv = layers.conv(spatial_dims, in_channels, first_channels, 3)

        def dense(channels: int, n: int, only_new: bool) -> DenseBlock:
            return DenseBlock(spatial_dims, channels, n, growth_rate, dropout=dropout,
                              return_only_new=only_new)

        channels = first_channels
        skip_channels: list[int] = []
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        for n in counts[:pools]:
            self.down_blocks.append(dense(channels, n, only_new=False))
            channels = self.down_blocks[-1].out_channels
            skip_channels.append(channels)
            self.transitions_down.append(TransitionDown(spatial_dims, channels, dropout))
        self.bottleneck = dense(channels, counts[pools], only_new=True)
        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        upsampled = self.bottleneck.out_channels  # only the new feature maps are up-sampled
        for i, n in enumerate(counts[pools + 1:]):
            self.transitions_up.append(TransitionUp(spatial_dims, upsampled, upsampled))
            last = i == pools - 1
            self.up_blocks.append(dense(upsampled + skip_channels[-1 - i], n, only_new=not last))
            upsampled = self.up_blocks[-1].out_channels
        self.head = layers.conv(spatial_dims, upsampled, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        y = self.first_conv(x)
        skips: list[Tensor] = []
        for block, down in zip(self.down_blocks, self.transitions_down, strict=True):
            y = block(y)
            skips.append(y)
            y = down(y)
        y = self.bottleneck(y)
        for i, (up, block) in enumerate(zip(self.transitions_up, self.up_blocks, strict=True)):
            y = block(up(y, skips[-1 - i]))
        return self.head(y)

    def valid_size(self, size: int) -> bool:
        return size >= 2 ** self.pools

    def nearest_valid_sizes(self, size: int) -> tuple[int, int]:
        smallest = 2 ** self.pools
        return (size, size) if size >= smallest else (smallest, smallest)

    def size_rule(self) -> str:
        return f"at least {2 ** self.pools} ({self.pools} transitions down)"


PAPER = ("Jégou et al. 2017, The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for Semantic "
         "Segmentation (CVPR workshops)")
REFERENCE = "classic-zoo spec; SimJeg/FC-DenseNet FC-DenseNet.py (CamVid, 12 classes)"
VARIANTS: dict[str, dict[str, Any]] = {
    "fcdensenet56": {"layers_per_block": 4, "growth_rate": 12},
    "fcdensenet67": {"layers_per_block": 5, "growth_rate": 16},
    "fcdensenet103": {"layers_per_block": (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4), "growth_rate": 16},
}
COUNTS = {"fcdensenet56": 1_376_988, "fcdensenet67": 3_463_532, "fcdensenet103": 9_322_348}
SMALL_OPTIONS = {"growth_rate": 2, "first_channels": 4}
SMALL_LAYERS: dict[str, Any] = {"fcdensenet56": 1, "fcdensenet67": 2,
                                "fcdensenet103": (1, 1, 2, 2, 2, 3, 2, 2, 2, 1, 1)}


def _register(name: str) -> None:
    variant = VARIANTS[name]
    options = dict(variant)
    small = dict(SMALL_OPTIONS, layers_per_block=SMALL_LAYERS[name])

    @register_model(name, paper=PAPER, dims=(2, 3), default_loss="dice_ce", input_multiple=1,
                    references=[Reference(options={"in_channels": 3, "num_classes": 12, "spatial_dims": 2},
                                          params=COUNTS[name], source=REFERENCE)],
                    defaults=options, small_options=small)
    def build(*, in_channels: int, num_classes: int, spatial_dims: int, **opts: Any) -> FCDenseNet:
        return FCDenseNet(spatial_dims, in_channels, num_classes, **opts)

    build.__doc__ = f"Build {name} (:class:`FCDenseNet` with {variant}; see its docstring for the options)."


for _name in VARIANTS:
    _register(_name)
