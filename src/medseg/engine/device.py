"""Choosing the compute device: one rule for training, prediction and benchmarks."""

from __future__ import annotations

import torch

from medseg.errors import MedsegError


def resolve_device(name: str | torch.device, local_rank: int | None = None,
                   key: str = "device") -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, or ``cuda`` / ``cuda:N``.

    Asking for CUDA without a GPU is a one-line :class:`MedsegError` naming ``key``. Under DDP a bare
    ``cuda`` (or ``auto`` on a GPU machine) takes GPU ``local_rank``.
    """
    text = str(name)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise MedsegError(f"{key}: expected auto, cpu or cuda, got {text!r}")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise MedsegError(f"{key}: cuda was requested but no GPU is available to torch (use cpu or auto)")
    if device.index is not None:
        return device
    return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
