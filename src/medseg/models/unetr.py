"""UNETR (Hatamizadeh et al., WACV 2022, "UNETR: Transformers for 3D Medical Image Segmentation").

Fig. 2 of the paper: a ViT encoder (16^3 patches embedded by a conv, 12 layers, hidden size 768, MLP
3072, 12 heads) reads the image as a sequence; the tokens of layers 3, 6, 9 and 12 are reshaped to
``hidden x (H/16) x (W/16) x (D/16)`` maps. Layer 12 is the bottleneck; layers 9, 6 and 3 are brought to
1/8, 1/4 and 1/2 resolution by 1, 2 and 3 deconvolution blocks (2x2x2 transposed conv, then a 3x3x3
residual conv block except after the first deconvolution). The CNN decoder up-samples the bottleneck by
transposed convs, concatenates each skip and applies a residual conv block, down to the full-resolution
skip (a residual conv block on the image itself), then a 1x1 conv gives the logits. Conv blocks use
instance norm (no affine) and leaky ReLU, as MONAI's ``UNETR``.

MONAI takes the skips from ``hidden_states_out[3, 6, 9]`` (layers 4, 7 and 10); ``skip_layers``
chooses, the paper's 3, 6, 9 by default. Our count at MONAI's reference configuration is MONAI 1.6's
minus its 12 unused ``norm_cross_attn`` layer norms (18,432 parameters, 0.02%). 2D and 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medseg import layers
from medseg.blocks.residual import ResidualBlock
from medseg.blocks.transformer import VisionTransformer, as_tuple
from medseg.errors import MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import Reference, register_model

PATCH = 16
"""The patch size: four 2x up-samplings bring the token grid back to the input resolution."""


def _deconv(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    return layers.conv_transpose(spatial_dims, in_channels, out_channels, 2, 2, bias=False)


class ConvBlock(ResidualBlock):
    """UNETR's residual conv block: 3x3 conv-norm-act, 3x3 conv-norm, plus the input (1x1 conv-norm when
    the width changes), then act (MONAI's ``UnetResBlock``)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 norm: str = "instance_noaffine", act: str = "leaky_relu") -> None:
        super().__init__(spatial_dims, in_channels, out_channels, norm=norm, act=act)


class SkipProjection(nn.Sequential):
    """A ViT skip brought to a finer level: a transposed conv from ``hidden_size``, then ``num_blocks``
    times a transposed conv and a :class:`ConvBlock` (the paper's deconvolution blocks)."""

    def __init__(self, spatial_dims: int, hidden_size: int, out_channels: int, num_blocks: int,
                 norm: str, act: str) -> None:
        modules: list[nn.Module] = [_deconv(spatial_dims, hidden_size, out_channels)]
        for _ in range(num_blocks):
            modules += [_deconv(spatial_dims, out_channels, out_channels),
                        ConvBlock(spatial_dims, out_channels, out_channels, norm, act)]
        super().__init__(*modules)


class UpBlock(nn.Module):
    """Decoder step: transposed conv to ``out_channels``, concatenation with the skip, :class:`ConvBlock`."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str, act: str) -> None:
        super().__init__()
        self.up = _deconv(spatial_dims, in_channels, out_channels)
        self.conv = ConvBlock(spatial_dims, 2 * out_channels, out_channels, norm, act)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNETR(SegmentationModel):
    """UNETR (Hatamizadeh et al. 2022, Fig. 2), 3D or 2D; inputs are multiples of 16.

    Args:
        spatial_dims: 3 or 2.
        in_channels: image channels.
        num_classes: output channels.
        img_size: the training input size (an int or one per axis): the learned position embedding covers
            its patch grid and is interpolated for other sizes.
        feature_size: width of the full-resolution decoder level (16); levels 1/2, 1/4, 1/8 have 2, 4, 8x.
        hidden_size, mlp_dim, num_layers, num_heads: the ViT (768, 3072, 12, 12: ViT-Base).
        skip_layers: the (1-based) transformer layers feeding the 1/2, 1/4 and 1/8 skips ((3, 6, 9), the
            paper; MONAI's are (4, 7, 10)); the last layer is always the bottleneck.
        dropout: dropout in the transformer (0).
        qkv_bias: a bias on the query/key/value projection (none, as MONAI).
        norm, act: of the conv blocks (``instance_noaffine``, ``leaky_relu``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int,
                 img_size: int | Sequence[int] = 96, feature_size: int = 16, hidden_size: int = 768,
                 mlp_dim: int = 3072, num_layers: int = 12, num_heads: int = 12,
                 skip_layers: Sequence[int] = (3, 6, 9), dropout: float = 0.0, qkv_bias: bool = False,
                 norm: str = "instance_noaffine", act: str = "leaky_relu") -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        self.spatial_dims = spatial_dims
        self.input_multiple = PATCH
        size = as_tuple(img_size, spatial_dims, "img_size")
        skips = [int(s) for s in skip_layers]
        if len(skips) != 3 or sorted(skips) != skips or skips[0] < 1 or skips[-1] >= num_layers:
            raise MedsegError(f"skip_layers must be 3 increasing layers in [1, {num_layers - 1}], got "
                              f"{list(skip_layers)}")
        if feature_size < 1:
            raise MedsegError(f"feature_size must be >= 1, got {feature_size}")
        self.skip_layers = skips
        self.vit = VisionTransformer(spatial_dims, in_channels, size, (PATCH,) * spatial_dims, hidden_size,
                                     mlp_dim, num_layers, num_heads, dropout, qkv_bias)
        f = feature_size
        self.encoder1 = ConvBlock(spatial_dims, in_channels, f, norm, act)
        self.encoder2 = SkipProjection(spatial_dims, hidden_size, 2 * f, 2, norm, act)
        self.encoder3 = SkipProjection(spatial_dims, hidden_size, 4 * f, 1, norm, act)
        self.encoder4 = SkipProjection(spatial_dims, hidden_size, 8 * f, 0, norm, act)
        self.decoder5 = UpBlock(spatial_dims, hidden_size, 8 * f, norm, act)
        self.decoder4 = UpBlock(spatial_dims, 8 * f, 4 * f, norm, act)
        self.decoder3 = UpBlock(spatial_dims, 4 * f, 2 * f, norm, act)
        self.decoder2 = UpBlock(spatial_dims, 2 * f, f, norm, act)
        self.out = layers.conv(spatial_dims, f, num_classes, 1, padding=0)

    @staticmethod
    def tokens_to_map(tokens: Tensor, grid: list[int]) -> Tensor:
        """``[B, N, C]`` tokens as a ``[B, C, *grid]`` feature map."""
        return tokens.transpose(1, 2).reshape([tokens.shape[0], tokens.shape[2]] + grid)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        grid = [int(s) // PATCH for s in x.shape[2:]]
        tokens, hidden = self.vit(x)
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(self.tokens_to_map(hidden[self.skip_layers[0] - 1], grid))
        enc3 = self.encoder3(self.tokens_to_map(hidden[self.skip_layers[1] - 1], grid))
        enc4 = self.encoder4(self.tokens_to_map(hidden[self.skip_layers[2] - 1], grid))
        y = self.decoder5(self.tokens_to_map(tokens, grid), enc4)
        y = self.decoder4(y, enc3)
        y = self.decoder3(y, enc2)
        return self.out(self.decoder2(y, enc1))


MONAI_REFERENCE = {"in_channels": 1, "num_classes": 14, "spatial_dims": 3, "img_size": 96, "feature_size": 16}


@register_model(
    "unetr",
    paper="Hatamizadeh et al. 2022, UNETR: Transformers for 3D Medical Image Segmentation (WACV)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=PATCH,
    references=[Reference(options=dict(MONAI_REFERENCE), params=92_802_478,
                          source="MONAI 1.6.1 UNETR(1, 14, img_size=96, feature_size=16, hidden_size=768, "
                                 "mlp_dim=3072, num_heads=12, proj_type='conv'), measured; ours has 18,432 "
                                 "fewer (MONAI's unused norm_cross_attn layer norms)")],
    small_options={"img_size": 32, "feature_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_layers": 4,
                   "num_heads": 2, "skip_layers": (1, 2, 3)},
)
def build_unetr(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> UNETR:
    """Build :class:`UNETR` (see its docstring for the options)."""
    return UNETR(spatial_dims, in_channels, num_classes, **options)
