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
