"""Tests of the PVT-v2 encoders: shapes, parameter counts, timm key names, the official-layout
conversion, weight adaptation, drop path, input-size checks and torch.export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medseg.encoders import create_encoder, encoder_info, load_encoder_weights
from medseg.encoders.pvt_v2 import DropPath, PVTv2Encoder, SpatialReductionAttention
from medseg.errors import InputSizeError, MedsegError

SMALL = {"embed_dims": (8, 16, 24, 32), "depths": (2, 1, 1, 1), "num_heads": (1, 2, 3, 4)}


def small(**options: object) -> PVTv2Encoder:
    return create_encoder("pvt_v2_b0", **{**SMALL, **options})  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (32, 160)])
def test_four_maps_at_quarter_to_thirty_second(size: tuple[int, int]) -> None:
    encoder = small().eval()
    assert encoder.channels == [8, 16, 24, 32]
    assert encoder.reductions == [4, 8, 16, 32]
    with torch.no_grad():
        features = encoder(torch.randn(2, 3, *size))
    assert len(features) == 4
    for feature, channels, reduction in zip(features, [8, 16, 24, 32], [4, 8, 16, 32], strict=True):
        assert tuple(feature.shape) == (2, channels, size[0] // reduction, size[1] // reduction)
        assert torch.isfinite(feature).all()


def test_b2_default_channels_and_spec_shapes_meta() -> None:
    # spec: at 256, 64x64x64, 128x32x32, 320x16x16, 512x8x8
    with torch.device("meta"):
        encoder = create_encoder("pvt_v2_b2")
    features = encoder(torch.empty(1, 3, 256, 256, device="meta"))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 64, 64), (128, 32, 32), (320, 16, 16), (512, 8, 8)]


def test_gradients_reach_every_parameter() -> None:
    encoder = small(in_channels=2)
    sum(f.square().mean() for f in encoder(torch.randn(2, 2, 64, 64))).backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------ parameter counts


def expected_parameters(dims: tuple[int, ...], depths: tuple[int, ...], in_channels: int = 3) -> int:
    """Counted from the architecture description, layer by layer (heads do not change the count)."""
    ratios, srs = (8, 8, 4, 4), (8, 4, 2, 1)
    total = in_channels * dims[0] * 49 + dims[0] + 2 * dims[0]  # 7x7 conv + bias + LayerNorm
    for i, c in enumerate(dims):
        h = ratios[i] * c
        if i:
            total += dims[i - 1] * c * 9 + c + 2 * c  # 3x3 s2 conv + bias + LayerNorm
        block = 2 * c  # norm1
        block += (c * c + c) + (2 * c * c + 2 * c) + (c * c + c)  # q, kv, proj
        if srs[i] > 1:
            block += c * c * srs[i] ** 2 + c + 2 * c  # sr conv + its LayerNorm
        block += 2 * c  # norm2
        block += (c * h + h) + (9 * h + h) + (h * c + c)  # fc1, depthwise 3x3, fc2
        total += depths[i] * block + 2 * c  # blocks + stage norm
    return total


# By hand for b0 (block = 4C^2 + 9C + [sr>1: sr^2 C^2 + 3C] + 2Ch + 11h, h = ratio*C):
#   stage 1 (C=32, h=256, sr 8): block 89,216 x2 + norm 64 + patch embed 4,704+32+64 = 183,296
#   stage 2 (C=64, h=512, sr 4): block 153,856 x2 + 128 + downsample 18,432+64+128 = 326,464
#   stage 3 (C=160, h=640, sr 2): block 418,560 x2 + 320 + downsample 92,160+160+320 = 930,080
#   stage 4 (C=256, h=1024, sr 1): block 800,000 x2 + 512 + downsample 368,640+256+512 = 1,969,920
#   total 3,409,760; with timm's 1000-class head (256*1000+1000) 3,666,760 = the paper's "3.7M".
# b1 + head (512*1000+1000): 14,009,000 = the paper's "14.0M"; b2 + head: 25,362,856 = "25.4M";
# b2 without head 24,849,856 is the U-Net v2 spec's number.
REFERENCE = {"pvt_v2_b0": 3_409_760, "pvt_v2_b1": 13_496_000, "pvt_v2_b2": 24_849_856}
ARCH = {"pvt_v2_b0": ((32, 64, 160, 256), (2, 2, 2, 2)), "pvt_v2_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
        "pvt_v2_b2": ((64, 128, 320, 512), (3, 4, 6, 3))}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        encoder = create_encoder(name)
    count = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    assert count == REFERENCE[name]
    assert expected_parameters(*ARCH[name]) == REFERENCE[name]
    assert encoder_info(name)["params"] == REFERENCE[name]
    assert encoder_info(name)["timm_name"] == name
    assert encoder_info(name)["dims"] == [2]


def test_parameter_count_follows_in_channels() -> None:
    with torch.device("meta"):
        encoder = create_encoder("pvt_v2_b0", in_channels=1)
    expected = expected_parameters(*ARCH["pvt_v2_b0"], in_channels=1)
    assert sum(p.numel() for p in encoder.parameters()) == expected


# ------------------------------------------------------------------------------------------ key names

# Read from timm/models/pvt_v2.py (huggingface/pytorch-image-models): PyramidVisionTransformerV2 has
# patch_embed (OverlapPatchEmbed: proj, norm), stages[i] (PyramidVisionTransformerStage: downsample =
# OverlapPatchEmbed for i > 0 else None, blocks[j] = Block(norm1, attn, drop_path, norm2, mlp), norm);
# Attention: q, kv, proj, and sr + norm when sr_ratio > 1; MlpWithDepthwiseConv: fc1, dwconv (a Conv2d
# directly), fc2.
TIMM_FIRST_KEYS = [
    "patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias",
    "stages.0.blocks.0.norm1.weight", "stages.0.blocks.0.norm1.bias",
    "stages.0.blocks.0.attn.q.weight", "stages.0.blocks.0.attn.q.bias",
    "stages.0.blocks.0.attn.kv.weight", "stages.0.blocks.0.attn.kv.bias",
    "stages.0.blocks.0.attn.proj.weight", "stages.0.blocks.0.attn.proj.bias",
    "stages.0.blocks.0.attn.sr.weight", "stages.0.blocks.0.attn.sr.bias",
    "stages.0.blocks.0.attn.norm.weight", "stages.0.blocks.0.attn.norm.bias",
    "stages.0.blocks.0.norm2.weight", "stages.0.blocks.0.norm2.bias",
    "stages.0.blocks.0.mlp.fc1.weight", "stages.0.blocks.0.mlp.fc1.bias",
    "stages.0.blocks.0.mlp.dwconv.weight", "stages.0.blocks.0.mlp.dwconv.bias",
    "stages.0.blocks.0.mlp.fc2.weight", "stages.0.blocks.0.mlp.fc2.bias",
]
# Keys per block: 20 with a spatial reduction (10 modules x weight/bias), 16 without (stage 4, sr 1);
# 4 per patch embedding, 2 per stage norm. b2: 4 + (3*20+2) + (4+4*20+2) + (4+6*20+2) + (4+3*16+2) = 332;
# b0/b1: 4 + (2*20+2) + (4+2*20+2) * 2 + (4+2*16+2) = 176.
TIMM_KEY_COUNT = {"pvt_v2_b0": 176, "pvt_v2_b1": 176, "pvt_v2_b2": 332}


@pytest.mark.parametrize("name", sorted(TIMM_KEY_COUNT))
def test_state_dict_keys_as_timm(name: str) -> None:
    with torch.device("meta"):
        keys = list(create_encoder(name).state_dict())
    assert len(keys) == TIMM_KEY_COUNT[name]
    assert keys[:len(TIMM_FIRST_KEYS)] == TIMM_FIRST_KEYS
    last = ARCH[name][1][3] - 1
    for key in ["stages.1.downsample.proj.weight", "stages.1.downsample.norm.bias", "stages.0.norm.weight",
                "stages.3.norm.bias", f"stages.3.blocks.{last}.mlp.fc2.bias",
                "stages.2.blocks.0.attn.sr.weight"]:
        assert key in keys, key
    assert "stages.0.downsample.proj.weight" not in keys
    assert not any(k.startswith("stages.3.") and ".attn.sr." in k for k in keys)


def test_layer_norm_eps() -> None:
    # block and stage norms: eps 1e-6 (spec, norm_layer); patch-embedding and reduction norms: PyTorch's
    # default 1e-5 (nn.LayerNorm(embed_dim) in both the official code and timm).
    encoder = small()
    assert encoder.stages[0].blocks[0].norm1.eps == 1e-6
    assert encoder.stages[2].norm.eps == 1e-6
    assert encoder.patch_embed.norm.eps == 1e-5
    assert encoder.stages[0].blocks[0].attn.norm.eps == 1e-5


def test_drop_path_rates_rise_linearly() -> None:
    # official: dpr = linspace(0, drop_path_rate, sum(depths)); b2 has 16 blocks
    with torch.device("meta"):
        encoder = create_encoder("pvt_v2_b2")
    rates = [block.drop_path.p for stage in encoder.stages for block in stage.blocks]
    assert rates == pytest.approx([0.1 * i / 15 for i in range(16)])


# ------------------------------------------------------------------------------------------ attention


def test_spatial_reduction_attention_matches_explicit_formula() -> None:
    dim, heads, sr, h, w = 8, 2, 2, 4, 6
    attention = SpatialReductionAttention(dim, heads, sr).eval()
    x = torch.randn(3, h * w, dim)
    # independent computation: reduce the map with the sr conv, then softmax(q k^T / sqrt(d)) v per head
    grid = x.transpose(1, 2).reshape(3, dim, h, w)
    reduced = torch.nn.functional.conv2d(grid, attention.sr.weight, attention.sr.bias, stride=sr)
    assert reduced.shape[-2:] == (h // sr, w // sr)
    context = attention.norm(reduced.flatten(2).transpose(1, 2))
    q = x @ attention.q.weight.T + attention.q.bias
    kv = context @ attention.kv.weight.T + attention.kv.bias
    k, v = kv[..., :dim], kv[..., dim:]
    d = dim // heads
    outs = []
    for head in range(heads):
        part = slice(head * d, (head + 1) * d)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(weights @ v[..., part])
    expected = torch.cat(outs, dim=-1) @ attention.proj.weight.T + attention.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(attention(x, h, w), expected, atol=1e-5, rtol=1e-5)


def test_qkv_bias_option() -> None:
    encoder = small(qkv_bias=False)
    attention = encoder.stages[0].blocks[0].attn
    assert attention.q.bias is None and attention.kv.bias is None
    assert attention.proj.bias is not None


# ------------------------------------------------------------------------------------------ weights


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (timm) keys -> whai362/PVT classification/pvt_v2.py keys, written without regular expressions:
    patch_embed -> patch_embed1, stages.i.downsample -> patch_embed{i+1}, stages.i.blocks.j -> block{i+1}.j
    (with the DWConv wrapper: mlp.dwconv.dwconv), stages.i.norm -> norm{i+1}."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "patch_embed":
            new = ["patch_embed1", *parts[1:]]
        elif parts[2] == "downsample":
            new = [f"patch_embed{int(parts[1]) + 1}", *parts[3:]]
        elif parts[2] == "blocks":
            rest = parts[4:]
            if rest[:2] == ["mlp", "dwconv"]:
                rest = ["mlp", "dwconv", "dwconv", *rest[2:]]
            new = [f"block{int(parts[1]) + 1}", parts[3], *rest]
        else:
            assert parts[2] == "norm"
            new = [f"norm{int(parts[1]) + 1}", *parts[3:]]
        out[".".join(new)] = value
    return out


def test_official_layout_loads(tmp_path: Path) -> None:
    source = small().eval()
    official = to_official(source.state_dict())
    for key in ["patch_embed1.proj.weight", "patch_embed4.norm.bias", "block1.1.mlp.dwconv.dwconv.weight",
                "block4.0.attn.kv.weight", "norm3.weight"]:
        assert key in official, key
    official["head.weight"] = torch.randn(10, 32)  # the classifier of the ImageNet file: ignored
    official["head.bias"] = torch.randn(10)
    path = tmp_path / "pvt_v2_official.pth"
    torch.save(official, path)

    target = small().eval()
    report = load_encoder_weights(target, path)
    assert report.loaded == len(source.state_dict())
    assert sorted(report.classifier) == ["head.bias", "head.weight"]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(source(x), target(x), strict=True):
            torch.testing.assert_close(a, b)


def test_timm_layout_passes_unchanged() -> None:
    encoder = small()
    state = encoder.state_dict()
    assert encoder.convert_state_dict(state) is state


def test_one_channel_weights_are_summed(tmp_path: Path) -> None:
    rgb = small().eval()
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    gray = small(in_channels=1).eval()
    report = load_encoder_weights(gray, path)
    assert report.adapted == ["patch_embed.proj.weight"]
    torch.testing.assert_close(gray.patch_embed.proj.weight, rgb.patch_embed.proj.weight.sum(1, keepdim=True))
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():  # a gray image equals an RGB image with three equal channels
        for a, b in zip(gray(x), rgb(x.repeat(1, 3, 1, 1)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ drop path


def test_eval_is_deterministic() -> None:
    encoder = small(drop_path_rate=0.5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first, second = encoder(x), encoder(x)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_drop_path_active_in_training_only() -> None:
    encoder = small(drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        encoder.train()
        first, second = encoder(x)[-1], encoder(x)[-1]
        encoder.eval()
        evaluated = encoder(x)[-1]
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, evaluated)


def test_without_drop_path_train_equals_eval() -> None:
    encoder = small(drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        trained = encoder.train()(x)
        evaluated = encoder.eval()(x)
    for a, b in zip(trained, evaluated, strict=True):
        torch.testing.assert_close(a, b)


def test_drop_path_drops_whole_samples_and_keeps_the_mean() -> None:
    layer = DropPath(0.25).train()
    out = layer(torch.ones(4000, 3, 2))
    per_sample = out.reshape(4000, -1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(layer.eval()(torch.ones(5, 2)), torch.ones(5, 2))
    with pytest.raises(MedsegError):
        DropPath(1.0)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("size", [(48, 64), (64, 40), (16, 32)])
def test_sizes_not_multiple_of_32_raise(size: tuple[int, int]) -> None:
    with pytest.raises(InputSizeError, match="multiples of 32"):
        small()(torch.randn(1, 3, *size))


def test_bad_options_raise() -> None:
    with pytest.raises(MedsegError, match="spatial_dims"):
        create_encoder("pvt_v2_b2", spatial_dims=3)
    with pytest.raises(MedsegError, match="spatial_dims"):
        PVTv2Encoder(spatial_dims=3)
    with pytest.raises(MedsegError, match="num_heads"):
        small(num_heads=(3, 2, 3, 4))
    with pytest.raises(MedsegError, match="depths"):
        small(depths=(1, 1, 1))
    with pytest.raises(InputSizeError):
        small()(torch.randn(3, 64, 64))


# ------------------------------------------------------------------------------------------ export


def test_torch_export_matches_eager() -> None:
    encoder = small(in_channels=2, depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 2, 64, 96)
    with torch.no_grad():
        eager = encoder(x)
        exported = torch.export.export(encoder, (x,)).module()(x)
    assert len(exported) == 4
    for a, b in zip(eager, exported, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

