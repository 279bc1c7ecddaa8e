"""SegNet (Badrinarayanan, Kendall & Cipolla 2017, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation").

Fig. 2 and 3 of the paper: the encoder is VGG-16-BN's 13 convolutions (conv-BN-ReLU, five blocks, each
followed by a 2x2 max-pool whose argmax indices are stored); the decoder mirrors it block by block: the
max-unpooling with the indices of the matching encoder pool puts every value back where its max came from
(zeros elsewhere, :class:`~medseg.blocks.upsampling.MaxUnpool`), then the block's convolutions,
conv-BN-ReLU, with the last one of each block going to the width of the next finer block. The last
decoder convolution gives the class scores (a plain 3x3 conv, no BN or ReLU; the softmax is the loss's),
as the official Caffe net (alexgkendall/SegNet-Tutorial ``Models/segnet_train.prototxt``: ``conv1_1_D``).

The pools floor and each unpooling gets its encoder map's size, so any input of at least ``2 ** 5`` per
axis works (odd sizes too); 3D is the same network with 3x3x3 convs and 2x2x2 pools.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.conv import ConvNormAct
from medseg.blocks.upsampling import MaxUnpool
from medseg.encoders.base import build_encoder
from medseg.encoders.vgg import VGGEncoder
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model


class SegNetDecoderBlock(nn.Module):
    """One decoder block: max-unpooling with the encoder's indices, then ``num_convs`` 3x3 convs.

    The first ``num_convs - 1`` convs keep ``in_channels``, the last goes to ``out_channels``; each is
    conv-BN-ReLU (with the conv's bias, as the official net), except the last one when ``classifier``
    (the network's final scores: a plain conv).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, num_convs: int,
                 classifier: bool = False) -> None:
        super().__init__()
        self.unpool = MaxUnpool(spatial_dims, 2, 2)
        convs: list[nn.Module] = [ConvNormAct(spatial_dims, in_channels, in_channels, 3, bias=True)
                                  for _ in range(num_convs - 1)]
        if classifier:
            convs.append(layers.conv(spatial_dims, in_channels, out_channels, 3))
        else:
            convs.append(ConvNormAct(spatial_dims, in_channels, out_channels, 3, bias=True))
        self.convs = nn.Sequential(*convs)

    def forward(self, x: Tensor, indices: Tensor, output_size: list[int]) -> Tensor:
        return self.convs(self.unpool(x, indices, output_size))


class SegNet(SegmentationModel):
    """SegNet (Badrinarayanan et al. 2017, Fig. 2) on VGG-16-BN, 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        encoder: a registered VGG encoder name (``vgg16_bn``, the paper's; ``vgg16`` has no encoder BN).
        encoder_options: options of the encoder (``widths``, ``convs``, ``depth``), possibly keyed by dims;
            the decoder mirrors whatever they give.
        encoder_weights: a local weight file for the encoder (timm / torchvision ``vgg16_bn`` keys).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, encoder: str = "vgg16_bn",
                 encoder_options: dict[str, Any] | None = None, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.encoder = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims,
                                     weights=encoder_weights, options=encoder_options)
        if not isinstance(self.encoder, VGGEncoder) or self.encoder.ceil_mode:
            raise MedsegError(f"SegNet needs a VGG encoder with flooring pools, got {encoder!r}")
        widths, convs = self.encoder.channels, self.encoder.convs
        self.depth = len(widths)
        self.input_multiple = 1  # the unpoolings restore every encoder size: any size >= 2 ** depth
        # the encoder returns each block before its pool: the pools are repeated here for their indices
        self.pool = layers.max_pool(spatial_dims, 2, 2, return_indices=True)
        # decoder[0] mirrors the deepest encoder block, decoder[-1] the first one (and gives the scores)
        self.decoder = nn.ModuleList(
            SegNetDecoderBlock(spatial_dims, widths[b], widths[b - 1] if b > 0 else num_classes, convs[b],
                               classifier=b == 0)
            for b in reversed(range(self.depth)))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        features = self.encoder(x)
        pooled = [self.pool(f) for f in features]  # (pooled map, argmax indices) per block
        y = pooled[-1][0]
        for i, block in enumerate(self.decoder):
            level = self.depth - 1 - i
            y = block(y, pooled[level][1], list(features[level].shape[2:]))
        return y

    def valid_size(self, size: int) -> bool:
        return size >= 2 ** self.depth

    def nearest_valid_sizes(self, size: int) -> tuple[int, int]:
        smallest = 2 ** self.depth
        return (size, size) if size >= smallest else (smallest, smallest)

    def size_rule(self) -> str:
        return f"at least {2 ** self.depth} ({self.depth} poolings)"


REFERENCE = "classic-zoo spec; alexgkendall/SegNet-Tutorial Models/segnet_train.prototxt (CamVid, 11 classes)"


@register_model(
    "segnet",
    paper="Badrinarayanan, Kendall & Cipolla 2017, SegNet: A Deep Convolutional Encoder-Decoder "
          "Architecture for Image Segmentation (TPAMI)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=1,
    references=[Reference(options={"in_channels": 3, "num_classes": 11, "spatial_dims": 2},
                          params=29_449_355, source=REFERENCE)],
    small_options={"encoder_options": {"widths": (4, 4, 8, 8, 8)}},
)
def build_segnet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> SegNet:
    """Build :class:`SegNet` (see its docstring for the options)."""
    return SegNet(spatial_dims, in_channels, num_classes, **options)
