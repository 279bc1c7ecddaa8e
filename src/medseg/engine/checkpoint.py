"""Checkpoints: atomic writes, safe loading (``weights_only=True``) and the state for an exact resume.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts only (what
``torch.load(..., weights_only=True)`` accepts), laid out as::

    format, medseg_version
    model: {name, in_channels, num_classes, spatial_dims, options[, pointrend]}   # rebuilds the network
    state_dict                                                         # the weights
    label_mode, class_names, preprocessing (Preprocessor.to_dict()), inference, config (resolved, plain)
    training: {epoch, global_step, best_score, epochs_without_improvement,    # only for --resume
               optimizer, scheduler, scaler, rng, extra}

:func:`save_checkpoint` writes a temporary file in the target's folder, flushes and fsyncs it, renames it
over the target (``os.replace``, atomic on POSIX) and fsyncs the folder, so a crash or SIGKILL at any
moment leaves either the previous complete file or the new complete one.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from medseg import __version__
from medseg.encoders.base import read_state_dict
from medseg.errors import MedsegError
from medseg.fileio import atomic_path
from medseg.models.pointrend import wrap_pointrend
from medseg.models.registry import create_model

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointError", "CheckpointPaths", "InitReport", "ResumeState",
    "build_model_from_checkpoint", "capture_rng_state", "checkpoint_patch_size", "checkpoint_paths",
    "epoch_checkpoint_path",
    "load_checkpoint", "load_initial_weights", "load_model_weights", "make_checkpoint", "read_model_weights",
    "restore_rng_state", "restore_training_state", "save_checkpoint", "training_state", "unwrap_model",
]

CHECKPOINT_FORMAT = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
EPOCH_NAME = "epoch_{epoch:04d}.pt"

_PLAIN_SCALARS = (bool, int, float, str, type(None), torch.Tensor, torch.dtype, torch.Size, torch.device)


class CheckpointError(MedsegError):
    """A checkpoint that cannot be read, is not a medseg checkpoint, or does not fit a model."""


class CheckpointPaths(NamedTuple):
    last: Path
    best: Path


def checkpoint_paths(run_dir: str | Path) -> CheckpointPaths:
    """``run_dir/last.pt`` (written every epoch, for resuming) and ``run_dir/best.pt`` (best validation)."""
    run_dir = Path(run_dir)
    return CheckpointPaths(run_dir / LAST_NAME, run_dir / BEST_NAME)


def epoch_checkpoint_path(run_dir: str | Path, epoch: int) -> Path:
    """``run_dir/epoch_0010.pt``: the checkpoint kept after (1-based) ``epoch`` with ``train.save_every``."""
    return Path(run_dir) / EPOCH_NAME.format(epoch=int(epoch))


# ------------------------------------------------------------------------------------------ files


def _check_plain(value: Any, key: str) -> None:
    """Refuse what ``weights_only`` loading would reject (numpy arrays, objects) at save time."""
    if type(value) in (dict, OrderedDict):  # subclasses (defaultdict, NamedTuple) would be pickled as classes
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"checkpoint entry {key}: key {k!r} is not a string or an integer")
            _check_plain(v, f"{key}.{k}")
    elif type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{key}[{i}]")
    elif not isinstance(value, _PLAIN_SCALARS):
        raise CheckpointError(f"checkpoint entry {key}: {type(value).__name__} is not plain data (tensors, "
                              "numbers, strings, lists and dicts only)")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (plain data only) to ``path`` atomically and durably; returns the path.

    One writer per file is assumed (in DDP only rank 0 writes). A killed writer may leave a hidden
    ``.NAME.*.tmp`` file beside the target, never a partial target (see ``rundir.remove_stale_temporaries``).
    """
    path = Path(path)
    _check_plain(dict(state), "state")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
    _fsync_folder(path.parent)
    return path


def _read_error(path: Path, exc: BaseException) -> CheckpointError:
    text = " ".join(str(exc).split())
    foreign = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if foreign:
        return CheckpointError(f"checkpoint {path} holds objects other than tensors and plain data "
                               f"({foreign.group(1)}); refusing to unpickle it (weights_only=True)")
    detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    return CheckpointError(f"checkpoint {path} cannot be read (truncated, corrupt or not a PyTorch file): "
                           f"{type(exc).__name__}: {(detail.group(1) if detail else text)[:160]}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a medseg checkpoint with ``torch.load(..., weights_only=True)``.

    A missing, truncated, corrupt or foreign file raises :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    state = _torch_load(path, map_location)
    if not _is_medseg_checkpoint(state):
        raise CheckpointError(f"checkpoint {path} is not a medseg checkpoint (no model record; a bare state "
                              "dict or another tool's file?)")
    return _check_format(state, path)


def _torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a missing or unreadable file is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means an unusable file
        raise _read_error(path, exc) from None


def _is_medseg_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and "format" in state and "model" in state


def _check_format(state: dict[str, Any], path: Path) -> dict[str, Any]:
    if state["format"] > CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state['format']}, newer than this medseg "
                              f"({__version__}) reads ({CHECKPOINT_FORMAT})")
    return state


# ------------------------------------------------------------------------------------------ content


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / ``torch.compile`` wrappers (clean state-dict keys)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def make_checkpoint(model: nn.Module, *, name: str, in_channels: int, num_classes: int, spatial_dims: int,
                    options: Mapping[str, Any] | None = None, label_mode: str = "binary",
                    class_names: list[str] | None = None, preprocessing: Mapping[str, Any] | None = None,
                    inference: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                    training: Mapping[str, Any] | None = None,
                    pointrend: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict for ``model`` (unwrapped; weights copied to the CPU): what ``predict`` needs to
    rebuild and run it, plus ``training`` (see :func:`training_state`) for resuming. ``pointrend``: the
    options of :func:`medseg.models.pointrend.wrap_pointrend` when ``model`` is wrapped in PointRend."""
    weights = {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}
    record = {"name": name, "in_channels": int(in_channels), "num_classes": int(num_classes),
              "spatial_dims": int(spatial_dims), "options": dict(options or {})}
    if pointrend is not None:
        record["pointrend"] = dict(pointrend)
    return {
        "format": CHECKPOINT_FORMAT,
        "medseg_version": __version__,
        "model": record,
        "state_dict": weights,
        "label_mode": label_mode,
        "class_names": list(class_names) if class_names is not None else None,
        "preprocessing": dict(preprocessing or {}),
        "inference": dict(inference or {}),
        "config": dict(config or {}),
        "training": dict(training) if training is not None else None,
    }


def _checkpoint_name(ckpt: Mapping[str, Any], source: str | Path | None) -> str:
    return str(source) if source is not None else f"(model {ckpt.get('model', {}).get('name', '?')})"


def load_model_weights(model: nn.Module, ckpt: Mapping[str, Any], source: str | Path | None = None) -> None:
    """Load the checkpoint's weights into ``model`` (strictly); a mismatch is a one-line CheckpointError."""
    target = unwrap_model(model)
    try:
        target.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        record = ckpt.get("model", {})
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise CheckpointError(
            f"checkpoint {_checkpoint_name(ckpt, source)} was saved from model {record.get('name')!r} "
            f"(in_channels {record.get('in_channels')}, num_classes {record.get('num_classes')}, "
            f"{record.get('spatial_dims')}D, options {record.get('options')}); its weights do not fit "
            f"{type(target).__name__}: {first[:200]}") from None


def read_model_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The weights of a file and, for a medseg checkpoint, its model record (None for a plain file).

    A medseg checkpoint (``best.pt``, ``last.pt``) is read by :func:`load_checkpoint`'s loader; anything
    else as a plain state dict (``.pt``/``.pth`` through ``torch.load(weights_only=True)`` or
    ``.safetensors``) by :func:`medseg.encoders.base.read_state_dict`, which unwraps ``state_dict`` /
    ``model`` entries and a DataParallel ``module.`` prefix; a ``torch.compile`` ``_orig_mod.`` prefix is
    removed here. A plain torch file is read twice (once to see that it is not a medseg checkpoint).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        state = _torch_load(path)
        if _is_medseg_checkpoint(state):
            _check_format(state, path)
            weights = state.get("state_dict")
            if not isinstance(weights, Mapping) or \
                    not all(isinstance(v, torch.Tensor) for v in weights.values()):
                raise CheckpointError(f"checkpoint {path} has no state_dict of tensors")
            record = state["model"]
            return dict(weights), (dict(record) if isinstance(record, Mapping) else None)
    try:
        weights = read_state_dict(path)
    except MedsegError as exc:
        raise CheckpointError(str(exc)) from None
    prefix = "_orig_mod."
    if weights and all(k.startswith(prefix) for k in weights):
        weights = {k[len(prefix):]: v for k, v in weights.items()}
    return weights, None


class InitReport(NamedTuple):
    """What :func:`load_initial_weights` did: tensors loaded and those skipped for their shape
    (``key (file shape) vs (model shape)``)."""

    loaded: int
    skipped: list[str]


def _preview(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def load_initial_weights(model: nn.Module, path: str | Path, *, skip_mismatched: bool = False) -> InitReport:
    """Initialise ``model`` from the weights of a whole-model file (``model.init_from``: fine-tuning).

    Only the weights are taken, never optimiser or epoch state (that is resuming). Every key must match
    (``num_batches_tracked`` counters may be absent from the file); a missing or unexpected key, or a
    tensor whose shape differs, raises one :class:`CheckpointError` naming the file and listing the first
    of each (with both shapes). With ``skip_mismatched`` the tensors whose shapes differ (typically the
    head when the class count changed) keep the model's own initialisation and are reported instead;
    missing and unexpected keys still raise (a different architecture).
    """
    path = Path(path)
    weights, record = read_model_weights(path)
    target = unwrap_model(model)
    own = target.state_dict()
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in own]
    differ = [k for k, v in weights.items() if k in own and v.shape != own[k].shape]
    mismatched = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in differ]
    if missing or unexpected or (mismatched and not skip_mismatched):
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch{'es' if len(mismatched) > 1 else ''} (file vs "
                            f"model: {_preview(mismatched)})")
        if missing:
            problems.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} "
                            f"({_preview(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''} "
                            f"({_preview(unexpected)})")
        source = "" if record is None else (
            f" (saved from model {record.get('name')!r}, in_channels {record.get('in_channels')}, "
            f"num_classes {record.get('num_classes')}, {record.get('spatial_dims')}D)")
        hint = ("; model.init_skip_mismatched true keeps the model's own tensors where only the shapes "
                "differ") if mismatched and not (missing or unexpected) else ""
        raise CheckpointError(f"checkpoint {path}{source}: its weights do not fit {type(target).__name__}: "
                              f"{'; '.join(problems)}{hint}")
    usable = {k: v.to(own[k].dtype) for k, v in weights.items() if k not in differ}
    target.load_state_dict(usable, strict=False)
    return InitReport(len(usable), mismatched)


def checkpoint_patch_size(ckpt: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The sliding-window patch: ``inference.patch_size``, else the training patch ``data.patch_size``."""
    patch = (ckpt.get("inference") or {}).get("patch_size")
    if patch is None:
        patch = ((ckpt.get("config") or {}).get("data") or {}).get("patch_size")
    return None if patch is None else tuple(int(p) for p in patch)


def build_model_from_checkpoint(ckpt: Mapping[str, Any] | str | Path) -> nn.Module:
    """Rebuild the network recorded in a checkpoint (or a checkpoint file) with its weights, in eval mode."""
    source = None
    if isinstance(ckpt, str | Path):
        source, ckpt = ckpt, load_checkpoint(ckpt)
    record = ckpt.get("model")
    if not isinstance(record, Mapping) or "name" not in record:
        raise CheckpointError(f"checkpoint {_checkpoint_name(ckpt, source)} has no model record")
    try:
        model = create_model(record["name"], in_channels=record["in_channels"],
                             num_classes=record["num_classes"], spatial_dims=record["spatial_dims"],
                             **record.get("options", {}))
        if record.get("pointrend") is not None:
            model = wrap_pointrend(model, record["pointrend"], num_classes=record["num_classes"])
    except MedsegError as exc:
        raise CheckpointError(f"checkpoint {_checkpoint_name(ckpt, source)}: {exc}") from None
    load_model_weights(model, ckpt, source)
    return model.eval()


# ------------------------------------------------------------------------------------------ RNG


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The global random states as plain data: torch CPU, CUDA (all devices, if initialised), numpy's
    legacy global state, Python's ``random``, plus any named ``generators`` (e.g. an augmenter's)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized()
        else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
                      ) -> None:
    """Put back what :func:`capture_rng_state` recorded (CUDA states only where devices exist)."""
    torch.set_rng_state(state["torch"].cpu())
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].cpu().numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["internal"].tolist()),
                     python["gauss_next"]))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        count = min(len(cuda_states), torch.cuda.device_count())
        for device in range(count):
            torch.cuda.set_rng_state(cuda_states[device].cpu(), device)
        if count < len(cuda_states):
            logger.warning("checkpoint has CUDA RNG states of %d devices, restoring %d", len(cuda_states),
                           count)
    elif cuda_states:
        logger.warning("checkpoint has CUDA RNG states but no GPU is available; continuing without them")
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if name in saved:
            generator.set_state(saved[name].to(generator.get_state().device))


# ------------------------------------------------------------------------------------------ resume


class ResumeState(NamedTuple):
    """Where a resumed run continues: the next epoch to run and the bookkeeping of the previous run."""

    epoch: int
    global_step: int
    best_score: float | None
    epochs_without_improvement: int
    extra: dict[str, Any]


def _state_or_none(obj: Any) -> dict[str, Any] | None:
    return None if obj is None else obj.state_dict()


def training_state(*, epoch: int, global_step: int, optimizer: torch.optim.Optimizer | None = None,
                   scheduler: Any = None, scaler: Any = None, best_score: float | None = None,
                   epochs_without_improvement: int = 0,
                   generators: Mapping[str, torch.Generator] | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``training`` entry of a checkpoint taken after ``epoch`` (completed epochs) and ``global_step``
    optimiser steps: optimiser, LR scheduler and AMP scaler states, RNG states (see
    :func:`capture_rng_state`), best validation score, early-stopping counter and ``extra`` plain data
    (e.g. an EMA state dict)."""
    return {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "best_score": None if best_score is None else float(best_score),
        "epochs_without_improvement": int(epochs_without_improvement),
        "optimizer": _state_or_none(optimizer),
        "scheduler": _state_or_none(scheduler),
        "scaler": _state_or_none(scaler),
        "rng": capture_rng_state(generators),
        "extra": dict(extra or {}),
    }


def restore_training_state(ckpt: Mapping[str, Any], *, optimizer: torch.optim.Optimizer | None = None,
                           scheduler: Any = None, scaler: Any = None,
                           generators: Mapping[str, torch.Generator] | None = None,
                           source: str | Path | None = None) -> ResumeState:
    """Restore optimiser, scheduler, scaler and RNG states from a checkpoint (the model weights are loaded
    with :func:`load_model_weights`) and return where to continue."""
    training = ckpt.get("training")
    if not training:
        raise CheckpointError(f"checkpoint {_checkpoint_name(ckpt, source)} holds no training state (a "
                              "best.pt or an exported model?); resume from last.pt")
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if training.get(name) is None:
            raise CheckpointError(f"checkpoint {_checkpoint_name(ckpt, source)} holds no {name} state")
        try:
            obj.load_state_dict(training[name])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {_checkpoint_name(ckpt, source)}: its {name} state does not "
                                  f"fit this run's {name}: {' '.join(str(exc).split())[:200]}") from None
    restore_rng_state(training["rng"], generators)
    return ResumeState(epoch=training["epoch"], global_step=training["global_step"],
                       best_score=training["best_score"],
                       epochs_without_improvement=training["epochs_without_improvement"],
                       extra=dict(training.get("extra") or {}))
