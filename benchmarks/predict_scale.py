"""``medseg predict`` at scale: cases per second for 1 and 2 processes and 0 / 2 workers, beside MONAI.

Data (synthetic, written once into ``--work``): ``--cases-2d`` grey PNG images (default 1,000 of 128x128)
and ``--cases-3d`` float32 NIfTI volumes (default 20 of 96³), smoothed noise. Models: random seeded U-Nets
saved as medseg checkpoints (2D: features 8, depth 3, whole image; 3D: features 4, depth 3, Gaussian
sliding window 64³, step 0.5), z-score preprocessing, no mirroring, one class (threshold at logit 0).

Rows per data set, each one command in its own subprocess with ``OMP_NUM_THREADS=1`` per process, timed
from start to exit (interpreter start, imports and checkpoint loading included, the same for every row):

- ``medseg predict --workers 0``: one process, one case after the other;
- ``medseg predict --workers 2``: reading + preprocessing in 2 threads, writing in one more;
- ``torchrun --nproc-per-node 2 medseg predict``: two processes, the cases sharded by rank;
- the peer (when MONAI is installed): a torch ``DataLoader`` (0 or 2 worker processes) reading the same
  files (Pillow / nibabel) and z-scoring them, ``monai.inferers.sliding_window_inference`` (2D: one
  window the size of the image; 3D: 64³, overlap 0.5, Gaussian, σ 0.125, 4 windows a batch) on the same
  network, the same uint8 masks written (PNG with Pillow, NIfTI with nibabel and the source affine).

The ratio column divides a row's cases/s by the peer's with the same number of workers (the 2-process row:
by the serial peer). Every medseg row's masks are compared with the serial row's (byte for byte for PNG,
voxel for voxel for NIfTI) and the peer's with the serial row's (share of equal pixels).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predict_scale.py [--cases-2d 1000] [--cases-3d 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medseg.data.preprocess import Preprocessor  # noqa: E402
from medseg.engine.benchmark import markdown_table, write_benchmark_report  # noqa: E402
from medseg.engine.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from medseg.models.registry import create_model  # noqa: E402

PATCH_3D = (64, 64, 64)
MODELS = {2: {"features": 8, "depth": 3}, 3: {"features": 4, "depth": 3}}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def write_data(work: Path, n2d: int, n3d: int, size2d: int, size3d: int) -> dict[int, Path]:
    """The PNG and NIfTI inputs (kept between runs of the same sizes) and one checkpoint per data set."""
    folders = {2: work / f"png-{n2d}x{size2d}", 3: work / f"nifti-{n3d}x{size3d}"}
    rng = np.random.default_rng(0)
    if not folders[2].is_dir():
        tmp = folders[2].with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i in range(n2d):
            image = ndimage.gaussian_filter(rng.normal(size=(size2d, size2d)), 3)
            image = np.clip(128 + image / image.std() * 40, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(tmp / f"case_{i:04d}.png")
        tmp.rename(folders[2])
    if not folders[3].is_dir():
        tmp = folders[3].with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i in range(n3d):
            volume = ndimage.gaussian_filter(rng.normal(size=(size3d,) * 3), 3).astype(np.float32)
            affine = np.diag([1.0, 1.0, 1.5, 1.0])
            nib.save(nib.Nifti1Image(volume * 100, affine), tmp / f"vol_{i:02d}.nii.gz")
        tmp.rename(folders[3])
    for dims, options in MODELS.items():
        torch.manual_seed(dims)
        model = create_model("unet", in_channels=1, num_classes=1, spatial_dims=dims, **options)
        inference: dict = {"mirror": False}
        if dims == 3:
            inference.update(patch_size=list(PATCH_3D), step=0.5)
        ckpt = make_checkpoint(model, name="unet", in_channels=1, num_classes=1, spatial_dims=dims,
                               options=options, label_mode="binary",
                               preprocessing=Preprocessor(normalization="zscore").to_dict(),
                               inference=inference)
        save_checkpoint(work / f"unet{dims}d.pt", ckpt)
    return folders


# ------------------------------------------------------------------------------------------------ peer

class _Files(torch.utils.data.Dataset):
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, np.ndarray | None]:
        path = self.files[index]
        if path.suffix == ".png":
            array, affine = np.asarray(Image.open(path), dtype=np.float32), None
        else:
            img = nib.load(path)
            array, affine = np.asarray(img.dataobj, dtype=np.float32), img.affine
        array = (array - array.mean()) / max(float(array.std()), 1e-8)
        return index, array[None], affine


def _first(batch: list) -> object:
    return batch[0]


def run_peer(inputs: Path, output: Path, checkpoint: Path, workers: int) -> None:
    """The MONAI peer: DataLoader reading, ``sliding_window_inference``, the same masks written."""
    from monai.inferers import sliding_window_inference

    from medseg.engine.checkpoint import build_model_from_checkpoint, load_checkpoint

    torch.set_num_threads(1)
    model = build_model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    files = sorted(p for p in inputs.iterdir() if p.name.endswith((".png", ".nii.gz")))
    loader = torch.utils.data.DataLoader(_Files(files), batch_size=1, collate_fn=_first,
                                         num_workers=workers)
    output.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for index, array, affine in loader:
            x = torch.from_numpy(array)[None]
            three_d = x.ndim == 5
            roi = PATCH_3D if three_d else tuple(x.shape[2:])
            logits = sliding_window_inference(x, roi, 4 if three_d else 1, model, overlap=0.5,
                                              mode="gaussian", sigma_scale=0.125)
            mask = (logits[0, 0] > 0).to(torch.uint8).numpy()
            name = files[index].name
            if three_d:
                nib.save(nib.Nifti1Image(mask, affine), output / name)
            else:
                Image.fromarray(mask).save(output / name)


# ------------------------------------------------------------------------------------------------ rows

def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _masks(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".png":
            out[path.name] = np.asarray(Image.open(path))
        elif path.name.endswith(".nii.gz"):
            out[path.name] = np.asarray(nib.load(path).dataobj)
    return out


def _same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    return names == sorted(p.name for p in b.iterdir() if p.is_file()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def bench(dims: int, inputs: Path, checkpoint: Path, out: Path, peer: bool) -> list[list[str]]:
    n = sum(1 for p in inputs.iterdir() if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    predict = ["-m", "medseg.cli", "predict", str(checkpoint), str(inputs)]
    flags = ["--no-overlays", "--no-progress", "--device", "cpu"]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2"]
    runs = [("medseg, 1 process, --workers 0", "w0", [sys.executable, *predict, str(out / "w0"), *flags], 0),
            ("medseg, 1 process, --workers 2", "w2",
             [sys.executable, *predict, str(out / "w2"), *flags, "--workers", "2"], 2),
            ("medseg, 2 processes (torchrun), --workers 0", "ddp",
             [*torchrun, *predict, str(out / "ddp"), *flags], 0)]
    if peer:
        for workers in (0, 2):
            runs.append((f"MONAI sliding_window_inference, DataLoader {workers} workers", f"monai{workers}",
                         [sys.executable, __file__, "--peer", str(inputs), str(out / f"monai{workers}"),
                          str(checkpoint), str(workers)], workers))
    seconds = {}
    for label, _, command, _ in runs:
        print(f"== {dims}D: {label}", file=sys.stderr)
        seconds[label] = _timed(command)
    serial = _masks(out / "w0")
    peer_seconds = {w: seconds[label] for label, name, _, w in runs if name.startswith("monai")}
    rows = []
    for label, name, _, workers in runs:
        folder = out / name
        ratio = f"{peer_seconds[workers] / seconds[label]:.2f}" if peer else "n/a"
        if name.startswith("monai"):
            masks = _masks(folder)
            equal = sum(int((masks[k] == serial[k]).sum()) for k in serial)
            check = f"{100 * equal / sum(v.size for v in serial.values()):.2f} % pixels equal to medseg's"
        elif name == "w0":
            check = "reference"
        else:
            identical = _same_bytes(folder, out / "w0") if dims == 2 else all(
                np.array_equal(a, serial[k]) for k, a in _masks(folder).items()) and len(serial) == n
            check = "identical to --workers 0" if identical else "DIFFERENT from --workers 0"
        rows.append([f"{dims}D", str(n), label, f"{seconds[label]:.1f}", f"{n / seconds[label]:.2f}", ratio,
                     check])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases-2d", type=int, default=1000)
    parser.add_argument("--cases-3d", type=int, default=20)
    parser.add_argument("--size-2d", type=int, default=128)
    parser.add_argument("--size-3d", type=int, default=96)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medseg-predict-scale")
    parser.add_argument("--out", type=Path, default=None, help="the Markdown report (default: results/)")
    parser.add_argument("--peer", nargs=4, default=None,
                        metavar=("INPUTS", "OUTPUT", "CHECKPOINT", "WORKERS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer is not None:
        run_peer(Path(args.peer[0]), Path(args.peer[1]), Path(args.peer[2]), int(args.peer[3]))
        return
    torch.set_num_threads(1)
    started, load_before = time.perf_counter(), os.getloadavg()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    folders = write_data(args.work, args.cases_2d, args.cases_3d, args.size_2d, args.size_3d)
    peer = importlib.util.find_spec("monai") is not None
    rows = []
    for dims in (2, 3):
        rows += bench(dims, folders[dims], args.work / f"unet{dims}d.pt", args.work / f"out{dims}d", peer)
    wall, load_after = time.perf_counter() - started, os.getloadavg()
    table = markdown_table(["data", "cases", "command", "wall (s)", "cases/s", "vs MONAI", "masks"], rows,
                           [False, True, False, True, True, True, False])
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predict_scale.py" + "".join(
        f" --{k} {v}" for k, v in (("cases-2d", args.cases_2d), ("cases-3d", args.cases_3d),
                                  ("size-2d", args.size_2d), ("size-3d", args.size_3d)))
    notes = [
        f"{os.cpu_count()}-core CPU (named on the machine line), shared with other jobs (load average below)",
        f"date: {date}", f"command: `{command}`", f"whole benchmark wall time: {wall:.0f} s",
        "torch threads: 1 per process (OMP_NUM_THREADS=1); --workers 2 adds 2 reader threads and 1 writer "
        "thread to the process; the peer's DataLoader workers are processes of 1 thread each",
        f"load average (1 min): {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end",
        "each row is one command in a subprocess timed from start to exit (imports, checkpoint loading, "
        "torchrun start-up included); 'vs MONAI': cases/s over the peer's with the same workers (2 "
        "processes: over the serial peer)",
        "2D: unet features 8 depth 3, whole image; 3D: unet features 4 depth 3, sliding window 64³ step 0.5 "
        "Gaussian, window batch 4; no TTA, no overlays; masks uint8 PNG / NIfTI (.nii.gz)",
        f"MONAI: {'installed' if peer else 'not installed, its rows skipped'}",
    ]
    write_benchmark_report("predict-scale", "medseg predict at scale: processes and workers (CPU)", table,
                           notes, out=args.out)


if __name__ == "__main__":
    main()
