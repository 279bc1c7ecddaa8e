"""Sliding-window inference: ours against MONAI's ``sliding_window_inference`` (engine issue, performance),
and the peak memory of predicting a 512x512x400 volume on the CPU.

Rows (one run, one machine):

- **3D U-Net**: ``create_model("unet", spatial_dims=3, features=F, depth=D)`` (eval, 3 classes) on a
  1x1x256x256x256 volume, patch P³, overlap 0.5, Gaussian weighting (σ = P/8), the same window batch:
  ours with ``convention="monai"`` (MONAI's window placement and clamped Gaussian, so that the outputs
  must agree) against ``monai.inferers.sliding_window_inference(..., overlap=0.5, mode="gaussian",
  sigma_scale=0.125)``, both under ``torch.inference_mode``. First one run of each in its own
  subprocess started the same way (torch, MONAI and medseg imported, the same model and input, a
  one-window warm-up), so that the peak resident set size (``ru_maxrss``) compares like with like;
  then, in this process, alternating, one plain run of each and one under ``torch.profiler`` for the
  peak of the tensor bytes allocated during the call (``measure_peak_memory``: exact for tensors,
  blind to memory outside torch's allocator; RSS is the opposite, so both are shown). Time: the CPU
  time of the call (user + system, ``time.process_time``) with one torch thread (``--threads``), the
  smallest of the three runs of each. On this 2-core machine shared with other jobs the wall time of
  the same run varies by tens of percent and the CPU time of a single-threaded process by 10-20 %
  (caches, no OpenMP spinning): the network dominates, so the ratio is within that noise. Hence also
  the CPU time outside the network: each run minus the CPU time spent inside the model's calls (the
  smallest over the runs), i.e. what the inferer itself adds, with the network's noise cancelled.
- **inferer only**: the same comparison with a predictor that costs almost nothing (the window repeated
  into 3 channels) on the same volume with 96³ patches, in this process (the smallest CPU time of 5
  alternating runs): what each inferer adds around a network.
- **512x512x400**: one channel, the same 3-class U-Net, CPU accumulation (``accumulate_device="cpu"``),
  then the uint8 label map (``logits_to_labels``), in a subprocess with torch's default threads: its
  peak RSS must stay below 4 GB.
  The window step (``--big-step``, default 1.0 to bound the run time on a slow CPU; 0.5 is the
  default of ``medseg predict``) changes the number of windows, not what is allocated: the logits
  accumulator, the input and one window batch.

    .venv/bin/python benchmarks/sliding_window.py [--features 4] [--depth 2] [--patch 128] [--threads 1]
                                                  [--big-step 1.0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medseg import create_model
from medseg.engine.benchmark import machine_description, machine_slug, markdown_table, measure_peak_memory
from medseg.engine.inference import logits_to_labels, sliding_window_inference
from medseg.fileio import write_text_atomically

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
NUM_CLASSES = 3
SIZE = (256, 256, 256)
BIG_SIZE = (512, 512, 400)
METHODS = ("ours", "monai")


def rss_mib() -> float:
    """The current resident set size (VmRSS) of this process."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def inferer(method: str, predictor: Callable, patch: int,
            batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``image [1, 1, *spatial] -> logits`` of ours (MONAI's convention) or MONAI's inferer."""
    if method == "ours":
        return lambda x: sliding_window_inference(predictor, x, (patch,) * 3, NUM_CLASSES, step=0.5,
                                                  window_batch_size=batch, convention="monai")
    from monai.inferers import sliding_window_inference as monai_sliding_window

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return monai_sliding_window(x, (patch,) * 3, batch, predictor, overlap=0.5, mode="gaussian",
                                        sigma_scale=0.125)[0]

    return run


def unet(features: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet", in_channels=1, num_classes=NUM_CLASSES, spatial_dims=3, features=features,
                        depth=depth).eval()


# ----------------------------------------------------------------------------------------------------
# Subprocess workers (one measurement each; the result is the last line of stdout, as JSON)
# ----------------------------------------------------------------------------------------------------

def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


class ClockedPredictor:
    """A model that sums the CPU seconds spent inside its calls: the network's share of a run, so that
    ``run - network`` is what the inferer itself costs (the network's run-to-run noise cancels)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.seconds = 0.0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        start = time.process_time()
        out = self.model(batch)
        self.seconds += time.process_time() - start
        return out


def setup_compare(spec: dict) -> tuple[dict[str, Callable], torch.Tensor, ClockedPredictor]:
    """The two inferers around the seeded U-Net (clocked), warmed up on one window, and the seeded input."""
    torch.set_num_threads(spec["threads"])
    clock = ClockedPredictor(unet(spec["features"], spec["depth"]))
    runs = {m: inferer(m, clock, spec["patch"], spec["batch"]) for m in spec["methods"]}
    x = torch.randn(1, 1, *SIZE, generator=torch.Generator().manual_seed(1))
    patch = spec["patch"]
    for run in runs.values():
        run(x[..., :patch, :patch, :patch].clone())
    return runs, x, clock


def clocked(clock: ClockedPredictor, fn: Callable[[], object]) -> dict[str, float]:
    """CPU, wall and network CPU seconds of ``fn()``."""
    clock.seconds = 0.0
    cpu, wall = timed(fn)
    return {"cpu_s": cpu, "wall_s": wall, "net_s": clock.seconds}


def worker_compare(spec: dict) -> dict:
    """One plain run of one method in a fresh process: its peak RSS, time and output (saved)."""
    import monai.inferers  # noqa: F401  (both methods start from the same imports)

    runs, x, clock = setup_compare(spec)
    run = runs[spec["methods"][0]]
    base = rss_mib()
    logits: list[torch.Tensor] = []
    result = {"rss_before_mib": base, **clocked(clock, lambda: logits.append(run(x))),
              "rss_peak_mib": peak_rss_mib()}
    np.save(spec["save"], logits[0].numpy())
    return result


def worker_big(spec: dict) -> dict:
    model = unet(spec["features"], spec["depth"])
    x = torch.randn(1, *BIG_SIZE, generator=torch.Generator().manual_seed(1))
    base = rss_mib()
    start = time.perf_counter()
    logits = sliding_window_inference(model, x, (spec["patch"],) * 3, NUM_CLASSES, step=spec["step"],
                                      window_batch_size=spec["batch"], accumulate_device="cpu")
    labels = logits_to_labels(logits, "multiclass")
    del logits
    seconds = time.perf_counter() - start
    return {"rss_before_mib": base, "rss_peak_mib": peak_rss_mib(), "seconds": seconds,
            "labels": f"{tuple(labels.shape)} {labels.dtype}"}


def in_subprocess(kind: str, spec: dict) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------
# The comparisons
# ----------------------------------------------------------------------------------------------------

def compare_unet(args: argparse.Namespace, work: Path) -> dict:
    """Ours and MONAI's runs, alternating: one plain run each in a fresh subprocess (peak RSS, time,
    output), then in this process one plain run each (time) and one under the profiler (tensor peak,
    time)."""
    spec = {"features": args.features, "depth": args.depth, "patch": args.patch, "batch": args.batch,
            "threads": args.threads}
    results: dict = {m: {"cpu_s": [], "wall_s": [], "net_s": []} for m in METHODS}
    for method in METHODS:
        measured = in_subprocess("compare", {**spec, "methods": [method],
                                             "save": str(work / f"{method}.npy")})
        print(f"  {method} subprocess: {measured}", file=sys.stderr)
        results[method].update(rss_before_mib=measured["rss_before_mib"],
                               rss_peak_mib=measured["rss_peak_mib"])
        for key in ("cpu_s", "wall_s", "net_s"):
            results[method][key].append(measured[key])
    ours, theirs = np.load(work / "ours.npy", mmap_mode="r"), np.load(work / "monai.npy", mmap_mode="r")
    results["max_abs_diff"] = max(float(np.abs(ours[i] - theirs[i]).max()) for i in range(ours.shape[0]))
    runs, x, clock = setup_compare({**spec, "methods": METHODS})
    for profile in (False, True):
        for method, run in runs.items():
            peak: list[int] = []

            def call(run: Callable = run, peak: list[int] = peak, profile: bool = profile) -> None:
                if profile:
                    peak.append(measure_peak_memory(lambda: run(x)))
                else:
                    run(x)

            measured = clocked(clock, call)
            for key in ("cpu_s", "wall_s", "net_s"):
                results[method][key].append(measured[key])
            if profile:
                results[method]["tensor_peak_mib"] = peak[0] / MIB
            print(f"  {method} {'profiled' if profile else 'plain'}: {measured}", file=sys.stderr)
    return results


def compare_inferer_only(threads: int, patch: int = 96, batch: int = 4, repeats: int = 5) -> dict[str, float]:
    """Both inferers around a nearly free predictor, in this process."""
    torch.set_num_threads(threads)
    x = torch.randn(1, 1, *SIZE, generator=torch.Generator().manual_seed(1))

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return window.repeat(1, NUM_CLASSES, 1, 1, 1)

    runs = {m: inferer(m, predictor, patch, batch) for m in ("ours", "monai")}
    diff = (runs["ours"](x) - runs["monai"](x)).abs().max().item()
    times: dict[str, list[float]] = {"ours": [], "monai": []}
    for _ in range(repeats):
        for method, run in runs.items():
            times[method].append(timed(lambda run=run: run(x))[0])
    result = {f"{m}_seconds": min(t) for m, t in times.items()}
    for method, run in runs.items():
        result[f"{method}_tensor_peak_mib"] = measure_peak_memory(lambda run=run: run(x)) / MIB
    result["max_abs_diff"] = diff
    return result


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x"


def table(args: argparse.Namespace, net: dict, only: dict[str, float], big: dict) -> str:
    ours, theirs = net["ours"], net["monai"]
    verdict = "ok" if big["rss_peak_mib"] < 4096 else "OVER"
    t_ours, t_monai = min(ours["cpu_s"]), min(theirs["cpu_s"])
    wall_ours, wall_monai = min(ours["wall_s"]), min(theirs["wall_s"])
    own_ours = min(c - n for c, n in zip(ours["cpu_s"], ours["net_s"], strict=True))
    own_monai = min(c - n for c, n in zip(theirs["cpu_s"], theirs["net_s"], strict=True))
    rss_ours, rss_monai = ours["rss_peak_mib"], theirs["rss_peak_mib"]
    up_ours, up_monai = rss_ours - ours["rss_before_mib"], rss_monai - theirs["rss_before_mib"]
    peak_ours, peak_monai = ours["tensor_peak_mib"], theirs["tensor_peak_mib"]
    unet_name = (f"U-Net 3D (features {args.features}, depth {args.depth}), patch {args.patch}³, "
                 f"batch {args.batch}")
    rows = [
        [f"{unet_name}: CPU time (s)", f"{t_ours:.1f}", f"{t_monai:.1f}", f"{ratio(t_monai, t_ours)} speed"],
        [f"{unet_name}: wall time (s)", f"{wall_ours:.1f}", f"{wall_monai:.1f}",
         f"{ratio(wall_monai, wall_ours)} speed"],
        [f"{unet_name}: CPU time outside the network (s)", f"{own_ours:.2f}", f"{own_monai:.2f}",
         f"{ratio(own_monai, own_ours)} speed"],
        [f"{unet_name}: peak RSS (MiB)", f"{rss_ours:.0f}", f"{rss_monai:.0f}", ratio(rss_ours, rss_monai)],
        [f"{unet_name}: RSS growth during the call (MiB)", f"{up_ours:.0f}", f"{up_monai:.0f}",
         ratio(up_ours, up_monai)],
        [f"{unet_name}: peak tensor memory (MiB)", f"{peak_ours:.0f}", f"{peak_monai:.0f}",
         ratio(peak_ours, peak_monai)],
        [f"{unet_name}: max abs difference of the logits", f"{net['max_abs_diff']:.1e}", "-", "-"],
        ["inferer only, patch 96³, batch 4: CPU time (s)", f"{only['ours_seconds']:.2f}",
         f"{only['monai_seconds']:.2f}", f"{ratio(only['monai_seconds'], only['ours_seconds'])} speed"],
        ["inferer only: peak tensor memory (MiB)", f"{only['ours_tensor_peak_mib']:.0f}",
         f"{only['monai_tensor_peak_mib']:.0f}",
         ratio(only["ours_tensor_peak_mib"], only["monai_tensor_peak_mib"])],
        ["inferer only: max abs difference", f"{only['max_abs_diff']:.1e}", "-", "-"],
        [f"1x512x512x400, 3 classes, CPU accumulation, step {args.big_step}: peak RSS (MiB)",
         f"{big['rss_peak_mib']:.0f}", "-", f"limit 4096 MiB: {verdict}"],
        ["1x512x512x400: time, logits and uint8 labels (s)", f"{big['seconds']:.0f}", "-", "-"],
    ]
    return markdown_table(["1x1x256x256x256 unless said", "ours", "MONAI", "ours vs MONAI"], rows,
                          [False, True, True, True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2, help="windows per predictor call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the comparisons")
    parser.add_argument("--big-step", type=float, default=1.0, help="window step of the 512x512x400 run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", choices=("compare", "big"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = worker_compare if args.worker == "compare" else worker_big
        print(json.dumps(work(json.loads(args.spec))))
        return
    print("inferer only ...", file=sys.stderr)
    only = compare_inferer_only(args.threads)
    print(f"  {only}\nU-Net ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        net = compare_unet(args, Path(tmp))
    print("512x512x400 ...", file=sys.stderr)
    big = in_subprocess("big", {"features": args.features, "depth": args.depth, "patch": args.patch,
                                "batch": args.batch, "step": args.big_step})
    print(f"  {big}", file=sys.stderr)
    body = table(args, net, only, big)
    command = ("`.venv/bin/python benchmarks/sliding_window.py` " + " ".join(sys.argv[1:])).strip()
    text = "\n".join([
        "# Sliding-window inference: ours vs MONAI, and a 512x512x400 volume on the CPU", "",
        f"- machine: {machine_description()}",
        "- both inferers: overlap 0.5, Gaussian σ = patch/8, MONAI's window placement and clamped "
        "Gaussian (ours with `convention=\"monai\"`), `torch.inference_mode`",
        "- U-Net: one run of each in its own subprocess for the peak RSS (ours, MONAI), then alternating "
        "in one process, plain and under torch.profiler (tensor peak)",
        f"- time: CPU time of the call with {args.threads} torch thread(s), the smallest of each method's "
        "3 runs (wall times on this shared machine vary by tens of percent); speed ratio = MONAI time / "
        "our time; outside the network: each run's CPU time minus the CPU time inside the model's calls; "
        "memory ratio = ours / MONAI",
        "- 512x512x400: logits accumulated on the CPU, then the uint8 label map; peak RSS of the whole "
        "process (Python, torch and the 400 MiB input included)",
        f"- command: {command}", "", body, ""])
    print(body)
    out = args.out or ROOT / "benchmarks" / "results" / f"sliding-window-cpu-{machine_slug()}.md"
    write_text_atomically(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
