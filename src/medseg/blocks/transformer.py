"""A plain Vision Transformer encoder (Dosovitskiy et al. 2021) for 2D and 3D images.

* :class:`PatchEmbedding` — non-overlapping ``patch_size`` patches projected by a strided conv, plus a
  learned position embedding for the grid of ``img_size`` (interpolated for other grids).
* :class:`SelfAttention`, :class:`TransformerBlock` — pre-norm multi-head self-attention and a GELU MLP,
  each with a residual connection (Eq. 2-3 of the ViT paper).
* :class:`VisionTransformer` — the embedding, ``num_layers`` blocks and a final layer norm; returns the
  normalised last tokens and every block's output (UNETR reads intermediate layers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg import layers
from medseg.errors import MedsegError


def as_tuple(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    """An int repeated ``spatial_dims`` times, or a sequence of that length, as a tuple of ints."""
    values = (int(value),) * spatial_dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != spatial_dims or min(values) < 1:
        raise MedsegError(f"{name} must be a positive int or {spatial_dims} positive ints, got {value!r}")
    return values


class PatchEmbedding(nn.Module):
    """Conv patch embedding (kernel = stride = ``patch_size``) and a learned position embedding.

    The position embedding covers the patch grid of ``img_size``; inputs of another size get it
    resized (bilinear/trilinear) to their grid, so any multiple of the patch size works.
    """

    def __init__(self, spatial_dims: int, in_channels: int, hidden_size: int, img_size: Sequence[int],
                 patch_size: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.grid = [s // p for s, p in zip(img_size, patch_size, strict=True)]
        if min(self.grid) < 1 or any(s % p for s, p in zip(img_size, patch_size, strict=True)):
            raise MedsegError(f"img_size {list(img_size)} must be a multiple of patch_size "
                              f"{list(patch_size)}")
        kernel = tuple(patch_size)
        conv = nn.Conv2d if layers.check_spatial_dims(spatial_dims) == 2 else nn.Conv3d
        self.proj = conv(in_channels, hidden_size, kernel, stride=kernel)
        n_patches = 1
        for g in self.grid:
            n_patches *= g
        self.position = nn.Parameter(torch.zeros(1, n_patches, hidden_size))
        nn.init.trunc_normal_(self.position, std=0.02, a=-2.0, b=2.0)
        self.dropout = nn.Dropout(dropout)

    def position_for(self, grid: list[int]) -> Tensor:
        """The position embedding ``[1, prod(grid), hidden]`` for a patch grid."""
        if grid == self.grid:
            return self.position
        hidden = self.position.shape[-1]
        table = self.position.transpose(1, 2).reshape([1, hidden] + self.grid)
        return layers.resize_to(table, grid).flatten(2).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        grid = [int(s) for s in x.shape[2:]]
        return self.dropout(x.flatten(2).transpose(1, 2) + self.position_for(grid))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention: a fused ``qkv`` projection (bias optional, none in
    UNETR) and an output projection with bias."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise MedsegError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2],
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer: ``x + MSA(LN(x))``, then ``x + MLP(LN(x))`` (Linear-GELU-Linear)."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout: float = 0.0,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = SelfAttention(hidden_size, num_heads, qkv_bias, dropout)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, hidden_size), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding, ``num_layers`` :class:`TransformerBlock` and a final layer norm.

    ``forward`` returns ``(tokens, hidden)``: the normalised output ``[B, N, hidden_size]`` and the
    output of every block (before the final norm), ``hidden[i]`` that of layer ``i + 1``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, img_size: Sequence[int],
                 patch_size: Sequence[int], hidden_size: int = 768, mlp_dim: int = 3072, num_layers: int = 12,
                 num_heads: int = 12, dropout: float = 0.0, qkv_bias: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise MedsegError(f"num_layers must be >= 1, got {num_layers}")
        self.embedding = PatchEmbedding(spatial_dims, in_channels, hidden_size, img_size, patch_size, dropout)
        self.blocks = nn.ModuleList(TransformerBlock(hidden_size, mlp_dim, num_heads, dropout, qkv_bias)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = self.embedding(x)
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        return self.norm(x), hidden
