"""Assertions and file writers shared by the test modules (importable because pytest puts tests/ on the
path)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch


def assert_grads_finite(block: torch.nn.Module, x: torch.Tensor) -> None:
    """Backpropagate a scalar through ``block`` and check the input and every parameter get finite grads."""
    x = x.clone().requires_grad_()
    block(x).square().mean().backward()
    grads = [x.grad] + [p.grad for p in block.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad.abs().sum() > 0


def random_input(spatial_dims: int, channels: int = 4, size: int = 8) -> torch.Tensor:
    """A random batch ``[2, channels, size, ...]`` with ``spatial_dims`` spatial axes."""
    return torch.randn(2, channels, *([size] * spatial_dims))


class SummedFeatures(torch.nn.Module):
    """An encoder whose feature maps are reduced to one scalar (the sum of their means)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(f.mean() for f in self.encoder(x))


def assert_encoder_grads_finite(encoder: torch.nn.Module, x: torch.Tensor) -> None:
    """:func:`assert_grads_finite` through every feature map of a multi-level encoder."""
    assert_grads_finite(SummedFeatures(encoder), x)


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> Path:
    """A float32 ``.safetensors`` file written by hand (u64 little-endian header size, JSON header, data)."""
    header: dict[str, object] = {}
    blob = b""
    for name, tensor in tensors.items():
        raw = tensor.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape),
                        "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob)
    return path
