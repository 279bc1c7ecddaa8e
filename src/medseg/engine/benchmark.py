"""Cost benchmark of a model: parameters, GMACs, peak memory, latency and training throughput.

Measured quantities (one :class:`BenchmarkResult` per model, spatial_dims and input size):

- **parameters**: trainable parameters (:func:`medseg.count_parameters`).
- **GMACs**: multiply-accumulates of one eval-mode forward of the whole batch, in units of 1e9.
  ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-accumulate for
  convolutions (transposed ones per input point), matrix products and attention, and nothing for
  biases, normalisations, activations, pooling or interpolation; we report its total divided by 2,
  i.e. exactly ``prod(out_spatial) * prod(kernel) * C_in / groups * C_out * B`` per convolution.
- **peak memory**: the bytes of the parameters, buffers and input plus the peak of the tensor bytes
  allocated on top of them during one training-mode forward and backward (gradients included). On
  CUDA the peak comes from ``torch.cuda.max_memory_allocated``; on CPU from the allocator events of
  ``torch.profiler`` (``profile_memory=True``), summed in time order (see :func:`measure_peak_memory`).
- **latency**: median wall time of an eval-mode forward under ``no_grad`` after warm-up.
- **train throughput**: samples per second of a training step (forward, backward of a surrogate loss
  over all outputs, SGD step with momentum), median over the repeats after warm-up.

Peers from other libraries are measured in the same run under names such as ``monai:basicunet``
(MONAI is imported only when such a name is asked for).
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from medseg.engine.benchmark_targets import (  # re-exported: benchmark named them before the split
    PEERS,
    POINTREND_SUFFIX,
    BenchmarkTarget,
    check_dims,
    check_size,
    resolve_target,
)
from medseg.engine.device import resolve_device
from medseg.errors import InputSizeError, MedsegError
from medseg.models.base import SegmentationModel
from medseg.models.registry import count_parameters
from medseg.outputs import SegOutput

MIB = 2**20


__all__ = [
    "BenchmarkJob",
    "BenchmarkResult",
    "BenchmarkTarget",
    "MIB",
    "PEERS",
    "POINTREND_SUFFIX",
    "TABLE_COLUMNS",
    "_EXTRA_FLOP_FORMULAS",
    "benchmark_model",
    "benchmark_models",
    "check_dims",
    "check_size",
    "count_macs",
    "format_table",
    "machine_description",
    "machine_slug",
    "markdown_table",
    "measure_peak_memory",
    "resolve_target",
    "write_benchmark_report",
]

@dataclass(frozen=True)
class BenchmarkResult:
    """The measured costs of one model at one input shape ``[B, C, *spatial]``."""

    model: str
    spatial_dims: int
    input_shape: tuple[int, ...]
    parameters: int
    gmacs: float
    peak_memory_mib: float
    latency_ms: float
    train_samples_per_s: float
    device: str

    @property
    def frames_per_s(self) -> float:
        """Images (2D) or volumes (3D) per second of eval-mode inference: batch / latency (U-Net v2's FPS)."""
        return self.batch_size / (self.latency_ms / 1000.0) if self.latency_ms > 0 else 0.0

    @property
    def batch_size(self) -> int:
        return self.input_shape[0]

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return self.input_shape[2:]


# ----------------------------------------------------------------------------------------------------

def _cpu_attention_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int],
                         *args: Any, **kwargs: Any) -> int:
    """FLOPs of the CPU fused attention kernel (``Q·Kᵀ`` and ``softmax·V``), which FlopCounterMode does not
    know: without it, attention (PVT-v2, transformers) would count nothing on the CPU."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of ``model(x)`` (eval, no_grad) = FlopCounterMode's total / 2.

    Only convolutions, matrix products and attention are counted (see the module docstring).
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (kineto prints 'profiler_start/stop' lines from C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_of_allocation_events(events: Sequence[tuple[int, int]]) -> int:
    """The maximum running sum of ``(time, +allocated / -freed bytes)`` events taken in time order."""
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return peak


def measure_peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated by ``fn()`` on top of what was alive when it started.

    CUDA: ``max_memory_allocated`` after a reset, minus the allocated bytes at the start. CPU: the
    allocation and free events recorded by ``torch.profiler`` with ``profile_memory=True`` (every
    request to the CPU allocator, intermediate buffers included), accumulated in time order; the
    maximum of the running sum is the peak of the live bytes. Tensors returned by ``fn`` are
    dropped before it returns.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - start)
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _native_stderr_silenced():
        prof.start()
    try:
        fn()
    finally:
        with _native_stderr_silenced():
            prof.stop()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    return _peak_of_allocation_events(events)


def _surrogate_loss(output: Tensor | SegOutput) -> Tensor:
    """Mean of every output map (main, auxiliary, extras), so that every head gets a gradient."""
    if isinstance(output, SegOutput):
        tensors = [output.logits, *output.aux, *output.extras.values()]
    else:
        tensors = [output]
    return sum(t.float().mean() for t in tensors if t.is_floating_point())  # type: ignore[return-value]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tensor_bytes(model: nn.Module, *tensors: Tensor) -> int:
    owned = [*model.parameters(), *model.buffers(), *tensors]
    return sum(t.numel() * t.element_size() for t in owned)


def _spatial_size(size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    sizes = (size,) * spatial_dims if isinstance(size, int) else tuple(size)
    if len(sizes) != spatial_dims or any(s < 1 for s in sizes):
        raise InputSizeError(f"size {size!r} is not a positive size for {spatial_dims} spatial dims")
    return sizes


def _prepare_model(model_or_name: nn.Module | str, spatial_dims: int, sizes: tuple[int, ...],
                   in_channels: int, num_classes: int, options: dict[str, Any] | None,
                   name: str | None) -> tuple[str, nn.Module]:
    if isinstance(model_or_name, nn.Module):
        if options:
            raise MedsegError("options only apply to models given by name")
        # The training-step measurement updates the weights: work on a copy of the caller's model.
        return name or type(model_or_name).__name__, copy.deepcopy(model_or_name)
    target = resolve_target(model_or_name)
    check_dims(target, spatial_dims)
    for extent in sorted(set(sizes)):
        check_size(target, extent)
    model = target.build(in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
                         **(options or {}))
    if isinstance(model, SegmentationModel):
        bad = [s for s in sizes if not model.valid_size(s)]
        if bad:
            lower, upper = model.nearest_valid_sizes(bad[0])
            raise InputSizeError(f"model {target.name!r} cannot take size {bad[0]}: sizes must be "
                                 f"{model.size_rule()} (nearest: {lower} or {upper})")
    return name or target.name, model


def benchmark_model(model_or_name: nn.Module | str, *, spatial_dims: int, size: int | Sequence[int],
                    batch_size: int = 1, in_channels: int = 1, num_classes: int = 2, warmup: int = 2,
                    repeats: int = 10, device: str | torch.device = "cpu",
                    options: dict[str, Any] | None = None, name: str | None = None) -> BenchmarkResult:
    """Measure the costs of one model at one input shape (see the module docstring for the definitions).

    Args:
        model_or_name: a registry name or alias, a peer name (``monai:basicunet``), or a module
            (measured on a copy, since the training steps update the weights).
        spatial_dims: 2 or 3.
        size: the spatial size, one int for a cube/square or one int per axis.
        batch_size, in_channels, num_classes: the input and output shapes.
        warmup, repeats: untimed and timed runs of the latency and training-step measurements.
        device: ``"cpu"`` or ``"cuda"``.
        options: model options passed to ``create_model`` (models given by name only).
        name: the row label (default: the registry name or the module's class name).
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise MedsegError(f"need batch_size >= 1, repeats >= 1 and warmup >= 0, got {batch_size}, "
                          f"{repeats} and {warmup}")
    dev = resolve_device(device)
    sizes = _spatial_size(size, spatial_dims)
    label, model = _prepare_model(model_or_name, spatial_dims, sizes, in_channels, num_classes, options, name)
    model = model.to(dev)
    x = torch.randn(batch_size, in_channels, *sizes, device=dev)

    macs = count_macs(model, x)
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    latency = _median_seconds(forward, warmup, repeats, dev)

    model.train()
    model.zero_grad(set_to_none=True)
    resident = _tensor_bytes(model, x)
    peak = resident + measure_peak_memory(lambda: _surrogate_loss(model(x)).backward(), dev)

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        _surrogate_loss(model(x)).backward()
        optimizer.step()

    step = _median_seconds(train_step, warmup, repeats, dev)
    return BenchmarkResult(model=label, spatial_dims=spatial_dims, input_shape=tuple(x.shape),
                           parameters=count_parameters(model), gmacs=macs / 1e9, peak_memory_mib=peak / MIB,
                           latency_ms=latency * 1e3, train_samples_per_s=batch_size / step, device=dev.type)


@dataclass(frozen=True)
class BenchmarkJob:
    """One row to measure: a model name at one spatial_dims and one (cubic/square) size."""

    model: str
    spatial_dims: int
    size: int


def benchmark_models(jobs: Sequence[BenchmarkJob], *, progress: bool = True,
                     **settings: Any) -> list[BenchmarkResult]:
    """Run :func:`benchmark_model` for each job (``settings`` are its keyword arguments), with a tqdm
    progress bar on stderr (shown on terminals only)."""
    from tqdm import tqdm

    results = []
    bar = tqdm(jobs, desc="benchmark", unit="model", file=sys.stderr, disable=None if progress else True)
    for job in bar:
        bar.set_postfix_str(f"{job.model} {job.spatial_dims}D {job.size}")
        try:
            result = benchmark_model(job.model, spatial_dims=job.spatial_dims, size=job.size, **settings)
        except (RuntimeError, ValueError) as exc:  # e.g. a norm layer that cannot take a 1-voxel map
            if isinstance(exc, MedsegError):
                raise
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MedsegError(f"{job.model} failed in {job.spatial_dims}D at size {job.size}: "
                              f"{first_line}") from exc
        results.append(result)
    return results


# ----------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------

def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                   right_aligned: Sequence[bool] | None = None) -> str:
    """A Markdown table with padded columns (readable as plain text too)."""
    align = list(right_aligned) if right_aligned is not None else [False] * len(headers)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).rjust(w) if right else str(c).ljust(w)
                  for c, w, right in zip(cells, widths, align, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rules = ["-" * (w + 1) + ":" if right else "-" * (w + 2) for w, right in zip(widths, align, strict=True)]
    rule = "|" + "|".join(rules) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


TABLE_COLUMNS = ("model", "dims", "input size", "params (M)", "GMACs", "peak memory (MiB)", "latency (ms)",
                 "FPS", "train throughput (samples/s)")


def _number(value: float) -> str:
    """Two decimals, or three significant digits below 1 (tiny models)."""
    return f"{value:.2f}" if value >= 1 or value == 0 else f"{value:.3g}"


def _peer_row(results: Sequence[BenchmarkResult], peer: str, row: BenchmarkResult) -> BenchmarkResult | None:
    for candidate in results:
        if candidate.model == peer and candidate.input_shape == row.input_shape:
            return candidate
    return None


def format_table(results: Sequence[BenchmarkResult], peer: str | None = None) -> str:
    """Markdown table of the results with a latency-ratio column against ``peer``.

    ``peer`` is a model label (default: the first row's); each row is compared with the peer's row
    of the same input shape (dims, batch, channels, size), or shows ``-`` when the peer has none.
    """
    if not results:
        raise MedsegError("no benchmark results to format")
    peer = peer if peer is not None else results[0].model
    if all(r.model != peer for r in results):
        raise MedsegError(f"peer {peer!r} is not among the benchmarked models")
    rows = []
    for r in results:
        ref = _peer_row(results, peer, r)
        ratio = f"{r.latency_ms / ref.latency_ms:.2f}x" if ref is not None and ref.latency_ms > 0 else "-"
        rows.append([r.model, f"{r.spatial_dims}D", "x".join(str(s) for s in r.input_shape),
                     _number(r.parameters / 1e6), _number(r.gmacs), f"{r.peak_memory_mib:.1f}",
                     f"{r.latency_ms:.1f}", f"{r.frames_per_s:.1f}", f"{r.train_samples_per_s:.2f}", ratio])
    headers = [*TABLE_COLUMNS, f"latency vs {peer}"]
    return markdown_table(headers, rows, [False, False, False, *[True] * 7])


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(device: str | torch.device = "cpu") -> str:
    """One line naming the CPU (from /proc/cpuinfo when present), GPU, torch version and threads."""
    parts = [f"CPU: {_cpu_name()} ({os.cpu_count()} logical cores)"]
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(torch.device(device))}")
    parts += [f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
              f"Python {platform.python_version()}", platform.system()]
    return "; ".join(parts)


def machine_slug(device: str | torch.device = "cpu") -> str:
    """A file-name-safe short name of the machine's processor (the GPU's on CUDA)."""
    on_gpu = torch.device(device).type == "cuda" and torch.cuda.is_available()
    name = torch.cuda.get_device_name(torch.device(device)) if on_gpu else _cpu_name()
    words = "".join(c.lower() if c.isalnum() else " " for c in name).split()
    drop = {"cpu", "processor", "r", "tm", "with", "radeon", "graphics"}
    return "-".join(w for w in words if w not in drop)[:48] or "machine"


def write_benchmark_report(name: str, title: str, table: str, notes: Sequence[str] = (),
                           out: str | os.PathLike[str] | None = None, device: str = "cpu",
                           results_dir: str | os.PathLike[str] = "benchmarks/results") -> str:
    """Print ``table`` and write a benchmark report (title, machine, notes as bullets, the table) atomically.

    The default file is ``results_dir/{name}-{device}-{machine}.md``, so results of different machines sit
    side by side. Returns the path written.
    """
    from pathlib import Path

    from medseg.fileio import write_text_atomically

    path = Path(out) if out is not None else Path(results_dir) / f"{name}-{device}-{machine_slug(device)}.md"
    lines = [f"# {title}", "", f"- machine: {machine_description(device)}", *(f"- {n}" for n in notes), "",
             table, ""]
    print(table)
    write_text_atomically(path, "\n".join(lines))
    print(f"wrote {path}", file=sys.stderr)
    return str(path)
