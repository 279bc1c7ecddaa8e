"""``medseg export``: a checkpoint -> a TorchScript (``.pt``) or ONNX (``.onnx``) file that predicts alone.

The network is rebuilt from the checkpoint (``weights_only=True``) in eval mode, where every model of the
zoo returns plain logits ``[B, K, *spatial]`` (DESIGN.md, *Contracts*), and traced on a random input of
the training patch size (``inference.patch_size``, else ``data.patch_size``, else the preprocessing's
``resize_shape``, else a small valid size). TorchScript goes through ``torch.jit.trace``; ONNX through
``torch.onnx.export`` (the TorchScript-based exporter, which needs neither ``onnxscript`` nor
``torch.export``) with dynamic batch and spatial axes.

What ``medseg predict`` needs besides the network (classes, label mode, patch size, preprocessing with
normalisation and spacing, dimensionality, input multiple, whether sizes are dynamic) is stored inside
the file as JSON: a TorchScript extra file ``medseg.json``, an ONNX metadata entry ``medseg``.

The export is checked before it is kept: the file is read back and run (ONNX through onnxruntime when it
is installed) on a random input and on a second input of batch 2 and another spatial size; the maximum
absolute difference to the PyTorch model must be at most :data:`TOLERANCE` (1e-4) plus
:data:`RELATIVE_TOLERANCE` (1e-5) times the largest absolute logit. When the second size fails
(a model with fixed sizes, e.g. UNETR's position embeddings, or a trace that baked a size in), spatial
sizes are recorded as fixed and ``predict`` runs sliding windows of exactly the export size. The file is
written through :func:`medseg.fileio.atomic_path`: a failed export or check leaves no file behind.
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medseg import __version__
from medseg.engine.checkpoint import build_model_from_checkpoint, checkpoint_patch_size, load_checkpoint
from medseg.errors import MedsegError
from medseg.fileio import atomic_path
from medseg.models.base import smallest_valid_size
from medseg.models.registry import get_entry
from medseg.outputs import main_logits

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMATS", "RELATIVE_TOLERANCE", "TOLERANCE", "ExportError", "ExportResult",
           "ExportedModel", "default_output", "export_checkpoint", "is_exported", "load_exported"]

EXPORT_FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 1e-5
"""Allowed max abs difference: ``TOLERANCE + RELATIVE_TOLERANCE * max|logits|``. Float32 rounding grows
with the logits' scale: randomly initialised networks without normalisation reach logits of 1e6, where
one unit in the last place is already 0.1."""
DEFAULT_OPSET = 17
METADATA_NAME = "medseg.json"
ONNX_METADATA_KEY = "medseg"
EXPORT_FORMAT_VERSION = 1
_SMALL_SIZE = {2: 64, 3: 32}
_NOT_EXPORTABLE = "its forward has its own contract (data-dependent detections: boxes, scores, masks)"


class ExportError(MedsegError):
    """A model that cannot be exported, an export that does not match PyTorch, or an unreadable export."""


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and how well the export matches PyTorch."""

    path: Path
    format: str
    dynamic_batch: bool
    dynamic_spatial: bool
    export_size: tuple[int, ...]
    max_abs_diff: float | None
    """``None`` when the export could not be run here (ONNX without onnxruntime)."""
    checked_shapes: list[tuple[int, ...]]
    logit_scale: float | None = None
    """The largest absolute logit of the PyTorch model on the checked inputs."""
    note: str = ""


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """``best.pt`` -> ``best.torchscript.pt`` (TorchScript) or ``best.onnx`` (ONNX), in the same folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.torchscript.pt" if fmt == "torchscript"
                                else f"{checkpoint.stem}.onnx")


# ---------------------------------------------------------------------------------------------- sizes


def _input_multiple(model: nn.Module) -> int:
    return int(getattr(model, "input_multiple", 1) or 1)


def _export_size(model: nn.Module, ckpt: Mapping[str, Any], spatial_dims: int) -> tuple[int, ...]:
    """The training patch, else the preprocessing's ``resize_shape``, else a small valid size."""
    size = checkpoint_patch_size(ckpt) or (ckpt.get("preprocessing") or {}).get("resize_shape")
    if size is not None:
        return tuple(int(n) for n in size)
    return (smallest_valid_size(model, _SMALL_SIZE[spatial_dims]),) * spatial_dims


def _second_size(model: nn.Module, size: Sequence[int]) -> tuple[int, ...]:
    """Another valid spatial size: every axis one input multiple larger (then the next valid extent)."""
    return tuple(smallest_valid_size(model, n + _input_multiple(model)) for n in size)


# ---------------------------------------------------------------------------------------------- metadata


def _metadata(ckpt: Mapping[str, Any], model: nn.Module, fmt: str, size: tuple[int, ...], dynamic_batch: bool,
              dynamic_spatial: bool, opset: int | None) -> dict[str, Any]:
    record = dict(ckpt.get("model") or {})
    inference = dict(ckpt.get("inference") or {})
    patch = checkpoint_patch_size(ckpt)
    if not dynamic_spatial:  # fixed sizes: predict runs windows of exactly the export size
        patch = size
        inference["patch_size"] = list(size)
        if inference.get("mode") == "whole":
            inference["mode"] = "sliding_window"
    preprocessing = dict(ckpt.get("preprocessing") or {})
    return {
        "format": EXPORT_FORMAT_VERSION, "exported_as": fmt, "medseg_version": __version__,
        "torch_version": torch.__version__, "opset": opset,
        "model": {"name": record.get("name"), "in_channels": int(record["in_channels"]),
                  "num_classes": int(record["num_classes"]), "spatial_dims": int(record["spatial_dims"]),
                  "pointrend": record.get("pointrend") is not None},
        "label_mode": str(ckpt.get("label_mode", "binary")), "class_names": ckpt.get("class_names"),
        "preprocessing": preprocessing, "normalization": preprocessing.get("normalization"),
        "spacing": preprocessing.get("target_spacing"), "inference": inference,
        "patch_size": None if patch is None else list(patch),
        "channels_suffix": ((ckpt.get("config") or {}).get("data") or {}).get("channels_suffix"),
        "input_multiple": _input_multiple(model), "export_size": list(size),
        "dynamic_batch": dynamic_batch, "dynamic_spatial": dynamic_spatial,
    }


def _to_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=lambda v: list(v) if isinstance(v, tuple) else str(v))


# ---------------------------------------------------------------------------------------------- writers

# Tracing warns about every Python int taken from a shape (the size checks of ``check_input``) and the
# exporters about their deprecation; those warnings are silenced: the round-trip check decides.


class _LogitsOnly(nn.Module):
    """The eval-mode network with its output reduced to the main logits tensor (one graph output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return main_logits(self.model(x))


def _write_torchscript(model: nn.Module, example: Tensor, path: Path, metadata: str) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_LogitsOnly(model).eval(), example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_NAME: metadata})


def _write_onnx(model: nn.Module, example: Tensor, path: Path, metadata: str, opset: int,
                dynamic: Sequence[int]) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package (pip install 'medseg[export]')") from None
    axes = {i: ("batch" if i == 0 else f"size{i - 2}") for i in dynamic}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LogitsOnly(model).eval(), (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes} if axes else None)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, metadata
    onnx.save(proto, str(path))


# ---------------------------------------------------------------------------------------------- reading


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is a medseg export: an ``.onnx`` file, or a TorchScript archive with ``medseg.json``
    (a checkpoint ``.pt`` is a zip archive too, without that entry)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return True
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith(f"/extra/{METADATA_NAME}") for name in archive.namelist())


class ExportedModel(nn.Module):
    """An exported file as a module: ``forward(x)`` returns logits like the PyTorch model.

    ``input_multiple`` comes from the metadata, so predict pads as it pads the original model. Fixed-size
    exports take exactly ``export_size``; one with a fixed batch runs the batch one item at a time.
    """

    def __init__(self, path: Path, metadata: dict[str, Any], run: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.path = path
        self.metadata = metadata
        self.input_multiple = int(metadata.get("input_multiple", 1))
        self._run = run

    def forward(self, x: Tensor) -> Tensor:
        size = list(x.shape[2:])
        if not self.metadata["dynamic_spatial"] and size != list(self.metadata["export_size"]):
            raise ExportError(f"exported model {self.path} takes the fixed size "
                              f"{self.metadata['export_size']}, got {size}")
        if self.metadata["dynamic_batch"] or x.shape[0] == 1:
            return self._run(x)
        return torch.cat([self._run(item[None]) for item in x])


Runner = Callable[[Tensor], Tensor]


def _onnx_runner(path: Path, device: torch.device) -> tuple[Runner, dict[str, Any]]:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"exported model {path}: running ONNX needs onnxruntime "
                          "(pip install 'medseg[export]')") from None
    try:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4  # failures become ExportError lines, not runtime log output
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"exported model {path} cannot be read by onnxruntime: "
                          f"{_first_line(exc)}") from None
    text = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)

    def run(x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).numpy()
        logits = session.run(["logits"], {"image": np.ascontiguousarray(array)})[0]
        return torch.from_numpy(logits).to(x.device)

    return run, _parse_metadata(path, text)


def _torchscript_runner(path: Path, device: torch.device) -> tuple[Runner, dict[str, Any]]:
    extra = {METADATA_NAME: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still supported
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - any failure to read the archive means an unusable file
        raise ExportError(f"exported model {path} cannot be read as TorchScript: "
                          f"{_first_line(exc)}") from None
    module.eval()

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return module(x)

    return run, _parse_metadata(path, extra[METADATA_NAME])


def _parse_metadata(path: Path, text: str | bytes | None) -> dict[str, Any]:
    if not text:
        raise ExportError(f"exported model {path} holds no medseg metadata (exported by another tool?)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"exported model {path}: its medseg metadata is not JSON ({exc})") from None
    if not isinstance(data, dict) or int(data.get("format", 0)) > EXPORT_FORMAT_VERSION:
        raise ExportError(f"exported model {path}: metadata format {data.get('format')!r} is not one this "
                          f"medseg ({__version__}) reads")
    return data


def load_exported(path: str | Path, device: torch.device | str = "cpu", fmt: str | None = None
                  ) -> ExportedModel:
    """An exported file (``.onnx`` or TorchScript ``.pt``; ``fmt`` None: by the extension) as an
    :class:`ExportedModel` with its metadata.

    TorchScript archives are read with ``torch.jit.load`` (compiled TorchScript code and tensors, no
    pickled Python objects); ONNX files run on the CPU through onnxruntime.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"exported model {path} not found")
    device = torch.device(device)
    onnx = fmt == "onnx" if fmt is not None else path.suffix == ".onnx"
    runner = _onnx_runner if onnx else _torchscript_runner
    run, metadata = runner(path, device)
    return ExportedModel(path, metadata, run)


# ---------------------------------------------------------------------------------------------- checking


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {text[:200]}"


def _random(shape: tuple[int, ...], seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _difference(model: nn.Module, exported: ExportedModel, shape: tuple[int, ...], seed: int
                ) -> tuple[float, float] | None:
    """Max abs difference of the export to the model on a random input and the largest absolute logit of
    the model; ``None`` when either one fails on this shape."""
    x = _random(shape, seed)
    try:
        with torch.no_grad():
            expected = main_logits(model(x))
    except MedsegError:
        return None
    try:
        got = exported(x)
    except Exception:  # noqa: BLE001 - a trace with a baked-in size fails in its own ways
        return None
    if got.shape != expected.shape:
        return None
    return float((got.float() - expected.float()).abs().max()), float(expected.abs().max())


def _within(result: tuple[float, float] | None) -> bool:
    return result is not None and result[0] <= TOLERANCE + RELATIVE_TOLERANCE * result[1]


# ---------------------------------------------------------------------------------------------- export


def _refuse_unexportable(record: Mapping[str, Any], source: Path) -> None:
    name = record.get("name")
    try:
        entry = get_entry(str(name))
    except MedsegError:
        return  # build_model_from_checkpoint reports unknown names
    if entry.task != "semantic" or not entry.exportable:
        raise ExportError(f"checkpoint {source}: model {name!r} cannot be exported: {_NOT_EXPORTABLE}")


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path | None = None, *,
                      opset: int | None = None, check: bool = True) -> ExportResult:
    """Export the network of ``checkpoint`` to ``fmt`` (``torchscript`` or ``onnx``) at ``out`` (default:
    :func:`default_output`) and check it against PyTorch (see the module docstring).

    Raises :class:`ExportError` (one line) when the model cannot be exported or the export does not match
    within :data:`TOLERANCE`; then no file is left at ``out``.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if opset is not None and fmt != "onnx":
        raise ExportError("--opset applies to ONNX exports only")
    source = Path(checkpoint)
    ckpt = load_checkpoint(source)
    if ckpt.get("cascade"):
        raise ExportError(f"checkpoint {source}: a cascade's stage 2 runs its embedded stage 1 first; export "
                          "does not carry the stage 1 (predict with the checkpoint)")
    _refuse_unexportable(ckpt.get("model") or {}, source)
    model = build_model_from_checkpoint(ckpt).cpu().eval()
    out = Path(out) if out is not None else default_output(source, fmt)
    if out.resolve() == source.resolve():
        raise ExportError(f"output {out} is the checkpoint itself; choose another --out")
    record = ckpt["model"]
    channels, dims = int(record["in_channels"]), int(record["spatial_dims"])
    size = _export_size(model, ckpt, dims)
    if len(size) != dims:
        raise ExportError(f"checkpoint {source}: patch size {list(size)} does not have {dims} axes")
    shape = (1, channels, *size)
    onnx_opset = (opset or DEFAULT_OPSET) if fmt == "onnx" else None
    with atomic_path(out) as tmp:
        result = _export_and_check(model, ckpt, fmt, tmp, shape, onnx_opset, check, source)
    result.path = out
    logger.info("exported %s to %s (%s; max abs diff %s)", source, out, fmt, result.max_abs_diff)
    return result


def _can_run_onnx() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _export_and_check(model: nn.Module, ckpt: Mapping[str, Any], fmt: str, tmp: Path, shape: tuple[int, ...],
                      opset: int | None, check: bool, source: Path) -> ExportResult:
    """Write the export to ``tmp`` with the most dynamism that passes the check: batch and spatial sizes,
    then batch only, then fixed (ONNX re-exports each time; a TorchScript trace is the same graph)."""
    size = tuple(shape[2:])
    second = (2, shape[1], *_second_size(model, size))
    same_size_batch = (2, *shape[1:])
    levels = [(True, True, second), (True, False, same_size_batch), (False, False, None)]
    runnable = check and (fmt == "torchscript" or _can_run_onnx())
    failure = ""  # why the last level failed (the fixed-size one, when all fail)
    for dynamic_batch, dynamic_spatial, extra_shape in levels:
        metadata = _to_json(_metadata(ckpt, model, fmt, size, dynamic_batch, dynamic_spatial, opset))
        example = _random(shape, 0)
        try:
            if fmt == "torchscript":
                _write_torchscript(model, example, tmp, metadata)
            else:
                axes = [0] * dynamic_batch + list(range(2, len(shape))) * dynamic_spatial
                _write_onnx(model, example, tmp, metadata, int(opset or DEFAULT_OPSET), axes)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - tracers and exporters raise many kinds of errors
            # e.g. adaptive pooling to a fixed grid exports to ONNX only for fixed input sizes
            failure = _first_line(exc)
            logger.info("%s export of %s with dynamic batch %s, spatial %s fails: %s", fmt, source,
                        dynamic_batch, dynamic_spatial, failure)
            continue
        if not runnable:
            note = "not checked (onnxruntime is not installed)" if check else "not checked"
            return ExportResult(tmp, fmt, True, True, size, None, [], note)
        try:
            exported = load_exported(tmp, fmt=fmt)
        except ExportError as exc:  # e.g. onnxruntime's shape inference refuses a dynamic graph
            detail = str(exc).replace(f"exported model {tmp} ", "").replace(str(tmp), "the file")
            failure = f"the export cannot be loaded back: {detail}"
            continue
        first = _difference(model, exported, shape, 0)
        if not _within(first):
            failure = f"the export does not match PyTorch on input {list(shape)}: " + ("it fails to run"
                      if first is None else f"max abs diff {first[0]:.2e} > {TOLERANCE:.0e} + "
                      f"{RELATIVE_TOLERANCE:.0e} x max|logits| {first[1]:.2e}")
            continue
        assert first is not None
        if extra_shape is None:
            return ExportResult(tmp, fmt, False, False, size, first[0], [shape], first[1])
        other = _difference(model, exported, extra_shape, 1)
        if _within(other):
            assert other is not None
            return ExportResult(tmp, fmt, dynamic_batch, dynamic_spatial, size, max(first[0], other[0]),
                                [shape, extra_shape], max(first[1], other[1]))
        logger.info("%s export of %s: input %s %s; trying fewer dynamic axes", fmt, source, list(extra_shape),
                    "fails" if other is None else f"differs by {other[0]:.2e}")
    name = ckpt["model"].get("name")
    raise ExportError(f"checkpoint {source}: model {name!r} cannot be exported to {fmt}: {failure}")
