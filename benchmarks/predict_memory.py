"""Peak memory of ``medseg predict`` on a 512x512x400 single-channel NIfTI volume, CPU (engine issue).

The whole command path (:func:`medseg.engine.predict.predict_paths`): read the NIfTI, z-score it, Gaussian
sliding-window inference with a 3-class 3D U-Net (random weights, ``features`` x ``depth``), logits
accumulated on the CPU, argmax labels, revert to the source grid, write the NIfTI mask. It runs in a
subprocess whose peak resident set size (``VmHWM`` of ``/proc/self/status``, else ``ru_maxrss``) must stay
below 4 GB. The step (``--step``; 0.5 is ``medseg predict``'s default) changes the number of windows and
so the time, not what is allocated: the source and normalised image, the logits, one window batch, the
labels.

    .venv/bin/python benchmarks/predict_memory.py [--features 4] [--depth 2] [--patch 128] [--step 0.5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

LIMIT_BYTES = 4 * 2**30
SHAPE = (512, 512, 400)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The volume (int16, CT-like) and a checkpoint of a random 3-class 3D U-Net."""
    import nibabel as nib
    import numpy as np
    import torch

    from medseg.data.preprocess import Preprocessor
    from medseg.engine.checkpoint import make_checkpoint, save_checkpoint
    from medseg.models.registry import create_model

    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1000, size=SHAPE, dtype=np.int16)
    image = folder / "volume.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 1.5, 1.0])), image)
    torch.manual_seed(0)
    options = {"features": args.features, "depth": args.depth}
    model = create_model("unet", in_channels=1, num_classes=3, spatial_dims=3, **options)
    zscore = Preprocessor(normalization="zscore").to_dict()
    ckpt = make_checkpoint(model, name="unet", in_channels=1, num_classes=3, spatial_dims=3, options=options,
                           label_mode="multiclass", preprocessing=zscore,
                           inference={"patch_size": [args.patch] * 3, "mirror": False, "accumulate_on": "cpu",
                                      "window_batch_size": 2})
    return image, save_checkpoint(folder / "model.pt", ckpt)


def child(args: argparse.Namespace) -> None:
    """Predict the volume and print the peak RSS and the time as JSON."""
    import torch

    from medseg.engine.predict import predict_paths

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    predict_paths([args.checkpoint], args.image, args.output, tta=False, step=args.step, device="cpu",
                  progress=False, overwrite=True)
    print(json.dumps({"peak_rss": peak_rss_bytes(), "seconds": time.perf_counter() - start}))


def report(args: argparse.Namespace, result: dict, command: str) -> str:
    from medseg.engine.benchmark import machine_description, markdown_table

    gib = result["peak_rss"] / 2**30
    rows = [[f"{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}", f"unet 3D, features {args.features}, depth {args.depth}, "
             f"3 classes", f"{args.patch}^3", str(args.step), f"{result['seconds']:.0f}", f"{gib:.2f}",
             "yes" if result["peak_rss"] < LIMIT_BYTES else "NO"]]
    table = markdown_table(["volume", "model", "patch", "step", "time (s)", "peak RSS (GiB)", "< 4 GB"], rows,
                           [False, False, False, True, True, True, False])
    return "\n".join([
        "# medseg predict: peak memory of a 512x512x400 volume (CPU)", "",
        f"- machine: {machine_description('cpu')}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- torch threads in the subprocess: {args.threads}",
        "- the whole `predict_paths` path in a subprocess: NIfTI read (int16), z-score, sliding window "
        "(no TTA, logits accumulated on the CPU), argmax, NIfTI write; peak RSS = VmHWM of the subprocess",
        "",
        table, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--step", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from medseg.engine.benchmark import machine_slug

    command = " ".join([Path(sys.executable).name, *sys.argv])
    with tempfile.TemporaryDirectory() as tmp:
        image, checkpoint = make_inputs(Path(tmp), args)
        run = subprocess.run([sys.executable, __file__, "--child", "--checkpoint", str(checkpoint), "--image",
                              str(image), "--output", str(Path(tmp) / "out"), "--step", str(args.step),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=False)
        if run.returncode != 0:
            sys.exit(f"the prediction failed:\n{run.stderr[-2000:]}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
    text = report(args, result, command)
    out = args.out or Path(__file__).parent / "results" / f"predict-memory-cpu-{machine_slug('cpu')}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
