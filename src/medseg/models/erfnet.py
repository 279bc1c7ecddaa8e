"""ERFNet (Romera et al. 2017, "ERFNet: Efficient Residual Factorized ConvNet for Real-Time Semantic
Segmentation", IEEE T-ITS).

Table 1: encoder = down-sampler (3x3 stride-2 conv concatenated with 2x2 max-pooling) to 16, down-sampler
to 64, five non-bottleneck-1D layers (dropout 0.03), down-sampler to 128, then twice the non-bottleneck-1D
layers with dilations 2, 4, 8, 16 (dropout 0.3); decoder = 3x3 stride-2 transposed conv-BN-ReLU to 64, two
non-bottleneck-1D layers, the same to 16, two layers, and a 2x2 stride-2 transposed conv to the classes.
Biases and layer order as the reference code (Eromera/erfnet_pytorch ``train/erfnet.py``). 3D: the
factorised convs run along the three axes.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.factorized import DownsamplerBlock, NonBottleneck1D
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model


class UpsamplerBlock(nn.Sequential):
    """3x3 stride-2 transposed conv (output exactly twice the input), norm, act."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str | None = "batch",
                 act: str | None = "relu") -> None:
        super().__init__(
            layers.conv_transpose(spatial_dims, in_channels, out_channels, 3, 2, padding=1, output_padding=1),
            layers.norm(norm, spatial_dims, out_channels), layers.activation(act, out_channels))


class ERFNet(SegmentationModel):
    """ERFNet (Romera et al. 2017, Table 1), 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        widths: the widths after the three down-samplers (16, 64, 128).
        dilations: dilations of the 128-wide layers, repeated twice ((2, 4, 8, 16)).
        dropout: dropout of the 64-wide and the 128-wide encoder layers (0.03, 0.3).
        norm, act: normalisation and activation (batch norm, ReLU).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 widths: tuple[int, int, int] = (16, 64, 128), dilations: tuple[int, ...] = (2, 4, 8, 16),
                 dropout: tuple[float, float] = (0.03, 0.3), norm: str | None = "batch",
                 act: str | None = "relu") -> None:
        super().__init__()
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.input_multiple = 8
        w0, w1, w2 = widths

        def nb(channels: int, dilation: int = 1, p: float = 0.0) -> NonBottleneck1D:
            return NonBottleneck1D(spatial_dims, channels, dilation, p, norm, act)

        self.encoder = nn.Sequential(
            DownsamplerBlock(spatial_dims, in_channels, w0, norm=norm, act=act),
            DownsamplerBlock(spatial_dims, w0, w1, norm=norm, act=act),
            *[nb(w1, 1, dropout[0]) for _ in range(5)],
            DownsamplerBlock(spatial_dims, w1, w2, norm=norm, act=act),
            *[nb(w2, d, dropout[1]) for _ in range(2) for d in dilations])
        self.decoder = nn.Sequential(
            UpsamplerBlock(spatial_dims, w2, w1, norm, act), nb(w1), nb(w1),
            UpsamplerBlock(spatial_dims, w1, w0, norm, act), nb(w0), nb(w0))
        self.output_conv = layers.conv_transpose(spatial_dims, w0, num_classes, 2, 2)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.output_conv(self.decoder(self.encoder(x)))


@register_model(
    "erfnet",
    paper="Romera et al. 2017, ERFNet: Efficient Residual Factorized ConvNet for Real-Time Semantic "
          "Segmentation (IEEE T-ITS)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=8,
    references=[Reference(options={"in_channels": 3, "num_classes": 19, "spatial_dims": 2}, params=2_066_642,
                          source="Eromera/erfnet_pytorch train/erfnet.py Net(19) (paper: 2.1M)")],
    small_options={"widths": (4, 8, 8), "dilations": (2,)},
)
def build_erfnet(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> ERFNet:
    """Build :class:`ERFNet` (see its docstring for the options)."""
    return ERFNet(spatial_dims, in_channels, num_classes, **options)
