"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer & Darrell 2015, "Fully Convolutional Networks").

Fig. 3 of the paper over VGG-16: the five conv blocks with their max-pools (pool1 .. pool5, strides
2 .. 32), the classifier's fully connected layers cast as convolutions (fc6: 7x7 to 4096, fc7: 1x1 to
4096, each ReLU + dropout 0.5), a 1x1 score layer to the classes, then

- FCN-32s: the stride-32 scores up-sampled x32;
- FCN-16s: x2 up-sampled scores plus a 1x1 score layer on pool4, the sum up-sampled x16;
- FCN-8s: that sum x2 up-sampled plus a 1x1 score layer on pool3, the sum up-sampled x8.

Every up-sampling is a transposed convolution initialised to bilinear interpolation and learned
(:class:`~medseg.blocks.upsampling.BilinearUpsampling`); the score layers start at zero, as the official
nets (shelhamer/fcn.berkeleyvision.org ``voc-fcn*s/net.py``: no filler, Caffe's constant 0), so each
added skip starts as the coarser net. Layer names follow the official nets (``score_fr``, ``score_pool4``,
``upscore2``, ...).

Padding: the official nets pad conv1_1 by 100 and crop every sum and the output at fixed offsets
(5, 9, 31 for FCN-8s) so that the unpadded 7x7 fc6 works at any input size. Here every conv is
same-padded (fc6 by 3) and the pools round up (Caffe's pooling, VGG encoder ``ceil_mode``): any input size
works as well, every up-sampled map starts at its skip's origin and overhangs it by at most a stride, so
the size-matching crops keep its leading part (:func:`medseg.layers.leading_crop`) and the transposed
convs' padding ``f / 2`` keeps the pixel centres aligned. Why: the VGG-16 encoder of the project is used as
it is (timm / torchvision keys, ImageNet weights load), and the 200 padded rows and columns, which
cost ~3x the full-resolution compute at 256x256 (more in 3D), are not needed. Padding has no parameters:
the count is the official one (FCN-8s, 21 classes: 134,489,759).

3D: the same network with 3x3x3 convs and a ``fc_kernel``-cubed fc6. At the paper's 7 and 4096 channels
fc6 alone has 719M parameters; ``fc_kernel=3`` and ``fc_channels=1024`` make a practical 3D FCN.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.upsampling import BilinearUpsampling
from medseg.encoders.base import build_encoder, for_dims, get_encoder_entry
from medseg.encoders.vgg import VGGEncoder
from medseg.errors import MedsegError, check_choice
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model

STRIDES = (32, 16, 8)
VGG_ENCODERS = ("vgg16", "vgg16_bn")


def _score(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    """A 1x1 score layer initialised to zero (the official nets' default constant filler)."""
    conv = layers.conv(spatial_dims, in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FCN(SegmentationModel):
    """FCN-32s / 16s / 8s (Long et al. 2015, Fig. 3) on VGG-16, 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: output channels.
        stride: 32, 16 or 8: the finest skip fused (none, pool4, pool4 + pool3).
        encoder: a registered VGG encoder name (``vgg16``, or ``vgg16_bn`` for a batch-norm variant).
        encoder_options: options of the encoder (``widths``, ``convs``), possibly keyed by dims.
        encoder_weights: a local weight file for the encoder (timm / torchvision ``vgg16`` keys).
        fc_channels: width of fc6 and fc7 (4096).
        fc_kernel: kernel of fc6 (7: VGG-16's 7x7x512 fc6 input), odd.
        dropout: element-wise dropout after fc6 and fc7 (0.5, Caffe's dropout).
        learnable_upsampling: learn the bilinear-initialised up-samplings (the paper); ``False`` freezes them.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, stride: int = 8,
                 encoder: str = "vgg16", encoder_options: dict[str, Any] | None = None,
                 encoder_weights: str | None = None, fc_channels: int = 4096, fc_kernel: int = 7,
                 dropout: float = 0.5, learnable_upsampling: bool = True) -> None:
        super().__init__()
        check_choice("stride", stride, STRIDES)
        if fc_channels < 1 or fc_kernel < 1 or fc_kernel % 2 == 0:
            raise MedsegError(f"FCN needs fc_channels >= 1 and an odd fc_kernel, got {fc_channels} and "
                              f"{fc_kernel}")
        self.spatial_dims = layers.check_spatial_dims(spatial_dims)
        self.stride = stride
        self.input_multiple = 1  # ceil pooling and leading crops: any size
        check_choice("encoder", get_encoder_entry(encoder).name, VGG_ENCODERS)
        options = {**dict(for_dims(encoder_options, spatial_dims) or {}), "ceil_mode": True}
        self.encoder = build_encoder(encoder, in_channels=in_channels, spatial_dims=spatial_dims,
                                     weights=encoder_weights, options=options)
        if not isinstance(self.encoder, VGGEncoder) or len(self.encoder.channels) != 5:
            raise MedsegError(f"FCN needs a VGG encoder with 5 blocks (pool3, pool4, pool5), got "
                              f"{len(self.encoder.channels)} levels")
        widths = self.encoder.channels
        # the encoder returns each block before its pool: pool3/pool4 are recomputed (the same max-pool)
        self.pool = layers.max_pool(spatial_dims, 2, 2, ceil_mode=True)
        self.fc6 = nn.Sequential(layers.conv(spatial_dims, widths[4], fc_channels, fc_kernel),
                                 layers.activation("relu"), layers.dropout(spatial_dims, dropout, False))
        self.fc7 = nn.Sequential(layers.conv(spatial_dims, fc_channels, fc_channels, 1),
                                 layers.activation("relu"), layers.dropout(spatial_dims, dropout, False))
        self.score_fr = _score(spatial_dims, fc_channels, num_classes)
        self.score_pool4: nn.Module | None = None
        self.upscore2: nn.Module | None = None
        self.score_pool3: nn.Module | None = None
        self.upscore_pool4: nn.Module | None = None
        if stride <= 16:
            self.upscore2 = BilinearUpsampling(spatial_dims, num_classes, 2, learnable_upsampling)
            self.score_pool4 = _score(spatial_dims, widths[3], num_classes)
        if stride == 8:
            self.upscore_pool4 = BilinearUpsampling(spatial_dims, num_classes, 2, learnable_upsampling)
            self.score_pool3 = _score(spatial_dims, widths[2], num_classes)
        # the official names: upscore (32s), upscore16 (16s), upscore8 (8s)
        self.upscore = BilinearUpsampling(spatial_dims, num_classes, stride, learnable_upsampling)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        features = self.encoder(x)  # relu1_2 .. relu5_3 at strides 1 .. 16
        score = self.score_fr(self.fc7(self.fc6(self.pool(features[4]))))  # stride 32
        if self.upscore2 is not None and self.score_pool4 is not None:
            pool4 = self.pool(features[3])
            score = layers.leading_crop(self.upscore2(score), list(pool4.shape[2:])) + self.score_pool4(pool4)
        if self.upscore_pool4 is not None and self.score_pool3 is not None:
            pool3 = self.pool(features[2])
            score = layers.leading_crop(self.upscore_pool4(score), list(pool3.shape[2:])) + \
                self.score_pool3(pool3)
        return layers.leading_crop(self.upscore(score), list(x.shape[2:]))


PAPER = "Long, Shelhamer & Darrell 2015, Fully Convolutional Networks for Semantic Segmentation (CVPR)"
OFFICIAL = "shelhamer/fcn.berkeleyvision.org"
VOC_OPTIONS = {"in_channels": 3, "num_classes": 21, "spatial_dims": 2}
SMALL_OPTIONS = {"encoder_options": {"widths": (4, 8, 8, 16, 16)}, "fc_channels": 16}


def _register(stride: int, params: int, source: str) -> None:
    name = f"fcn{stride}s"

    @register_model(name, paper=PAPER, dims=(2, 3), default_loss="dice_ce", input_multiple=1,
                    references=[Reference(options=dict(VOC_OPTIONS), params=params, source=source)],
                    small_options=SMALL_OPTIONS)
    def build(*, in_channels: int, num_classes: int, spatial_dims: int, **options: Any) -> FCN:
        if "stride" in options:
            raise MedsegError(f"model {name!r} has stride {stride}; choose fcn8s, fcn16s or fcn32s instead")
        return FCN(spatial_dims, in_channels, num_classes, stride=stride, **options)

    build.__doc__ = f"Build FCN-{stride}s (:class:`FCN` with ``stride={stride}``; see its docstring)."


_register(32, 136_152_917, f"{OFFICIAL} voc-fcn32s/net.py layer shapes (hand count)")
_register(16, 134_815_994, f"{OFFICIAL} voc-fcn16s/net.py layer shapes (hand count)")
_register(8, 134_489_759, f"classic-zoo spec; {OFFICIAL} voc-fcn8s/net.py")
