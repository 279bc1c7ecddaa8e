"""The stage-1 predictions of a cascade's training and validation cases, made once and kept on disk.

Stage 1 (``data.cascade_from``) predicts each case of the stage-2 run as ``medseg predict`` would (its
scores mapped back to the source grid; :func:`medseg.engine.predict.predict_labels`) into
``<cache>/stage1/{case}.nii.gz`` (label maps with the source geometry; 2D cases as PNG), next to the
preprocessed cache. ``stage1.json`` records the stage-1 checkpoint's version (path, size, ``mtime_ns``)
and each case's source files, so a case is predicted again only when either changed. The stage-1 map then
becomes one more channel file of its case, read one-hot by :class:`medseg.engine.cascade.CoarseReader`,
so the preprocessed cache rebuilds a case whenever its coarse map changes. These are plain predictions of
one stage-1 model, not cross-validated ones (see :mod:`medseg.engine.cascade`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from medseg.data.cache import file_record, source_paths
from medseg.data.cases import read_case
from medseg.data.datasets import Case
from medseg.data.io import image_extension, lossless_mask_path, write_image, write_mask
from medseg.engine.cascade import (
    KEY,
    CascadeError,
    CoarseReader,
    check_stage1,
    coarse_channel_count,
    resolve_stage1,
    stage1_record,
)
from medseg.engine.checkpoint import CheckpointError, load_checkpoint
from medseg.engine.predict import PredictSettings, loaded_model, predict_labels
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically

logger = logging.getLogger(__name__)

__all__ = ["STAGE1_FOLDER", "CoarseCases", "coarse_path", "prepare_coarse_cases"]

STAGE1_FOLDER = "stage1"
MANIFEST_NAME = "stage1.json"
MANIFEST_VERSION = 1


@dataclass
class CoarseCases:
    """A stage-2 run's view of its cases: each with its stage-1 map as the last channel file, the reader
    that reads that file one-hot, the stage-1 record to embed in checkpoints and the coarse channels."""

    cases: list[Case]
    reader: CoarseReader
    record: dict[str, Any]
    coarse_channels: int
    num_classes: int
    source: Path


def coarse_path(folder: Path, case: Case) -> Path:
    """Where the stage-1 map of ``case`` is kept: ``folder/{case}`` with the source's (lossless) extension."""
    return lossless_mask_path(folder / f"{case.case_id}{image_extension(case.images[0]) or '.nii.gz'}")


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if data.get("version") == MANIFEST_VERSION else {}
    except (OSError, ValueError, AttributeError):
        return {}


def prepare_coarse_cases(cascade_from: str | Path, cases: Sequence[Case], folder: str | Path, *,
                         label_mode: str, image_channels: int, spatial_dims: int,
                         class_names: list[str] | None, device: torch.device, progress: bool = True,
                         predict: bool = True, num_classes: int | None = None) -> CoarseCases:
    """Check the stage-1 checkpoint against the run (``num_classes``: the run's, when known before its
    cache is built), predict the cases whose map is missing or stale into ``folder`` (when ``predict``: the
    main rank; the others only read) and return the stage-2 cases."""
    source = resolve_stage1(cascade_from)
    try:
        ckpt = load_checkpoint(source)
    except CheckpointError as exc:
        raise CascadeError(f"{KEY}: {exc}") from None
    check_stage1(ckpt, source, label_mode=label_mode, image_channels=image_channels,
                 spatial_dims=spatial_dims, class_names=class_names, num_classes=num_classes)
    record = stage1_record(ckpt)
    num_classes = int(ckpt["model"]["num_classes"])
    folder = Path(folder)
    if predict:
        _predict_stale(source, ckpt, cases, folder, device, progress)
    staged = [replace(case, images=[*case.images, coarse_path(folder, case)]) for case in cases]
    return CoarseCases(cases=staged, reader=CoarseReader(folder, label_mode, num_classes), record=record,
                       coarse_channels=coarse_channel_count(label_mode, num_classes), num_classes=num_classes,
                       source=source)


def _predict_stale(source: Path, ckpt: dict[str, Any], cases: Sequence[Case], folder: Path,
                   device: torch.device, progress: bool) -> None:
    manifest_path = folder / MANIFEST_NAME
    manifest = _read_manifest(manifest_path)
    checkpoint = file_record(source.resolve())
    known: dict[str, Any] = manifest.get("cases", {}) if manifest.get("checkpoint") == checkpoint else {}
    records = {case.case_id: [file_record(p) for p in source_paths(replace(case, label=None))]
               for case in cases}
    stale = [case for case in cases
             if known.get(case.case_id) != records[case.case_id] or not coarse_path(folder, case).is_file()]
    logger.info("%s: %d of %d stage-1 predictions up to date in %s", KEY, len(cases) - len(stale), len(cases),
                folder)
    if not stale:
        return
    folder.mkdir(parents=True, exist_ok=True)
    stage1 = loaded_model(source, ckpt, device)
    settings = PredictSettings.from_record(stage1.inference)
    settings.save_probabilities = settings.overlays = False
    entries = {cid: rec for cid, rec in known.items() if cid in records}
    try:
        for case in tqdm(stale, desc="stage-1 predictions", unit="case", disable=not progress):
            image, _, geometry = read_case(case, with_label=False)
            if image.shape[0] != stage1.in_channels:
                raise MedsegError(f"{KEY}: {case.images[0]} has {image.shape[0]} channels, stage 1 takes "
                                  f"{stage1.in_channels}")
            with torch.inference_mode():
                labels, _ = predict_labels([stage1], image, geometry, settings, device)
            path = coarse_path(folder, case)
            (write_mask if labels.shape[0] == 1 else write_image)(path, labels, geometry)
            entries[case.case_id] = records[case.case_id]
    finally:
        manifest = {"version": MANIFEST_VERSION, "checkpoint": checkpoint, "cases": entries}
        write_text_atomically(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
