"""Speed of ``medseg check`` on the largest Kvasir-SEG images (issue "Real data as users bring it").

A user reported ``medseg check`` running past 600 s on 150 PolypGen JPEGs of up to 1920x1080 on 2 cores.
This benchmark links the ``--cases`` largest Kvasir-SEG pairs (JPEG images and JPEG masks, by pixel count
from the file headers) into a temporary ``images/`` + ``masks/`` folder and times ``check_dataset`` on
them, and on the same pairs resized to 1920x1080 (``--resize``, JPEG quality 95: the reported size):
the code before the speed work (``--baseline``, a git revision exported to a temporary folder; the
old code always read in this process), and the current code with ``--workers`` 0 (in this process) and 2.
Each configuration runs in a fresh Python process, ``--repeats`` times (the median is reported), after one
untimed pass that brings the files into the page cache; the report lines of every configuration must be
identical, else the benchmark fails. The whole ``medseg check`` command (Python start-up and imports
included) is timed once more at its default worker count.

    .venv/bin/python benchmarks/check_speed.py [--cases 150] [--repeats 3] [--baseline b86706f]

The data come from ``../shared/data/kvasir-seg``; without them the benchmark says so and exits.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from medseg.data.check import default_workers
from medseg.engine.benchmark import markdown_table, write_benchmark_report

ROOT = Path(__file__).resolve().parents[1]
KVASIR = ROOT.parent / "shared" / "data" / "kvasir-seg"
BASELINE = "b86706f"  # the last commit before check was made fast

#: Run in a child process: time check_dataset on argv[1] with argv[2] workers ("default": the code's own).
CHILD = """
import json, resource, sys, time
from medseg.data.check import check_dataset
def cpu():
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
root, workers = sys.argv[1], sys.argv[2]
options = {} if workers == "default" else {"workers": int(workers)}
start, start_cpu = time.perf_counter(), cpu()
report = check_dataset(root, progress=False, **options)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": cpu() - start_cpu, "lines": report.lines()}))
"""


def largest_pairs(data: Path, count: int, out: Path) -> tuple[int, str]:
    """Link the ``count`` largest image/mask pairs of ``data`` into ``out``; returns the number linked and
    the size range."""
    sizes = []
    for image in sorted((data / "images").glob("*.jpg")):
        if (data / "masks" / image.name).is_file():
            with Image.open(image) as opened:  # the header only
                sizes.append((opened.width * opened.height, opened.size, image.name))
    chosen = sorted(sizes, reverse=True)[:count]
    for folder in ("images", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for _, _, name in chosen:
            (out / folder / name).symlink_to((data / folder / name).resolve())
    (w_max, h_max), (w_min, h_min) = chosen[0][1], chosen[-1][1]
    return len(chosen), f"{w_min}x{h_min} to {w_max}x{h_max}"


def export_revision(revision: str, out: Path) -> Path | None:
    """``src/`` of a git revision of this repository extracted under ``out``, or ``None`` without git."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "src"],
                                 check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"no baseline: cannot export {revision} ({error})", file=sys.stderr)
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    return out / "src"


def timed_check(src: Path, dataset: Path, workers: str) -> tuple[float, float, list[str]]:
    """Wall and CPU seconds (of the process and its workers) of one check, and its report lines."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(dataset), workers], check=True, env=env,
                          capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), float(result["cpu"]), list(result["lines"])


def timed_command(dataset: Path) -> tuple[float, list[str]]:
    command = [sys.executable, "-m", "medseg.cli", "check", str(dataset), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, check=False, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, command


def resized_pairs(source: Path, out: Path, size: tuple[int, int]) -> None:
    """Every pair of ``source`` resized to ``size`` (width, height) and saved as JPEG (quality 95): images
    bicubic, masks nearest (their JPEG edges get new compression noise, as in PolypGen's masks)."""
    for folder, resample in (("images", Image.Resampling.BICUBIC), ("masks", Image.Resampling.NEAREST)):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / folder).glob("*.jpg")):
            with Image.open(path) as image:
                image.convert("RGB").resize(size, resample).save(out / folder / path.name, quality=95)


def timed_configs(configs: list[tuple[str, Path, str]], dataset: Path, repeats: int
                  ) -> tuple[list[float], list[float], str]:
    """The median wall and CPU seconds of each configuration, and the report's verdict (all must agree)."""
    timings, cpu_times, reports = [], [], []
    for label, src, workers in configs:
        timed_check(src, dataset, workers)  # untimed: warm caches and imports
        runs = [timed_check(src, dataset, workers) for _ in range(repeats)]
        timings.append(statistics.median(s for s, _, _ in runs))
        cpu_times.append(statistics.median(c for _, c, _ in runs))
        reports += [lines for _, _, lines in runs]
        print(f"{dataset.name}: {label}, workers {workers}: {timings[-1]:.2f} s", file=sys.stderr)
    if any(lines != reports[0] for lines in reports):
        raise SystemExit(f"{dataset.name}: the configurations disagree: the report depends on the code or "
                         "the workers")
    return timings, cpu_times, reports[0][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=150, help="largest pairs to check (default: 150)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    parser.add_argument("--baseline", default=BASELINE,
                        help=f"git revision of the old code to compare with (default: {BASELINE}); "
                             "'none' to skip")
    parser.add_argument("--resize", default="1920x1080", metavar="WxH",
                        help="also check the pairs resized to this size, PolypGen's (default: 1920x1080; "
                             "'none' to skip)")
    parser.add_argument("--data", type=Path, default=KVASIR, help="the Kvasir-SEG folder")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file (default: benchmarks/results/"
                                                                "check-speed-cpu-<machine>.md)")
    args = parser.parse_args()
    if not (args.data / "images").is_dir():
        print(f"skipped: Kvasir-SEG not found at {args.data.resolve()}", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        largest = work / "kvasir-largest"
        n, size_range = largest_pairs(args.data, args.cases, largest)
        datasets = [(largest, f"{size_range} (Kvasir)")]
        if args.resize != "none":
            width, height = (int(v) for v in args.resize.lower().split("x"))
            resized_pairs(largest, work / "kvasir-resized", (width, height))
            datasets.append((work / "kvasir-resized", f"{width}x{height} (resized)"))
        for path in sorted(work.rglob("*.jpg")):  # into the page cache: time decoding, not the disk
            path.read_bytes()
        configs = [("current", ROOT / "src", w) for w in ("0", "2")]
        old_src = export_revision(args.baseline, work / "baseline") if args.baseline != "none" else None
        if old_src is not None:
            configs.insert(0, (f"before ({args.baseline})", old_src, "default"))
        load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        rows, verdicts, parallel = [], [], []
        for dataset, description in datasets:
            timings, cpu_times, verdict = timed_configs(configs, dataset, args.repeats)
            verdicts.append(verdict)
            parallel.append(cpu_times[-1] / timings[-1])
            rows += [[description, label, "in-process" if workers in ("default", "0") else workers, str(n),
                      f"{seconds:.2f}", f"{cpu:.2f}", f"{n / seconds:.1f}", f"{timings[0] / seconds:.2f}"]
                     for (label, _, workers), seconds, cpu in zip(configs, timings, cpu_times, strict=True)]
        command_seconds, command = timed_command(datasets[-1][0])
    reference_name = "the old code" if old_src is not None else "workers 0"
    headers = ["image size", "code", "workers", "images", "seconds", "CPU seconds", "images/s",
               f"speed-up vs {reference_name}"]
    table = markdown_table(headers, rows, [False, False, *[True] * 6])
    notes = [
        f"date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; load average (1 min) at the "
        f"start: {load:.1f}",
        f"data: the {n} largest Kvasir-SEG pairs by pixel count (RGB JPEG images, JPEG masks)"
        + (f", and the same pairs resized to {args.resize} and saved as JPEG (quality 95), the size of the "
           "PolypGen report" if len(datasets) > 1 else "")
        + f"; the report of every configuration is identical ({'; '.join(verdicts)})",
        f"seconds: median of {args.repeats} runs of `check_dataset` in a fresh process (imports and Python "
        "start-up excluded), files in the page cache, OMP_NUM_THREADS=1; CPU seconds: of the process and "
        f"its workers (with 2 workers {', '.join(f'{r:.2f}' for r in parallel)} CPU seconds per second: 2 "
        "would mean both cores worked on the check, 1 that other load left one core free)",
        f"whole command on the {datasets[-1][1]} pairs at its default workers ({default_workers()}), "
        f"start-up and imports included: {command_seconds:.1f} s "
        f"(`{shlex.join(['medseg', *command[3:]]).replace(str(work), 'WORK')}`)",
        "produced by `.venv/bin/python benchmarks/check_speed.py`",
    ]
    write_benchmark_report("check-speed", "medseg check: speed on large JPEGs", table, notes, out=args.out,
                           results_dir=ROOT / "benchmarks" / "results")


if __name__ == "__main__":
    main()
