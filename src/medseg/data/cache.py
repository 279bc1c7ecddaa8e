"""The preprocessed cache: one ``.npy`` per case image and label, plus ``manifest.json``.

Files under the cache root, per case: ``{case_id}_image.npy`` (float32 or float16 ``[C, *spatial]``),
``{case_id}_label.npy`` (uint8, else int16 / int32 ``[1 or R, *spatial]``) and ``{case_id}_locations.npz``
(per foreground class a sample of up to 10,000 voxel coordinates for foreground oversampling, as nnU-Net
stores them; kept beside the arrays rather than in the manifest so the manifest stays small).

``manifest.json`` records per case its source files (path, size, ``mtime_ns``, optionally a SHA-256 of the
content), the fingerprint of the preprocessing, the shapes, spacings, crop box and present classes; the
preprocessor's full dict is stored once at the top. :meth:`PreprocessedCache.prepare` rebuilds a case only
when a source changed or the configuration did, so a second pass over a data set costs one ``stat`` per
file. Every file is written atomically; arrays are read back memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medseg.data.cases import CaseLike, Reader, read_case
from medseg.data.geometry import DataError, Geometry
from medseg.data.io import read_image, read_mask
from medseg.data.preprocess import PreprocessedCase, Preprocessor, compact_label_dtype
from medseg.data.sampling import LOCATIONS_PER_CLASS, class_locations
from medseg.errors import MedsegError
from medseg.fileio import atomic_path, write_text_atomically

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
IMAGE_DTYPES = ("float32", "float16")
MANIFEST_FLUSH_SECONDS = 30.0
"""While preparing, the manifest is rewritten at most this often (and at the end), so an interrupted run
keeps the cases it finished."""

def file_record(path: Path, content_hash: bool = False) -> dict[str, Any]:
    """What identifies a source file's version: its path, size and ``mtime_ns`` (and SHA-256)."""
    try:
        stat = path.stat()
    except OSError as error:
        raise DataError(path, f"cannot read the file ({error.strerror or error})") from None
    record: dict[str, Any] = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if content_hash:
        record["sha256"] = file_sha256(path)
    return record


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_paths(case: CaseLike) -> list[Path]:
    """A case's source files: its image channels, then its label."""
    return [Path(p) for p in case.images] + ([Path(case.label)] if case.label is not None else [])


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _geometry_record(geometry: Geometry) -> dict[str, list[float]]:
    return {"spacing": list(geometry.spacing), "origin": list(geometry.origin),
            "direction": list(geometry.direction)}


def build_case(root: Path, case: CaseLike, preprocessor: Preprocessor, readers: tuple[Reader, Reader],
               image_dtype: str, sources: list[dict[str, Any]], config: str, seed: int) -> dict[str, Any]:
    """Read, preprocess and write one case; returns its manifest entry."""
    image, label, geometry = read_case(case, *readers)
    result: PreprocessedCase = preprocessor(image, label, geometry)
    cid = case.case_id
    entry: dict[str, Any] = {
        "sources": sources, "config": config, "image": f"{cid}_image.npy", "label": None, "locations": None,
        "image_shape": list(result.image.shape), "label_shape": None, "classes": [],
        "spacing": list(result.geometry.spacing), "crop_box": [list(b) for b in result.crop_box],
        "resampled_shape": list(result.resampled_shape), "original_shape": list(result.original_shape),
        "original_geometry": _geometry_record(result.original_geometry),
    }
    save_array(root / entry["image"], result.image.astype(image_dtype))
    if result.label is not None:
        values = np.unique(result.label).tolist()
        label_out = result.label.astype(compact_label_dtype(values))
        rng = np.random.default_rng([seed, zlib.crc32(cid.encode())])
        locations = class_locations(label_out, LOCATIONS_PER_CLASS, rng)
        entry.update(label=f"{cid}_label.npy", locations=f"{cid}_locations.npz",
                     label_shape=list(label_out.shape), classes=sorted(locations), label_values=values)
        save_array(root / entry["label"], label_out)
        with atomic_path(root / entry["locations"]) as tmp, tmp.open("wb") as handle:
            np.savez(handle, **{str(key): coords for key, coords in locations.items()})
    return entry


def _single_threaded_worker() -> None:
    """Pool-process set-up: one torch thread (parallelism is across processes; as in DataLoader workers,
    this also keeps OpenMP from misbehaving after a fork)."""
    import torch

    torch.set_num_threads(1)


def _build_case_job(args: tuple) -> tuple[str, dict[str, Any]]:
    case = args[1]
    return case.case_id, build_case(*args)


class PreprocessedCache:
    """Preprocessed cases on disk, rebuilt only when a source file or the configuration changes.

    Args:
        root: the cache folder (created when needed).
        preprocessor: the preprocessing applied to every case.
        reader: ``path -> (array [C, *spatial], Geometry)``; :func:`medseg.data.io.read_image` by default.
        mask_reader: the same for labels; :func:`medseg.data.io.read_mask` by default, ``reader`` when only
            that is given.
        image_dtype: ``float32`` or ``float16`` (half the disk and page cache; the loader returns float32).
        content_hash: also record each source's SHA-256; a file whose size or mtime changed but whose
            content did not (a copy, a ``touch``) is then not rebuilt.
        seed: seed of the class-location sampling.
    """

    def __init__(self, root: str | Path, preprocessor: Preprocessor, reader: Reader | None = None,
                 mask_reader: Reader | None = None, *, image_dtype: str = "float32",
                 content_hash: bool = False, seed: int = 0) -> None:
        if image_dtype not in IMAGE_DTYPES:
            raise MedsegError(f"cache image dtype {image_dtype!r}: expected one of {', '.join(IMAGE_DTYPES)}")
        self.root = Path(root)
        self.preprocessor = preprocessor
        if reader is None:
            reader, mask_reader = read_image, mask_reader or read_mask
        self.readers = (reader, mask_reader or reader)
        self.image_dtype = image_dtype
        self.content_hash = content_hash
        self.seed = seed
        self.config = hashlib.sha256(json.dumps(
            [preprocessor.to_dict(), image_dtype, seed, LOCATIONS_PER_CLASS], sort_keys=True).encode()
        ).hexdigest()[:16]
        self.cases: dict[str, dict[str, Any]] = self._read_manifest()
        self._locations: dict[str, dict[int, np.ndarray]] = {}
        self._dirty = False

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def case_ids(self) -> list[str]:
        """The ids of the cases in the cache (built with any configuration)."""
        return sorted(self.cases)

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        if not self.manifest_path.is_file():
            return {}
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            return dict(data["cases"]) if data.get("version") == MANIFEST_VERSION else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            logger.warning("%s: unreadable cache manifest, rebuilding the cache", self.manifest_path)
            return {}

    def _write_manifest(self) -> None:
        data = {"version": MANIFEST_VERSION, "preprocessor": self.preprocessor.to_dict(),
                "image_dtype": self.image_dtype, "config": self.config, "cases": self.cases}
        write_text_atomically(self.manifest_path, json.dumps(data, indent=1, sort_keys=True))

    # ----------------------------------------------------------------------- freshness

    def _is_current(self, case: CaseLike) -> bool:
        """Whether the cached case came from these source versions and this configuration."""
        entry = self.cases.get(case.case_id)
        if entry is None or entry.get("config") != self.config:
            return False
        paths = source_paths(case)
        old = entry["sources"]
        if [r["path"] for r in old] != [str(p) for p in paths]:
            return False
        outputs = [entry[key] for key in ("image", "label", "locations") if entry[key]]
        if not all((self.root / name).is_file() for name in outputs):
            return False
        for record, path in zip(old, paths, strict=True):
            new = file_record(path)
            if (new["size"], new["mtime_ns"]) == (record["size"], record["mtime_ns"]):
                continue
            if not self.content_hash or record.get("sha256") != file_sha256(path):
                return False
            record.update(size=new["size"], mtime_ns=new["mtime_ns"])  # same content, new stat
            self._dirty = True
        return True

    def stale(self, cases: Iterable[CaseLike]) -> list[CaseLike]:
        """The cases that :meth:`prepare` would (re)build."""
        return [case for case in cases if not self._is_current(case)]

    # ----------------------------------------------------------------------- building

    def prepare(self, cases: Sequence[CaseLike], progress: bool = True, num_workers: int = 0) -> list[str]:
        """Bring the cache up to date for ``cases``; returns the ids of the cases (re)built.

        ``num_workers`` > 0 builds in that many processes (the readers must then be picklable).
        """
        ids = [case.case_id for case in cases]
        if len(set(ids)) != len(ids):
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            raise MedsegError(f"cache: duplicate case ids {', '.join(repeated)}")
        todo = self.stale(cases)
        logger.info("cache %s: %d of %d cases up to date", self.root, len(cases) - len(todo), len(cases))
        if not todo:
            if self._dirty:
                self._write_manifest()
                self._dirty = False
            return []
        self.root.mkdir(parents=True, exist_ok=True)
        jobs = [(self.root, case, self.preprocessor, self.readers, self.image_dtype,
                 [file_record(p, self.content_hash) for p in source_paths(case)], self.config, self.seed)
                for case in todo]
        built: list[str] = []
        last_flush = time.monotonic()
        bar = tqdm(total=len(jobs), desc="preprocessing", unit="case", disable=not progress)
        try:
            for case_id, entry in self._run(jobs, num_workers):
                self.cases[case_id] = entry
                self._locations.pop(case_id, None)
                built.append(case_id)
                bar.update()
                if time.monotonic() - last_flush > MANIFEST_FLUSH_SECONDS:
                    self._write_manifest()
                    last_flush = time.monotonic()
        finally:
            bar.close()
            self._write_manifest()
            self._dirty = False
        return built

    @staticmethod
    def _run(jobs: list[tuple], num_workers: int) -> Iterable[tuple[str, dict[str, Any]]]:
        if num_workers <= 0 or len(jobs) < 2:
            return map(_build_case_job, jobs)
        pool = ProcessPoolExecutor(max_workers=num_workers, initializer=_single_threaded_worker)
        results = pool.map(_build_case_job, jobs, chunksize=max(1, len(jobs) // (8 * num_workers)))

        def drain() -> Iterable[tuple[str, dict[str, Any]]]:
            with pool:
                yield from results
        return drain()

    # ----------------------------------------------------------------------- reading

    def info(self, case_id: str) -> dict[str, Any]:
        """The manifest entry of a case (shapes, spacing, crop box, classes, sources)."""
        try:
            return self.cases[case_id]
        except KeyError:
            raise MedsegError(f"cache {self.root}: no case {case_id!r} (run prepare first)") from None

    def load(self, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The cached ``(image, label)`` of a case (``label`` is ``None`` for unlabelled cases);
        read-only memory maps unless ``mmap`` is false."""
        entry = self.info(case_id)
        mode = "r" if mmap else None
        image = np.load(self.root / entry["image"], mmap_mode=mode)
        label = np.load(self.root / entry["label"], mmap_mode=mode) if entry["label"] else None
        return image, label

    def locations(self, case_id: str) -> dict[int, np.ndarray]:
        """Per foreground class, the stored sample of voxel coordinates ``[k, D]`` (kept in memory)."""
        if case_id not in self._locations:
            entry = self.info(case_id)
            if not entry["locations"]:
                self._locations[case_id] = {}
            else:
                with np.load(self.root / entry["locations"]) as data:
                    self._locations[case_id] = {int(key): data[key] for key in data.files}
        return self._locations[case_id]

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for data-loader workers without the readers (which may be lambdas) and loaded arrays."""
        return {**self.__dict__, "readers": None, "_locations": {}}
