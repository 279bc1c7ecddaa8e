"""Assertions shared by the test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

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
