"""The data set fingerprint of ``medseg plan`` (nnU-Net's ``DatasetFingerprintExtractor``, Isensee et al.,
Nature Methods 2021): per case the spacing, shape, channel count, intensity range, the foreground intensity
statistics (mean, std, percentiles 0.5 / 99.5 of the image values under the mask, per channel) and the
voxel count of every label value; for the data set a modality guess (CT, MR, photo) and the aggregates.

Cases are read with :func:`medseg.data.cases.read_case` (as training reads them) in a process pool
(:func:`medseg.data.check.process_pool`) with a progress bar. The result is cached as JSON keyed by each
source file's path, size and ``mtime_ns`` (:func:`medseg.data.cache.file_record`, the preprocessed cache's
rule), written atomically; a second run reads only the cases whose files changed.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medseg.data.cache import file_record, source_paths
from medseg.data.cases import read_case
from medseg.data.check import process_pool
from medseg.data.datasets import Case, Dataset, load_dataset
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
PERCENTILES = (0.5, 99.5)
"""Percentiles of the foreground intensities (nnU-Net's CT clipping bounds)."""
CT_MINIMUM = -500.0
"""A single-channel volume whose median case minimum is at or below this is CT (air is -1000 HU; MR and
other scanners' units are not negative)."""
MODALITIES = ("CT", "MR", "photo", "other")


@dataclass
class CaseFingerprint:
    """What the plan needs of one case (lists are per channel; spacing and shape in array order).

    ``foreground_*`` are ``None`` for a case without foreground (label > 0); ``label_counts`` maps each label
    value to its voxel count.
    """

    case_id: str
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    channels: int
    dtype: str
    intensity_min: list[float]
    intensity_max: list[float]
    foreground_voxels: int
    foreground_mean: list[float] | None
    foreground_std: list[float] | None
    foreground_p00_5: list[float] | None
    foreground_p99_5: list[float] | None
    label_counts: dict[int, int] = field(default_factory=dict)

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["label_counts"] = {str(k): v for k, v in self.label_counts.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseFingerprint:
        values = dict(data)
        values["spacing"] = tuple(float(s) for s in values["spacing"])
        values["shape"] = tuple(int(s) for s in values["shape"])
        values["label_counts"] = {int(k): int(v) for k, v in values["label_counts"].items()}
        return cls(**values)


def case_fingerprint(case: Case) -> CaseFingerprint:
    """Read one case (image and label) and compute its fingerprint."""
    image, label, geometry = read_case(case)
    if label is None:
        raise MedsegError(f"case {case.case_id!r}: no label file (the fingerprint needs labelled cases)")
    flat = image.reshape(image.shape[0], -1)
    foreground = (label[0] > 0).ravel()
    values = flat[:, foreground].astype(np.float64)
    stats: list[list[float] | None] = [None, None, None, None]
    if values.shape[1]:
        low, high = np.percentile(values, PERCENTILES, axis=1)
        stats = [values.mean(axis=1).tolist(), values.std(axis=1).tolist(), low.tolist(), high.tolist()]
    labels, counts = np.unique(label, return_counts=True)
    return CaseFingerprint(
        case_id=case.case_id, spacing=tuple(float(s) for s in geometry.spacing),
        shape=tuple(int(s) for s in image.shape[1:]), channels=int(image.shape[0]), dtype=str(image.dtype),
        intensity_min=flat.min(axis=1).astype(float).tolist(),
        intensity_max=flat.max(axis=1).astype(float).tolist(),
        foreground_voxels=int(foreground.sum()), foreground_mean=stats[0], foreground_std=stats[1],
        foreground_p00_5=stats[2], foreground_p99_5=stats[3],
        label_counts={int(v): int(n) for v, n in zip(labels, counts, strict=True)})


@dataclass
class DatasetFingerprint:
    """The fingerprints of a data set's cases and what its metadata declares."""

    root: str
    layout: str
    cases: list[CaseFingerprint]
    channel_names: list[str] | None = None
    class_names: dict[int, str] | None = None

    @property
    def spatial_dims(self) -> int:
        return len(self.cases[0].shape)

    @property
    def channels(self) -> int:
        return self.cases[0].channels

    @property
    def spacings(self) -> np.ndarray:
        """``[N, D]`` spacings."""
        return np.array([c.spacing for c in self.cases], dtype=float)

    @property
    def shapes(self) -> np.ndarray:
        """``[N, D]`` shapes."""
        return np.array([c.shape for c in self.cases], dtype=float)

    @property
    def median_spacing(self) -> np.ndarray:
        return np.median(self.spacings, axis=0)

    @property
    def label_values(self) -> list[int]:
        return sorted({v for c in self.cases for v in c.label_counts})

    @property
    def class_fractions(self) -> dict[int, float]:
        """Voxel fraction of each label value over all cases."""
        total = sum(c.voxels for c in self.cases)
        counts: dict[int, int] = {}
        for case in self.cases:
            for value, count in case.label_counts.items():
                counts[value] = counts.get(value, 0) + count
        return {value: counts[value] / total for value in sorted(counts)}

    def foreground_intensity(self) -> dict[str, list[float]] | None:
        """Per channel the pooled foreground mean and std (exact, from the cases' counts, means and stds)
        and the median over cases of their 0.5 / 99.5 percentiles; None without any foreground."""
        rows = [c for c in self.cases if c.foreground_voxels]
        if not rows:
            return None
        n = np.array([c.foreground_voxels for c in rows], dtype=float)[:, None]
        mean = np.array([c.foreground_mean for c in rows])
        std = np.array([c.foreground_std for c in rows])
        pooled = (n * mean).sum(0) / n.sum()
        variance = (n * (std**2 + mean**2)).sum(0) / n.sum() - pooled**2
        return {"mean": pooled.tolist(), "std": np.sqrt(np.maximum(variance, 0)).tolist(),
                "p00_5": np.median([c.foreground_p00_5 for c in rows], axis=0).tolist(),
                "p99_5": np.median([c.foreground_p99_5 for c in rows], axis=0).tolist()}

    def modality(self) -> str:
        """``CT``, ``MR``, ``photo`` (2D 8-bit images: RGB or grey photographs, micrographs) or ``other``:
        from ``dataset.json``'s channel names when it has them, else from the intensities (CT: the median
        case minimum at or below :data:`CT_MINIMUM` HU)."""
        names = " ".join(self.channel_names or []).lower()
        if "ct" in names.split():
            return "CT"
        if any(word in names for word in ("mr", "t1", "t2", "flair", "adc", "dwi")):
            return "MR"
        if self.spatial_dims == 2 and all(c.dtype == "uint8" for c in self.cases):
            return "photo"
        minimum = float(np.median([min(c.intensity_min) for c in self.cases]))
        if self.channels == 1 and minimum <= CT_MINIMUM:
            return "CT"
        return "MR" if self.spatial_dims == 3 else "other"


# ------------------------------------------------------------------------------------------ the cache


def _records(case: Case) -> list[dict[str, Any]]:
    """The source files' path, size and ``mtime_ns``, taken before a case is read."""
    return [file_record(p) for p in source_paths(case)]


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["cases"]) if data.get("version") == FINGERPRINT_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        logger.warning("%s: unreadable fingerprint cache, reading every case again", path)
        return {}


def dataset_fingerprint(root: str | Path, cache: str | Path | None = None, jobs: int = 0,
                        progress: bool = True, channels_suffix: bool | None = None,
                        dataset: Dataset | None = None) -> DatasetFingerprint:
    """The fingerprint of the data set at ``root`` (any layout :func:`load_dataset` reads).

    Args:
        root: the data set folder or list.
        cache: JSON file of earlier results (read, then rewritten atomically when a case was read); a
            case is read again only when one of its files' path, size or ``mtime_ns`` changed.
        jobs: processes reading cases (0: in this process).
        progress: a progress bar over the cases read.
        channels_suffix: as :func:`load_dataset`'s.
        dataset: the already loaded data set (else loaded from ``root``).
    """
    dataset = dataset or load_dataset(root, channels_suffix=channels_suffix)
    if not dataset.cases:
        raise MedsegError(f"{root}: no labelled cases to fingerprint")
    cache_path = Path(cache) if cache is not None else None
    cached = _read_cache(cache_path) if cache_path is not None else {}
    results: dict[str, CaseFingerprint] = {}
    todo: list[Case] = []
    sources: dict[str, list[dict[str, Any]]] = {}
    for case in dataset.cases:
        entry = cached.get(case.case_id)
        records = _records(case)
        if entry is not None and entry.get("sources") == records:
            results[case.case_id] = CaseFingerprint.from_dict(entry["fingerprint"])
        else:
            todo.append(case)
            sources[case.case_id] = records
    logger.info("fingerprint: %d of %d cases cached", len(dataset.cases) - len(todo), len(dataset.cases))
    entries = {cid: cached[cid] for cid in results}
    bar = tqdm(total=len(todo), desc="fingerprint", unit="case", file=sys.stderr, disable=not progress)
    with bar, process_pool(jobs, len(todo)) as pool:
        outputs = map(case_fingerprint, todo) if pool is None else \
            pool.map(case_fingerprint, todo, chunksize=max(1, len(todo) // 32))
        for case, fingerprint in zip(todo, outputs, strict=True):
            results[case.case_id] = fingerprint
            entries[case.case_id] = {"sources": sources[case.case_id], "fingerprint": fingerprint.to_dict()}
            bar.update()
    if cache_path is not None and (todo or set(cached) != set(entries)):
        text = json.dumps({"version": FINGERPRINT_VERSION, "root": str(dataset.root), "cases": entries},
                          indent=1, sort_keys=True)
        write_text_atomically(cache_path, text)
    cases = [results[case.case_id] for case in dataset.cases]
    _check_consistent(dataset, cases)
    return DatasetFingerprint(root=str(dataset.root), layout=dataset.layout, cases=cases,
                              channel_names=dataset.channel_names, class_names=dataset.class_names)


def _check_consistent(dataset: Dataset, cases: Sequence[CaseFingerprint]) -> None:
    """One spatial dimensionality and channel count for all cases (else a plan cannot fit them)."""
    first = cases[0]
    for case, fingerprint in zip(dataset.cases, cases, strict=True):
        if (len(fingerprint.shape), fingerprint.channels) != (len(first.shape), first.channels):
            raise MedsegError(f"{case.images[0]}: {len(fingerprint.shape)}D with {fingerprint.channels} "
                              f"channels, but {dataset.cases[0].images[0]} is {len(first.shape)}D with "
                              f"{first.channels} (run medseg check)")
