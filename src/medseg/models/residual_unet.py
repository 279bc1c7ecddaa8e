"""Residual symmetric U-Net (Lee et al. 2017, "Superhuman Accuracy on the SNEMI3D Connectomics
Challenge"), 3D and 2D.

Fig. 1 of the paper: a U-Net whose every level is a residual block (two 3x3x3 conv-norm layers and the
identity, a 1x1 projection where the width changes), max-pooling down, transposed-conv up-sampling, and
skips that are **summed** with the up-sampled features instead of concatenated; a 1x1 conv gives the
logits. Widths double per level (``features * 2**level``). The paper's anisotropic 1x3x3 kernels and pools
for EM stacks are left out (isotropic here).
"""

from __future__ import annotations

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.residual import ResidualBlock
from medseg.models.base import SegmentationModel
from medseg.models.registry import register_model
from medseg.models.unet import level_widths


class ResidualUNet(SegmentationModel):
    """Residual U-Net with summation skips (Lee et al. 2017), 3D or 2D; inputs multiples of ``2**depth``.

    Args:
        spatial_dims: 3 or 2.
        in_channels: image channels.
        num_classes: output channels.
        features: width of the first level (or ``depth + 1`` explicit widths).
        depth: number of down-samplings.
        blocks: residual blocks per level (1).
        norm: normalisation (``batch``; ``instance`` for small batches).
        act: activation (``relu``; the paper uses ELU).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, features: int = 32,
                 depth: int = 4, blocks: int = 1, norm: str | None = "batch",
                 act: str | None = "relu") -> None:
        super().__init__()
        layers.check_spatial_dims(spatial_dims)
        self.spatial_dims = spatial_dims
        widths = level_widths(features, depth)
        self.input_multiple = 2**depth

        def level(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(*(ResidualBlock(spatial_dims, cin if i == 0 else cout, cout, norm=norm,
                                                 act=act) for i in range(max(blocks, 1))))

        self.down = nn.ModuleList(level(in_channels if i == 0 else widths[i - 1], w)
                                  for i, w in enumerate(widths))
        self.pool = layers.max_pool(spatial_dims, 2)
        self.ups = nn.ModuleList(layers.conv_transpose(spatial_dims, widths[i + 1], widths[i])
                                 for i in reversed(range(depth)))
        self.up_levels = nn.ModuleList(level(widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = layers.conv(spatial_dims, widths[0], num_classes, 1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        skips = []
        for i, level in enumerate(self.down):
            x = level(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, level in zip(self.ups, self.up_levels, strict=True):
            x = level(up(x) + skips.pop())
        return self.head(x)


@register_model(
    "residual_unet3d",
    paper="Lee et al. 2017, Superhuman Accuracy on the SNEMI3D Connectomics Challenge (arXiv 1706.00120)",
    dims=(2, 3),
    default_loss="dice_ce",
    input_multiple=16,
    defaults={"spatial_dims": 3},
    small_options={"features": 4, "depth": 2},
    aliases=("residual_unet",),
)
def build_residual_unet(*, in_channels: int, num_classes: int, spatial_dims: int, **options) -> ResidualUNet:
    """Build :class:`ResidualUNet` (see its docstring for the options)."""
    return ResidualUNet(spatial_dims, in_channels, num_classes, **options)
