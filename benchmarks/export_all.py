"""Export sweep: every registered model (small options, random weights) through ``medseg export`` to
TorchScript and ONNX, checked against PyTorch (:mod:`medseg.engine.export`), plus a U-Net wrapped in
PointRend. Writes the table behind the README's list of models that do not export.

Each model (its builder's initialisation, every all-zero parameter tensor (biases, FCN's score layers) drawn
from N(0, 0.01) so that the check compares non-zero logits) is saved as a medseg checkpoint (1 input
channel, 2 for BPR; 2 classes, multiclass) with
``inference.patch_size`` the smallest valid size >= 32 (2D) or >= 16 (3D), the size the shared model
test uses, and exported with the default opset.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/export_all.py [--models unet vnet] [--all-dims]
        [--out benchmarks/results/export-cpu-intel-xeon.md]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medseg.engine.benchmark import machine_description, markdown_table  # noqa: E402
from medseg.engine.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from medseg.engine.export import (  # noqa: E402
    EXPORT_FORMATS,
    ExportError,
    ExportResult,
    export_checkpoint,
)
from medseg.fileio import write_text_atomically  # noqa: E402
from medseg.models.base import smallest_valid_size  # noqa: E402
from medseg.models.pointrend import wrap_pointrend  # noqa: E402
from medseg.models.registry import create_model, list_models, model_info  # noqa: E402

MIN_SIZE = {2: 32, 3: 16}
POINTREND = "unet+pointrend"


@dataclass
class Outcome:
    """One model and dimensionality: the result (or the error) of each format."""

    name: str
    dims: int
    results: dict[str, ExportResult | str]
    seconds: float


def checkpoint_of(name: str, dims: int, folder: Path) -> Path:
    """A seeded small instance of ``name`` saved as a medseg checkpoint in ``folder``."""
    base = "unet" if name == POINTREND else name
    info = model_info(base)
    options = dict(info["small_options"])
    channels, classes = (2 if base == "bpr" else 1), 2
    torch.manual_seed(0)
    model = create_model(base, in_channels=channels, num_classes=classes, spatial_dims=dims, **options)
    with torch.no_grad():  # FCN's score layers start at zero: give every all-zero tensor small values
        for parameter in model.parameters():
            if parameter.numel() and not parameter.any():
                parameter.normal_(0.0, 0.01)
    pointrend = {} if name == POINTREND else None
    if pointrend is not None:
        model = wrap_pointrend(model, pointrend, num_classes=classes)
    patch = [smallest_valid_size(model, MIN_SIZE[dims])] * dims
    ckpt = make_checkpoint(model, name=base, in_channels=channels, num_classes=classes, spatial_dims=dims,
                           options=options, label_mode="multiclass", inference={"patch_size": patch},
                           pointrend=pointrend)
    return save_checkpoint(folder / f"{name}-{dims}d.pt", ckpt)


def sweep(name: str, dims: int, folder: Path) -> Outcome:
    """Export ``name`` in ``dims`` to every format; an :class:`ExportError` becomes the row's reason."""
    started = time.perf_counter()
    checkpoint = checkpoint_of(name, dims, folder)
    results: dict[str, ExportResult | str] = {}
    for fmt in EXPORT_FORMATS:
        try:
            results[fmt] = export_checkpoint(checkpoint, fmt)
        except ExportError as exc:
            results[fmt] = " ".join(str(exc).split()).split(": ", 1)[-1]
    return Outcome(name, dims, results, time.perf_counter() - started)


def _cells(result: ExportResult | str) -> tuple[str, str, str]:
    if isinstance(result, str):
        return f"no: {result.replace('|', '/')}", "-", "-"
    dynamic = "yes" if result.dynamic_spatial else f"no (fixed {list(result.export_size)})"
    if not result.dynamic_batch:
        dynamic += ", fixed batch"
    diff = "not run" if result.max_abs_diff is None else \
        f"{result.max_abs_diff:.1e} (of {result.logit_scale:.0e})"
    return "ok" if not result.note else f"ok ({result.note})", dynamic, diff


def table(outcomes: list[Outcome]) -> str:
    rows = []
    for o in outcomes:
        ts, onnx = _cells(o.results["torchscript"]), _cells(o.results["onnx"])
        rows.append([o.name, f"{o.dims}D", ts[0], onnx[0], f"{ts[1]} / {onnx[1]}", f"{ts[2]} / {onnx[2]}",
                     f"{o.seconds:.1f}"])
    headers = ["model", "dims", "torchscript", "onnx", "dynamic sizes (ts / onnx)",
               "max abs diff (of max abs logit; ts / onnx)", "seconds"]
    return markdown_table(headers, rows, [False, False, False, False, False, True, True])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--all-dims", action="store_true", help="every supported dims (default: 2D if "
                        "supported, else 3D)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/export-cpu-intel-xeon.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = args.models or [*list_models(), POINTREND]
    load_before, started = os.getloadavg(), time.time()
    outcomes = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            dims_list = model_info("unet" if name == POINTREND else name)["dims"]
            for dims in dims_list if args.all_dims else [2 if 2 in dims_list else 3]:
                outcome = sweep(name, dims, Path(folder))
                states = [f"{f} {'no' if isinstance(r, str) else 'ok'}" for f, r in outcome.results.items()]
                print(f"{name} {dims}D: {', '.join(states)}", file=sys.stderr, flush=True)
                outcomes.append(outcome)
    body = table(outcomes)
    try:
        import onnxruntime
        runtime = f"onnxruntime {onnxruntime.__version__}"
    except ImportError:  # the ONNX checks then read 'not run'
        runtime = "onnxruntime not installed"
    arguments = shlex.join(argv if argv is not None else sys.argv[1:])
    command = f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/export_all.py {arguments}"
    text = "\n".join([
        "# Export sweep: TorchScript and ONNX", "",
        f"- machine: {machine_description()}, shared with other jobs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread; "
        f"{runtime}",
        f"- command: `{command.strip()}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; wall time "
        f"{time.time() - started:.0f} s; load average (1 min) {load_before[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end", "",
        "Small options of each model (random weights, all-zero tensors drawn from N(0, 0.01); 2 classes), "
        "exported at the patch size given in "
        "the table's dynamic column when fixed, else checked at that size (batch 1) and at one input "
        "multiple larger per axis (batch 2); max abs diff: the largest of the checks, tolerance 1e-4 + "
        "1e-5 x max abs logit (random weights give some models logits of 1e6). "
        "Dynamic 'no': the second size failed or differed, so the export records fixed sizes and "
        "`medseg predict` runs windows of exactly that size.", "",
        body, ""])
    write_text_atomically(args.out, text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
