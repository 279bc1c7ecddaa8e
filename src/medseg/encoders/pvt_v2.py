"""PVT-v2 encoders (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", 2022).

Four stages of transformer blocks over overlapping patch embeddings (Sec. 3.1, Fig. 1: a 7x7 stride-4
convolution, then 3x3 stride-2 ones), spatial-reduction attention (PVT v1 Eq. 3-4: keys and values
from a ``sr x sr`` strided convolution of the tokens) and a feed-forward network with a depthwise 3x3
convolution between its two linear layers (Sec. 3.3, Eq. 1). Returns four maps at 1/4 .. 1/32.

State-dict keys are timm's ``PyramidVisionTransformerV2`` (``patch_embed``, ``stages.N.downsample``,
``stages.N.blocks.M``, ``stages.N.norm``); :meth:`PVTv2Encoder.convert_state_dict` maps the original
repository's layout (``patch_embed1``, ``block1.0``, ``norm1``, ``mlp.dwconv.dwconv``) to it, so the
``pvt_v2_b*.pth`` files of whai362/PVT (the ones U-Net v2 and Polyp-PVT use) load directly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg.encoders.base import Encoder, register_encoder
from medseg.errors import InputSizeError, MedsegError
from medseg.layers import conv

PAPER = "Wang et al., PVT v2: Improved Baselines with Pyramid Vision Transformer (CVMJ 2022)"
NORM_EPS = 1e-6
"""LayerNorm eps of the blocks and the stage norms. The patch embeddings' and the attention's reduction
norms keep PyTorch's default 1e-5, as in the official code and timm."""


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a residual branch for a random subset of
    samples with probability ``p`` and scale the kept ones by ``1 / (1 - p)``; identity in eval."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise MedsegError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def to_tokens(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]``."""
    return x.flatten(2).transpose(1, 2)


def to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """``[B, H*W, C]`` -> ``[B, C, H, W]``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class OverlapPatchEmbedding(nn.Module):
    """Overlapping patch embedding (Sec. 3.1): a ``k x k`` convolution of stride ``s`` and padding
    ``k // 2`` (7/4 for the first stage, 3/2 after), then LayerNorm over the tokens."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = conv(2, in_channels, dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2], x.shape[-1]
        return self.norm(to_tokens(x)), height, width


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from the token map shrunk by a ``sr x sr``
    convolution of stride ``sr`` plus LayerNorm (PVT v1 Eq. 3-4; no reduction when ``sr == 1``)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise MedsegError(f"pvt_v2: embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr: nn.Module | None = None
        self.norm: nn.Module | None = None
        if sr_ratio > 1:
            self.sr = conv(2, dim, dim, sr_ratio, stride=sr_ratio, padding=0)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        batch, length, dim = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(batch, length, heads, dim // heads).transpose(1, 2)
        context = x
        if self.sr is not None and self.norm is not None:
            context = self.norm(to_tokens(self.sr(to_map(x, height, width))))
        kv = self.kv(context).reshape(batch, -1, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class DepthwiseConvMlp(nn.Module):
    """The PVT-v2 feed-forward network (Sec. 3.3, Eq. 1): Linear -> depthwise 3x3 conv -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = conv(2, hidden, hidden, 3, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = to_tokens(self.dwconv(to_map(self.fc1(x), height, width)))
        return self.fc2(self.act(x))


class PVTv2Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(SRA(LN(x)))``, then ``x + DropPath(FFN(LN(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, qkv_bias: bool,
                 drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = DepthwiseConvMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class PVTv2Stage(nn.Module):
    """One pyramid stage: a stride-2 patch embedding (none in stage 0, whose embedding is the
    encoder's ``patch_embed``), one block per ``drop_path`` rate and a final LayerNorm; returns a
    ``[B, C, H, W]`` map."""

    def __init__(self, in_dim: int, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int,
                 qkv_bias: bool, drop_path: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.downsample = OverlapPatchEmbedding(in_dim, dim, 3, 2) if downsample else None
        self.blocks = nn.ModuleList(PVTv2Block(dim, num_heads, mlp_ratio, sr_ratio, qkv_bias, rate)
                                    for rate in drop_path)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """``x``: tokens of a ``height x width`` map, or with a downsample the previous stage's map."""
        if self.downsample is not None:
            x, height, width = self.downsample(x)
        for block in self.blocks:
            x = block(x, height, width)
        return to_map(self.norm(x), height, width).contiguous()


def _four(name: str, values: Sequence[float] | float, kind: type) -> list:
    if isinstance(values, (int, float)):
        values = [values] * 4
    values = list(values)
    if len(values) != 4 or any(kind is int and int(v) != v for v in values) or any(v <= 0 for v in values):
        raise MedsegError(f"pvt_v2: {name} must be four positive {kind.__name__}s, got {values!r}")
    return [kind(v) for v in values]


_OFFICIAL_PATTERNS = [
    (re.compile(r"^patch_embed1\."), lambda _: "patch_embed."),
    (re.compile(r"^patch_embed([234])\."), lambda m: f"stages.{int(m.group(1)) - 1}.downsample."),
    (re.compile(r"^block([1-4])\.(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (re.compile(r"^norm([1-4])\."), lambda m: f"stages.{int(m.group(1)) - 1}.norm."),
]


class PVTv2Encoder(Encoder):
    """PVT-v2 feature pyramid: maps with ``embed_dims`` channels at 1/4, 1/8, 1/16 and 1/32.

    Args:
        in_channels: image channels (the first patch-embedding conv adapts when weights are loaded).
        spatial_dims: must be 2.
        embed_dims, depths, num_heads, mlp_ratios, sr_ratios: per stage (default PVT-v2-b2).
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this value.
        qkv_bias: bias in the query and key/value projections.

    Inputs must be [B, C, H, W] with H and W multiples of 32 (checked, :class:`InputSizeError`).
    """

    # TorchScript cannot resolve the base class's annotations under postponed evaluation
    __jit_ignored_attributes__ = ["first_conv", "spatial_dims", "channels", "reductions"]
    __jit_unused_properties__ = ["input_multiple"]

    def __init__(self, in_channels: int = 3, spatial_dims: int = 2,
                 embed_dims: Sequence[int] = (64, 128, 320, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 num_heads: Sequence[int] = (1, 2, 5, 8), mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), drop_path_rate: float = 0.1,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise MedsegError(f"pvt_v2 encoders are 2D only: spatial_dims must be 2, got {spatial_dims!r}")
        dims = _four("embed_dims", embed_dims, int)
        depths_ = _four("depths", depths, int)
        heads = _four("num_heads", num_heads, int)
        ratios = _four("mlp_ratios", mlp_ratios, float)
        srs = _four("sr_ratios", sr_ratios, int)
        if not 0.0 <= drop_path_rate < 1.0:
            raise MedsegError(f"pvt_v2: drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.spatial_dims = 2
        self.channels = dims
        self.reductions = [4, 8, 16, 32]
        self.first_conv = "patch_embed.proj.weight"
        self.patch_embed = OverlapPatchEmbedding(in_channels, dims[0], 7, 4)
        total = sum(depths_)
        rates = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]  # linear 0 .. rate
        self.stages = nn.ModuleList()
        start = 0
        for i in range(4):
            rates_i = rates[start:start + depths_[i]]
            self.stages.append(PVTv2Stage(dims[max(i - 1, 0)], dims[i], heads[i], ratios[i], srs[i], qkv_bias,
                                          rates_i, downsample=i > 0))
            start += depths_[i]
        self.apply(_init_weights)

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InputSizeError` unless ``x`` is ``[B, C, H, W]`` with H, W multiples of 32."""
        if torch.jit.is_scripting() or torch.compiler.is_compiling():
            return
        if x.dim() != 4:
            raise InputSizeError(f"PVTv2Encoder expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        if any(int(s) % 32 or int(s) == 0 for s in x.shape[2:]):
            raise InputSizeError(f"PVTv2Encoder: input size {tuple(x.shape[2:])} does not work; height and "
                                 "width must be multiples of 32")

    def forward(self, x: Tensor) -> list[Tensor]:
        self.check_input(x)
        x, height, width = self.patch_embed(x)
        features: list[Tensor] = []
        for stage in self.stages:  # stages after the first embed the previous map themselves
            x = stage(x, height, width)
            features.append(x)
        return features

    def convert_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map the original whai362/PVT layout (recognised by ``patch_embed1.proj.weight``) to timm's;
        other layouts pass unchanged."""
        if "patch_embed1.proj.weight" not in state:
            return state
        converted: dict[str, Tensor] = {}
        for key, value in state.items():
            for pattern, replacement in _OFFICIAL_PATTERNS:
                key, count = pattern.subn(replacement, key, count=1)
                if count:
                    break
            converted[key.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")] = value
        return converted


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated normal (std 0.02) linear weights, zero biases, convs
    normal with std sqrt(2 / fan_out) (fan_out divided by groups). Meta tensors hold no values: skipped
    (``normal_`` on them would import torch's compiler stack, seconds of start-up)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.is_meta:
        return
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ------------------------------------------------------------------------------------------ registry

_B0 = {"embed_dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2)}
_B1 = {"embed_dims": (64, 128, 320, 512), "depths": (2, 2, 2, 2)}
_B2 = {"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 6, 3)}


@register_encoder("pvt_v2_b0", paper=PAPER, dims=(2,), params=3_409_760, timm_name="pvt_v2_b0")
def pvt_v2_b0(**options: object) -> PVTv2Encoder:
    """PVT-v2-b0: dims 32/64/160/256, depths 2/2/2/2."""
    return PVTv2Encoder(**{**_B0, **options})  # type: ignore[arg-type]


@register_encoder("pvt_v2_b1", paper=PAPER, dims=(2,), params=13_496_000, timm_name="pvt_v2_b1")
def pvt_v2_b1(**options: object) -> PVTv2Encoder:
    """PVT-v2-b1: dims 64/128/320/512, depths 2/2/2/2."""
    return PVTv2Encoder(**{**_B1, **options})  # type: ignore[arg-type]


@register_encoder("pvt_v2_b2", paper=PAPER, dims=(2,), params=24_849_856, timm_name="pvt_v2_b2")
def pvt_v2_b2(**options: object) -> PVTv2Encoder:
    """PVT-v2-b2 (the U-Net v2 and Polyp-PVT encoder): dims 64/128/320/512, depths 3/4/6/3."""
    return PVTv2Encoder(**{**_B2, **options})  # type: ignore[arg-type]
