"""The ``medseg`` command: one small function per subcommand, registered in :data:`COMMANDS`.

Bad input (:class:`medseg.errors.MedsegError`) ends with one line ``medseg: error: ...`` on stderr and
exit code 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from medseg import __version__
from medseg.data.check import check_dataset
from medseg.engine.benchmark import (
    BenchmarkJob,
    benchmark_models,
    check_size,
    format_table,
    machine_description,
    machine_slug,
    markdown_table,
    resolve_target,
)
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.registry import count_parameters, create_model, list_models, model_info

PROG = "medseg"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ----------------------------------------------------------------------------------------------------
# medseg models
# ----------------------------------------------------------------------------------------------------

def _short_paper(paper: str, width: int = 48) -> str:
    """Authors, year and the title up to its colon, cut at a word boundary to ``width`` characters."""
    short = paper.split(":", 1)[0].strip()
    if len(short) <= width:
        return short
    return short[: width - 3].rsplit(" ", 1)[0].rstrip(" ,") + "..."


def default_parameter_count(name: str) -> int:
    """Trainable parameters at the default settings: 1 input channel, 1 class, 2D if supported else 3D.

    The model is built on the ``meta`` device (no memory, no initialisation) when its constructor
    allows it, else on the CPU.
    """
    dims = 2 if 2 in model_info(name)["dims"] else 3
    try:
        with torch.device("meta"):
            model = create_model(name, in_channels=1, num_classes=1, spatial_dims=dims)
    except MedsegError:
        raise
    except Exception:  # a constructor that computes with tensors (e.g. .item()) cannot run on meta
        model = create_model(name, in_channels=1, num_classes=1, spatial_dims=dims)
    return count_parameters(model)


def configure_models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full-paper", action="store_true", help="do not shorten the paper column")


def run_models(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        info = model_info(name)
        rows.append([name, ", ".join(info["aliases"]) or "-", "/".join(f"{d}D" for d in info["dims"]),
                     f"{default_parameter_count(name):,}", info["default_loss"], str(info["input_multiple"]),
                     info["paper"] if args.full_paper else _short_paper(info["paper"])])
    headers = ["name", "aliases", "dims", "parameters", "default loss", "input multiple", "paper"]
    print(markdown_table(headers, rows, [False, False, False, True, False, True, False]))
    print(f"\n{len(rows)} models; parameters at in_channels=1, num_classes=1, 2D where supported.")
    return 0


# ----------------------------------------------------------------------------------------------------
# medseg benchmark
# ----------------------------------------------------------------------------------------------------

def configure_benchmark(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="registry names or aliases, or peers: monai:basicunet, monai:unet, monai:vnet")
    parser.add_argument("--size", nargs="+", type=_positive_int, default=[128], metavar="N",
                        help="2D input sizes (square; default: 128)")
    parser.add_argument("--size-3d", nargs="+", type=_positive_int, default=[32], metavar="N",
                        help="3D input sizes (cube; default: 32)")
    parser.add_argument("--dims", nargs="+", type=int, choices=(2, 3), default=None,
                        help="spatial dims to measure (default: 2 if the model supports it, else 3); "
                             "a model is skipped, with a note, in dims it does not support")
    parser.add_argument("--batch-size", type=_positive_int, default=1)
    parser.add_argument("--in-channels", type=_positive_int, default=1)
    parser.add_argument("--num-classes", type=_positive_int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=_positive_int, default=5, help="timed runs (median; default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default: 1)")
    parser.add_argument("--peer", default=None, metavar="MODEL",
                        help="row the latency ratio compares with (default: the first model); "
                             "added to the run when not listed")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH.md",
                        help="Markdown file to write "
                             "(default: benchmarks/results/benchmark-<device>-<processor>.md)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def plan_benchmark(models: Sequence[str], dims: Sequence[int] | None, sizes_2d: Sequence[int],
                   sizes_3d: Sequence[int]) -> tuple[list[BenchmarkJob], list[str]]:
    """The benchmark jobs (canonical model names) and the notes on skipped dims.

    Unknown names, unsupported dims and sizes that a model cannot take raise :class:`MedsegError`.
    """
    jobs: dict[BenchmarkJob, None] = {}
    notes = []
    for name in models:
        target = resolve_target(name)
        wanted = list(dict.fromkeys(dims)) if dims else [2 if 2 in target.dims else 3]
        chosen = [d for d in wanted if d in target.dims]
        supported = " or ".join(f"{d}D" for d in target.dims)
        if not chosen:
            raise MedsegError(f"model {name!r} supports {supported} only, asked for "
                              f"{' and '.join(f'{d}D' for d in wanted)}")
        notes += [f"{name}: skipped in {d}D (supports {supported})" for d in wanted if d not in chosen]
        for d in chosen:
            for size in sizes_2d if d == 2 else sizes_3d:
                check_size(target, size)
                jobs[BenchmarkJob(target.name, d, size)] = None
    return list(jobs), notes


def _benchmark_report(table: str, notes: Sequence[str], args: argparse.Namespace) -> str:
    command = shlex.join([PROG, *args.argv]) if args.argv is not None else shlex.join([PROG, *sys.argv[1:]])
    header = [
        "# medseg benchmark", "",
        f"- machine: {machine_description(args.device)}",
        f"- medseg {__version__}; device {args.device}; batch size {args.batch_size}; "
        f"in_channels {args.in_channels}; num_classes {args.num_classes}; warm-up {args.warmup}; "
        f"repeats {args.repeats} (medians)",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`", "",
    ]
    legend = [
        "", "GMACs: multiply-accumulates of one eval forward of the batch (convolutions and matrix products, "
        "FlopCounterMode / 2). Peak memory: parameters, buffers and input plus the peak of the tensors "
        "allocated during one training forward + backward. Latency: eval forward, no_grad. Train throughput: "
        "forward + backward + SGD step.",
    ]
    notes_block = ["", "Notes:", *(f"- {n}" for n in notes)] if notes else []
    return "\n".join([*header, table, *legend, *notes_block]) + "\n"


def run_benchmark(args: argparse.Namespace) -> int:
    if args.warmup < 0:
        raise MedsegError(f"--warmup must be >= 0, got {args.warmup}")
    peer = resolve_target(args.peer).name if args.peer is not None else None
    jobs, notes = plan_benchmark([*args.models, *([args.peer] if peer else [])], args.dims, args.size,
                                 args.size_3d)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise MedsegError("--device cuda asked for, but CUDA is not available to torch")
    out = args.out or Path("benchmarks/results") / f"benchmark-{args.device}-{machine_slug(args.device)}.md"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegError(f"cannot create the folder of {out}: {exc.strerror}") from None
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    results = benchmark_models(jobs, progress=not args.no_progress, batch_size=args.batch_size,
                               in_channels=args.in_channels, num_classes=args.num_classes,
                               warmup=args.warmup, repeats=args.repeats, device=args.device)
    table = format_table(results, peer=peer)
    print(table)
    try:
        write_text_atomically(out, _benchmark_report(table, notes, args))
    except OSError as exc:
        raise MedsegError(f"cannot write {out}: {exc.strerror}") from None
    print(f"{PROG}: wrote {out}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------
# medseg check
# ----------------------------------------------------------------------------------------------------

def configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA",
                        help="data set folder (images/ + masks/, or imagesTr/ + labelsTr/ + dataset.json) "
                             "or a .csv/.json list of cases")
    parser.add_argument("--num-classes", type=_positive_int, default=None, metavar="N",
                        help="label values must lie in 0..N-1 (1: binary, {0, 1}); "
                             "default: the classes of dataset.json, else not checked")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_check(args: argparse.Namespace) -> int:
    report = check_dataset(args.data, num_classes=args.num_classes, progress=not args.no_progress)
    print("\n".join(report.lines()))
    return 0 if report.ok else 2


# ----------------------------------------------------------------------------------------------------
# The command table and the entry point
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, argument set-up and the function that runs it."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: tuple[Command, ...] = (
    Command("models", "list the model zoo (names, dims, parameters, paper)", configure_models, run_models),
    Command("benchmark", "measure parameters, GMACs, peak memory, latency and training throughput",
            configure_benchmark, run_benchmark),
    Command("check", "read every case of a data set and report all its problems, then a summary",
            configure_check, run_check),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Medical image segmentation toolkit.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``medseg`` command; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except MedsegError as exc:
        message = " ".join(str(exc).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
