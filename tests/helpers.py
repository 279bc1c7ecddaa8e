"""Assertions and builders shared by the test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medseg.data import write_polyp_dataset
from medseg.data.preprocess import Preprocessor
from medseg.engine.checkpoint import make_checkpoint, save_checkpoint
from medseg.models.registry import create_model

NO_AUGMENTATION = {name: False for name in ("mirror", "rot90", "rotation", "scale", "shear", "elastic",
                                            "noise", "blur", "brightness", "contrast", "low_resolution",
                                            "gamma")}


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


def truncated(path: Path) -> Path:
    """Cut a file to half its size."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def tiny_config(tmp: Path, run: str = "run", **train_options: Any) -> dict[str, Any]:
    """unet features 4 depth 2 on 8 synthetic 32x32 images, whole-image batches, no augmentation, CPU."""
    data = tmp / "data"
    write_polyp_dataset(data, n_cases=8, size=(32, 32))
    return {
        "run_dir": str(tmp / run),
        "data": {"root": str(data), "batch_size": 2, "num_workers": 0, "cache_dir": str(tmp / "cache")},
        "model": {"name": "unet", "options": {"features": 4, "depth": 2}},
        "loss": {"losses": [{"name": "dice"}, {"name": "bce"}]},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 3, "iterations_per_epoch": None, "device": "cpu", "seed": 0, **train_options},
        "augmentation": dict(NO_AUGMENTATION),
    }


def tiny_checkpoint(path: Path, *, in_channels: int = 1, num_classes: int = 1, dims: int = 2, seed: int = 0,
                    mode: str = "binary", name: str = "unet", preprocessing: dict | None = None,
                    inference: dict | None = None, **options: Any) -> Path:
    """An untrained seeded network saved as a medseg checkpoint (unet features 4 depth 2 by default)."""
    torch.manual_seed(seed)
    options = {"features": 4, "depth": 2, **options}
    model = create_model(name, in_channels=in_channels, num_classes=num_classes, spatial_dims=dims, **options)
    prep = preprocessing if preprocessing is not None else Preprocessor(normalization="zscore").to_dict()
    ckpt = make_checkpoint(model, name=name, in_channels=in_channels, num_classes=num_classes,
                           spatial_dims=dims, options=options, label_mode=mode, preprocessing=prep,
                           inference=inference or {"mirror": False})
    return save_checkpoint(path, ckpt)


def cli_command(*args: object) -> list[str]:
    """``python -m medseg.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "medseg.cli", *map(str, args)]


def single_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def sigkill_when(command: Sequence[str], ready: Callable[[], bool], timeout: float = 60) -> None:
    """Start ``command``, poll ``ready()`` every few milliseconds and SIGKILL the process once it is true;
    fails when the process ends first (it had nothing left to interrupt) or ``timeout`` passes."""
    process = subprocess.Popen(list(command), env=single_thread_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and not ready():
            assert time.monotonic() < deadline, f"not ready after {timeout} s: {command}"
            time.sleep(0.01)
        assert process.poll() is None, "the process ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
