"""Loader + batched augmentation throughput against a U-Net-32's training consumption (data issue).

For 2D (Kvasir-SEG at native size, 256x256 RGB patches, batch 8) and 3D (synthetic lesion volumes,
96^3 patches, batch 2) this measures, in one run on one machine:

- the cache build time of the data set (first ``prepare``) and of a second ``prepare`` (stat calls only);
- loader samples/s (cached ``.npy`` via mmap, patch sampling with foreground oversampling);
- loader + default augmentation samples/s (on the CPU here, the training device);
- the samples/s a U-Net with base width 32 consumes in training (forward, backward, SGD step);

and writes a Markdown table with the ratio (loader + augmentation) / (U-Net consumption).

    .venv/bin/python benchmarks/data_throughput.py [--data ../shared/data/kvasir-seg] [--work DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from medseg import create_model
from medseg.data.augment import BatchAugmenter
from medseg.data.cache import PreprocessedCache
from medseg.data.datasets import load_dataset
from medseg.data.loader import build_train_loader
from medseg.data.preprocess import Preprocessor
from medseg.data.synthetic import write_lesion_dataset, write_polyp_dataset
from medseg.engine.benchmark import markdown_table, write_benchmark_report

ROOT = Path(__file__).resolve().parents[1]


def samples_per_second(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n_samples: int,
                       augment: Callable | None = None) -> float:
    """Samples/s over ``n_samples`` samples after one untimed batch."""
    iterator = iter(batches)
    next(iterator)
    count, start = 0, time.perf_counter()
    for image, label in iterator:
        if augment is not None:
            image, label = augment(image, label)
        count += image.shape[0]
        if count >= n_samples:
            break
    return count / (time.perf_counter() - start)


def unet_consumption(spatial_dims: int, in_channels: int, batch: int, size: int, steps: int) -> float:
    """Training samples/s of a U-Net with base width 32 (median of ``steps`` steps after one warm-up)."""
    torch.manual_seed(0)
    model = create_model("unet", in_channels=in_channels, num_classes=2, spatial_dims=spatial_dims,
                         features=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    x = torch.randn(batch, in_channels, *[size] * spatial_dims)
    y = torch.randint(0, 2, (batch, *x.shape[2:]))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[1:])


def timed_prepare(cache_dir: Path, preprocessor: Preprocessor, cases: list, **options) -> tuple[
        PreprocessedCache, float, float]:
    """The cache, the first ``prepare`` time and the second ``prepare`` time (a fresh cache object)."""
    start = time.perf_counter()
    cache = PreprocessedCache(cache_dir, preprocessor, **options)
    cache.prepare(cases, progress=False, num_workers=2)
    first = time.perf_counter() - start
    start = time.perf_counter()
    PreprocessedCache(cache_dir, preprocessor, **options).prepare(cases, progress=False)
    return cache, first, time.perf_counter() - start


def run_2d(data: Path, work: Path) -> list[str]:
    if not data.exists():
        data = write_polyp_dataset(work / "polyps", n_cases=64, size=(384, 384), seed=0)
    dataset = load_dataset(data)
    cache, first, second = timed_prepare(work / "cache-2d", Preprocessor(normalization="rgb"), dataset.cases,
                                         image_dtype="float16")
    loader = build_train_loader(cache, cache.case_ids, (256, 256), batch_size=8, seed=0, num_workers=0,
                                batches_per_epoch=100)
    plain = samples_per_second(loader, 400)
    augmented = samples_per_second(loader, 160, BatchAugmenter(spatial_dims=2, seed=0))
    model = unet_consumption(2, 3, 8, 256, steps=3)
    return [f"2D {data.name} ({len(dataset.cases)} cases), 3x256x256, batch 8", f"{first:.1f}",
            f"{second:.2f}", f"{plain:.1f}", f"{augmented:.1f}", f"{model:.2f}", f"{augmented / model:.1f}x"]


def run_3d(work: Path) -> list[str]:
    root = write_lesion_dataset(work / "lesions", n_cases=6, shape=(112, 128, 128), seed=0)
    dataset = load_dataset(root)
    preprocessor = Preprocessor(normalization="zscore")
    cache, first, second = timed_prepare(work / "cache-3d", preprocessor, dataset.cases)
    loader = build_train_loader(cache, cache.case_ids, (96, 96, 96), batch_size=2, seed=0, num_workers=0,
                                batches_per_epoch=40)
    plain = samples_per_second(loader, 40)
    augmented = samples_per_second(loader, 12, BatchAugmenter(spatial_dims=3, seed=0))
    model = unet_consumption(3, 1, 2, 96, steps=2)
    return [f"3D synthetic lesions ({len(dataset.cases)} cases), 1x96^3, batch 2", f"{first:.1f}",
            f"{second:.2f}", f"{plain:.1f}", f"{augmented:.1f}", f"{model:.3f}", f"{augmented / model:.0f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kvasir-seg",
                        help="2D paired data set (default: Kvasir-SEG; synthetic polyps when absent)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for caches (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = [run_2d(args.data, work), run_3d(work)]
    headers = ["case", "first prepare (s)", "second prepare (s)", "loader (samples/s)",
               "loader + augmentation (samples/s)", "U-Net-32 training (samples/s)", "ratio"]
    table = markdown_table(headers, rows, [False, *[True] * 6])
    notes = ["loader: cached .npy (mmap), patch sampling with 1/3 foreground oversampling, 0 workers; "
             "augmentation: nnU-Net default config, batched on the CPU (the training device here)",
             "command: `.venv/bin/python benchmarks/data_throughput.py`"]
    title = "Data loader throughput vs U-Net-32 training consumption"
    write_benchmark_report("data-throughput", title, table, notes, out=args.out,
                           results_dir=ROOT / "benchmarks" / "results")


if __name__ == "__main__":
    main()
