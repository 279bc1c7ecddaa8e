"""Distributed data-parallel training under ``torchrun`` (PyTorch DDP; Li et al., VLDB 2020).

``torchrun --nproc_per_node N -m medseg train CONFIG`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` reads them and joins the process group (NCCL on GPUs, Gloo on CPUs). Without
them everything here is a no-op for a single process, so the trainer has one code path. Gradients are
averaged by :class:`~torch.nn.parallel.DistributedDataParallel`; metrics are reduced as sums and counts
(:func:`all_reduce_sum`); only rank 0 writes files (:attr:`DistributedContext.is_main`).

``data.batch_size`` is per rank. With whole-image batches, ``N`` ranks at batch ``B`` see together the cases
of one process at batch ``N * B`` and, for losses that are means over samples (Dice per sample, BCE, CE),
follow its per-step losses (tested to 1e-4 relative with 2 Gloo ranks). Two things differ by design: batch
normalisation normalises each rank's own batch (use ``instance`` norm, or SyncBatchNorm, for equality), and
patch batches come from one random stream per rank (statistically alike, not the same draws).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

__all__ = ["DistributedContext", "abort_distributed", "all_reduce_sum", "barrier", "broadcast_object",
           "init_distributed", "rank_device", "shutdown_distributed", "wrap_model"]

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether a process group is active (more than one process)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and plots."""
        return self.rank == 0


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise MedsegError(f"environment variable {name}={os.environ[name]!r} is not an integer") from None


def init_distributed(device_type: str = "cpu", timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group described by ``torchrun``'s environment (NCCL for ``cuda``, else Gloo).

    Without ``WORLD_SIZE`` (or with 1) returns the single-process context and starts nothing. An already
    initialised group (e.g. by a test harness) is reused.
    """
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return DistributedContext()
    missing = [k for k in _ENV_KEYS if k not in os.environ]
    if missing:
        raise MedsegError(f"distributed run: {', '.join(missing)} not set (start it with torchrun)")
    rank, world, local = (_env_int(k) for k in _ENV_KEYS)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if local >= torch.cuda.device_count():
            raise MedsegError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    logger.info("distributed: rank %d of %d (%s)", rank, world, backend)
    return DistributedContext(rank=rank, world_size=world, local_rank=local, backend=backend)


def shutdown_distributed(ctx: DistributedContext) -> None:
    """Wait for every rank, then leave the process group (clean shutdown)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abort_distributed(ctx: DistributedContext) -> None:
    """Leave the process group without waiting for the other ranks (after an error on this rank)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, ctx: DistributedContext, requested: str) -> torch.device:
    """This rank's device: under DDP a CUDA device that ``requested`` does not number (``auto``,
    ``cuda``) is the rank's local GPU; anything else stays ``device``."""
    if ctx.enabled and device.type == "cuda" and not str(requested).startswith("cuda:"):
        return torch.device("cuda", ctx.local_rank)
    return device


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (a copy; float64 on the CPU for Gloo and NCCL
    alike is avoided: the tensor stays on its device)."""
    if not ctx.enabled:
        return values.clone()
    summed = values.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed


def broadcast_object(value: Any, ctx: DistributedContext) -> Any:
    """Rank 0's ``value`` on every rank (picklable objects)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: nn.Module, ctx: DistributedContext, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed (gradients averaged across ranks), else as is.
    The initial weights are broadcast from rank 0 by DDP's constructor."""
    if not ctx.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
