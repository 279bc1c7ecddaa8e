"""The ``medseg`` command: one small function per subcommand, registered in :data:`COMMANDS`.

Bad input (:class:`medseg.errors.MedsegError`) ends with one line ``medseg: error: ...`` on stderr and
exit code 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from medseg import __version__
from medseg.data.check import check_dataset, default_workers
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
from medseg.engine.device import resolve_device
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.metrics.case import METRIC_NAMES
from medseg.models.registry import count_parameters, create_model, list_models, model_info

PROG = "medseg"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
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
    """Trainable parameters at the default settings: 1 input channel, 1 class (instance models: 1 object
    class and the background; BPR: an image channel and the mask), 2D if supported else 3D.

    The model is built on the ``meta`` device (no memory, no initialisation) when its constructor
    allows it, else on the CPU.
    """
    info = model_info(name)
    dims = 2 if 2 in info["dims"] else 3
    classes = 2 if info["task"] == "instance" else 1  # a detector's classes count the background
    channels = 2 if info["name"] == "bpr" else 1  # BPR's input: an image channel and the coarse mask
    try:
        with torch.device("meta"):
            model = create_model(name, in_channels=channels, num_classes=classes, spatial_dims=dims)
    except MedsegError:
        raise
    except Exception:  # a constructor that computes with tensors (e.g. .item()) cannot run on meta
        model = create_model(name, in_channels=channels, num_classes=classes, spatial_dims=dims)
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
    print(f"\n{len(rows)} models; parameters at in_channels=1, num_classes=1 (instance models: 2, the "
          "background included; bpr: in_channels 2, an image channel and the mask), 2D where supported.")
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
    resolve_device(args.device, key="--device")  # before any model is built
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
    _add_channels_suffix(parser)
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="let a .csv/.json list name files outside its own folder (../, absolute paths)")
    parser.add_argument("--workers", type=_non_negative_int, default=None, metavar="N",
                        help=f"processes reading cases (default: one per core, here {default_workers()}; "
                             "0: read them in this process); the report is the same for any N")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_check(args: argparse.Namespace) -> int:
    report = check_dataset(args.data, num_classes=args.num_classes, progress=not args.no_progress,
                           channels_suffix=args.channels_suffix, allow_outside_root=args.allow_outside_root,
                           workers=args.workers)
    print("\n".join(report.lines()))
    return 0 if report.ok else 2


# ----------------------------------------------------------------------------------------------------
# medseg plan
# ----------------------------------------------------------------------------------------------------

def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def configure_plan(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA", help="data set folder or .csv/.json list")
    parser.add_argument("--memory-gb", type=_positive_float, default=8.0, metavar="G",
                        help="training memory budget of the device in GB (default: 8)")
    parser.add_argument("--minutes", type=_positive_float, default=60.0, metavar="M",
                        help="training time budget in minutes, for the epoch count (default: 60)")
    parser.add_argument("--out", type=Path, default=None, metavar="PRESET.yaml",
                        help="the preset to write (default: plan-<data folder>.yaml)")
    parser.add_argument("--jobs", type=_non_negative_int, default=default_workers(), metavar="N",
                        help=f"processes reading cases (default: one per core, here {default_workers()})")
    parser.add_argument("--cache", type=Path, default=None, metavar="PATH.json",
                        help="fingerprint cache (default: runs/fingerprints/<data folder>.json)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the memory and the training steps are measured (default: auto)")
    parser.add_argument("--mode", choices=("auto", "2d", "2.5d", "3d"), default="auto",
                        help="2D, 2.5D (a 2D model on neighbouring slices) or 3D; auto: 2D images 2D, "
                             "volumes 3D unless a thick-slice axis is too short to pool twice (then 2.5D); "
                             "2d on volumes is slice by slice (default: auto)")
    _add_channels_suffix(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_plan(args: argparse.Namespace) -> int:
    from medseg.engine.autoplan import plan_path

    out = plan_path(args.data, memory_gb=args.memory_gb, minutes=args.minutes, out=args.out, jobs=args.jobs,
                    cache=args.cache, device=args.device, progress=not args.no_progress,
                    channels_suffix=args.channels_suffix, mode=args.mode,
                    argv=args.argv if args.argv is not None else sys.argv[1:])
    print(f"{PROG}: wrote {out} (train it with: {PROG} train {out})", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------
# medseg evaluate
# ----------------------------------------------------------------------------------------------------

def configure_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", type=Path, metavar="PRED",
                        help="folder of predictions (label or probability maps)")
    parser.add_argument("gt", type=Path, metavar="GT",
                        help="folder of ground-truth masks, or a data set root (labelsTr/, masks/)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write metrics.csv, summary.json and report.html "
                             "(default: PRED/evaluation)")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                        help=f"metrics to compute (default: all): {', '.join(METRIC_NAMES)}")
    parser.add_argument("--labels", nargs="+", type=_positive_int, default=None, metavar="LABEL",
                        help="label values to evaluate (default: every non-zero label of the ground truth)")
    parser.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM",
                        help="tolerance of the normalised surface Dice, in physical units (default: 1.0)")
    parser.add_argument("--workers", type=_positive_int, default=2, metavar="N",
                        help="processes evaluating cases (default: 2)")
    parser.add_argument("--instance", action="store_true",
                        help="instance label maps (one id per object): COCO AP, DSB2018 score, AJI, PQ, "
                             "object Dice; scores from optional {case}_instances.json sidecars; "
                             "writes metrics.csv and summary.json")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _statistic(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"  # None / NaN: no finite value


def _evaluation_table(data: dict) -> str:
    rows = [[name, f"{_statistic(stats['mean'])} ± {_statistic(stats['std'])}", _statistic(stats["median"]),
             str(stats["nan"])] for name, stats in data["metrics"].items()]
    return markdown_table(["metric", "mean ± std", "median", "NaN"], rows, [False, True, True, True])


@contextlib.contextmanager
def _warnings_on_stderr(logger_name: str) -> Iterator[None]:
    """Show the warnings of ``logger_name`` on stderr as ``medseg: warning: ...`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def run_evaluate_instances(args: argparse.Namespace) -> int:
    from medseg.engine.evaluate_instances import evaluate_instance_folders

    if args.metrics is not None or args.labels is not None:
        raise MedsegError("--metrics and --labels do not apply to --instance (every instance metric is "
                          "computed, all ids are objects of one category)")
    with _warnings_on_stderr("medseg.engine.evaluate"):
        summary = evaluate_instance_folders(args.pred, args.gt, out_dir=args.out,
                                            progress=not args.no_progress)
    data, ap = summary.data, summary.data["ap"]
    print(_evaluation_table(data))
    print(f"\nAP {ap['ap']:.4f}, AP50 {ap['ap50']:.4f}, AP75 {ap['ap75']:.4f} over all cases "
          f"({ap['gt_instances']} objects, {ap['pred_instances']} predicted instances).")
    print(f"{data['cases']} cases evaluated; {len(data['missing'])} missing, {len(data['extra'])} extra, "
          f"{len(data['problems'])} left out.")
    for path in summary.files.values():
        print(f"{PROG}: wrote {path}", file=sys.stderr)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from medseg.engine.evaluate import evaluate_folders  # matplotlib: loaded only when evaluating

    if args.instance:
        return run_evaluate_instances(args)
    with _warnings_on_stderr("medseg.engine.evaluate"):
        summary = evaluate_folders(args.pred, args.gt, out_dir=args.out, metrics=args.metrics,
                                   labels=args.labels, nsd_tolerance=args.nsd_tolerance,
                                   progress=not args.no_progress, workers=args.workers)
    data = summary.data
    print(_evaluation_table(data))
    print(f"\n{data['cases']} cases evaluated (classes {', '.join(map(str, data['classes']))}); "
          f"{len(data['missing'])} missing, {len(data['extra'])} extra, {len(data['problems'])} left out.")
    for path in summary.files.values():
        print(f"{PROG}: wrote {path}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------
# medseg train
# ----------------------------------------------------------------------------------------------------

def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="the run's YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.epochs=5 optim.lr=1e-3 data.patch_size=[64,64]")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last.pt")
    parser.add_argument("--run-dir", type=Path, default=None, help="the run directory (default: run_dir of "
                                                                    "the config, else runs/NAME)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run_train(args: argparse.Namespace) -> int:
    from medseg.engine.config import load_config
    from medseg.engine.trainer import train

    overrides = list(args.overrides)
    if args.run_dir is not None:
        overrides.append(f"run_dir={args.run_dir}")
    config = load_config(args.config, overrides)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")
    result = train(config, resume=args.resume, progress=not args.no_progress)
    if not main_rank:
        return 0
    best = "none" if result.best_score is None else f"{result.best_score:.4f}"
    print(f"{PROG}: trained {result.epochs_run} epochs in {result.run_dir} (best "
          f"{config.train.best_metric} {best}; checkpoints {result.best_checkpoint}, "
          f"{result.last_checkpoint})", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------
# medseg predict
# ----------------------------------------------------------------------------------------------------

def _step(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def configure_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="CHECKPOINT [CHECKPOINT ...] INPUT OUTPUT",
                        help="one or more checkpoints or exported models (medseg export: TorchScript "
                             ".pt, .onnx; several: an ensemble averaging probabilities), "
                             "the input image file or folder, and the output folder "
                             "(or file, for one input file)")
    parser.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument("--step", type=_step, default=None, metavar="F",
                        help="sliding-window step as a fraction of the patch "
                             "(default: the checkpoint's, 0.5)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write {case}_probabilities.npz (2D) / .nii.gz (3D)")
    parser.add_argument("--no-overlays", action="store_true", help="no PNG overlays for 2D images")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep the largest connected component of each class")
    parser.add_argument("--fill-holes", action="store_true", help="fill holes in each class")
    parser.add_argument("--min-size", type=int, default=0, metavar="N",
                        help="remove components smaller than N voxels (default: 0, keep all)")
    parser.add_argument("--instances", choices=("watershed",), default=None,
                        help="binary models: split the foreground into a 16-bit instance label map "
                             "(watershed on the distance transform)")
    parser.add_argument("--watershed-min-distance", type=int, default=3, metavar="N",
                        help="watershed markers: distance maxima at least N pixels apart (default: 3)")
    parser.add_argument("--watershed-threshold", type=float, default=1.0, metavar="D",
                        help="watershed markers: at least D pixels from the background (default: 1)")
    parser.add_argument("--watershed-min-size", type=int, default=0, metavar="N",
                        help="remove instances smaller than N pixels (default: 0, keep all)")
    parser.add_argument("--instances-json", action="store_true",
                        help="instance checkpoints (Mask R-CNN): also write {case}_instances.json with the "
                             "scores, labels and boxes of the instances")
    _add_channels_suffix(parser)
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="N threads read and preprocess ahead of the network while a writer thread "
                             "writes behind it (default: 0, one case after the other; same files)")
    parser.add_argument("--overwrite", action="store_true",
                        help="predict again the cases whose outputs all exist (default: skip them)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_channels_suffix(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels-suffix", action=argparse.BooleanOptionalAction, default=None,
                        help="read {case}_0000, {case}_0001, ... files as channels of one case (nnU-Net's "
                             "rule; default: only in the Decathlon/nnU-Net layout, else one case per file)")


def run_predict(args: argparse.Namespace) -> int:
    from medseg.engine.postprocess import PostprocessOptions
    from medseg.engine.predict import predict_paths

    if len(args.paths) < 3:
        raise MedsegError("predict needs CHECKPOINT [CHECKPOINT ...] INPUT OUTPUT (at least 3 paths)")
    if args.min_size < 0:
        raise MedsegError(f"--min-size must be >= 0, got {args.min_size}")
    *checkpoints, source, target = args.paths
    options = None
    if args.largest_component or args.fill_holes or args.min_size or args.instances:
        options = PostprocessOptions(largest_component=args.largest_component, fill_holes=args.fill_holes,
                                     min_component_voxels=args.min_size, instances=args.instances,
                                     watershed_min_distance=args.watershed_min_distance,
                                     watershed_threshold=args.watershed_threshold,
                                     watershed_min_size=args.watershed_min_size)
    written = predict_paths(checkpoints, source, target, tta=False if args.no_tta else None, step=args.step,
                            save_probabilities=args.probabilities, overlays=not args.no_overlays,
                            postprocess=options, device=args.device, progress=not args.no_progress,
                            channels_suffix=args.channels_suffix, instances_json=args.instances_json,
                            workers=args.workers, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: one line for the whole job
        print(f"{PROG}: {len(written)} predictions in {Path(target) if len(written) != 1 else written[0]}",
              file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------
# medseg export
# ----------------------------------------------------------------------------------------------------

def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a medseg checkpoint (best.pt)")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--torchscript", action="store_const", const="torchscript", dest="format",
                      help="TorchScript (torch.jit.trace), default output CHECKPOINT.torchscript.pt")
    kind.add_argument("--onnx", action="store_const", const="onnx", dest="format",
                      help="ONNX (needs the onnx package; checked with onnxruntime when installed), "
                           "default output CHECKPOINT.onnx")
    parser.add_argument("--opset", type=_positive_int, default=None, metavar="N",
                        help="ONNX opset version (default: 17)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="where to write the export")


def run_export(args: argparse.Namespace) -> int:
    from medseg.engine.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.out, opset=args.opset)
    sizes = "dynamic sizes" if result.dynamic_spatial else f"fixed size {list(result.export_size)}"
    checked = result.note or (f"max abs diff to PyTorch {result.max_abs_diff:.1e} on inputs "
                              + ", ".join(str(list(s)) for s in result.checked_shapes))
    print(f"{PROG}: wrote {result.path} ({result.format}, {sizes}; {checked})", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------
# medseg refine (BPR)
# ----------------------------------------------------------------------------------------------------

REFINE_USAGE = ("medseg refine CHECKPOINT IMAGES COARSE OUT [options]\n"
                "       medseg refine prepare COARSE DATASET OUT [options]")


def _iou_threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def configure_refine(parser: argparse.ArgumentParser) -> None:
    parser.usage = REFINE_USAGE
    parser.description = (
        "Boundary Patch Refinement (BPR, Tang et al. 2021). 'medseg refine CHECKPOINT IMAGES COARSE OUT' "
        "refines the coarse predictions in COARSE (named by case id, binary, semantic or instance label "
        "maps) of the images in IMAGES with a trained refiner and writes OUT/{coarse name}. 'medseg refine "
        "prepare COARSE DATASET OUT' writes training patches from coarse predictions of a data set's cases "
        "(train them with: medseg train configs/bpr-polyp.yaml data.root=OUT).")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="see the usage")
    parser.add_argument("--patch-size", type=_positive_int, default=64, metavar="N",
                        help="boundary patch size in pixels (default: 64)")
    parser.add_argument("--iou-threshold", type=_iou_threshold, default=None, metavar="T",
                        help="NMS IoU of the patch boxes (default: 0.55 refining, 0.25 preparing)")
    refine = parser.add_argument_group("refining")
    refine.add_argument("--batch-size", type=_positive_int, default=16, metavar="N",
                        help="patches per network batch (default: 16)")
    refine.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    prepare = parser.add_argument_group("preparing")
    prepare.add_argument("--instances", action="store_true",
                         help="the coarse and ground-truth maps are instance label maps (match each coarse "
                              "instance to the ground-truth instance of highest IoU)")
    prepare.add_argument("--min-iou", type=_iou_threshold, default=0.5, metavar="T",
                         help="drop coarse objects with IoU below T to their ground truth (default: 0.5)")
    prepare.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                         help="share of source cases in splits.json's validation side (default: 0.2)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_refine(args: argparse.Namespace) -> int:
    from medseg.engine.refine import prepare_patches, refine_paths

    paths = [Path(p) for p in args.paths]
    if args.paths[0] == "prepare":
        if len(paths) != 4:
            raise MedsegError("refine prepare needs COARSE DATASET OUT (3 paths)")
        if not 0 < args.val_fraction < 1:
            raise MedsegError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
        summary = prepare_patches(*paths[1:], instances=args.instances, patch_size=args.patch_size,
                                  iou_threshold=0.25 if args.iou_threshold is None else args.iou_threshold,
                                  min_iou=args.min_iou, val_fraction=args.val_fraction,
                                  progress=not args.no_progress)
        print(f"{PROG}: wrote {summary.patches} patches of {summary.objects - summary.dropped} objects "
              f"({summary.dropped} dropped at IoU < {args.min_iou}) from {summary.cases} cases to "
              f"{summary.out}", file=sys.stderr)
        return 0
    if len(paths) != 4:
        raise MedsegError(f"refine needs CHECKPOINT IMAGES COARSE OUT (4 paths), got {len(paths)}")
    written = refine_paths(*paths, patch_size=args.patch_size,
                           iou_threshold=0.55 if args.iou_threshold is None else args.iou_threshold,
                           batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    print(f"{PROG}: wrote {len(written)} refined predictions to {paths[3]}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------
# medseg demo
# ----------------------------------------------------------------------------------------------------

def configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                        help="where the data, run, predictions and evaluation go (default: runs/demo)")
    parser.add_argument("--minutes", type=float, default=None, metavar="N",
                        help="training time budget in minutes (default: the demo config's)")


def run_demo(args: argparse.Namespace) -> int:
    from medseg.engine.demo import run_demo as demo

    if args.minutes is not None and args.minutes <= 0:
        raise MedsegError(f"--minutes must be positive, got {args.minutes}")
    result = demo(args.out, minutes=args.minutes)
    print("\n".join(result.lines()))
    return 0


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
    Command("plan", "fingerprint a data set and write an editable training preset (nnU-Net's rules)",
            configure_plan, run_plan),
    Command("evaluate", "compare predictions with the ground truth: metrics.csv, summary.json, report.html",
            configure_evaluate, run_evaluate),
    Command("train", "train a model from a YAML config: checkpoints, log.csv, progress.png (--resume)",
            configure_train, run_train),
    Command("predict", "predict images with one checkpoint or an ensemble: masks in the source format",
            configure_predict, run_predict),
    Command("export", "export a checkpoint to TorchScript or ONNX (checked against PyTorch) for predict",
            configure_export, run_export),
    Command("refine", "BPR: refine coarse masks along their boundaries (refine prepare: training patches)",
            configure_refine, run_refine),
    Command("demo", "synthetic 2D data, a few minutes of CPU training, prediction and evaluation report",
            configure_demo, run_demo),
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
