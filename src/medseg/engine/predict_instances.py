"""``medseg predict`` with an instance checkpoint (Mask R-CNN): a 16-bit instance label map per image.

Called by :func:`medseg.engine.predict.predict_paths` when the checkpoint's label mode is ``instance``.
Per case: read the image (channel files concatenated), preprocess it with the checkpoint's
:class:`~medseg.data.Preprocessor`, run the model on the whole image (eval mode: boxes, labels, scores,
masks), paint the masks into a label map (ids ``1..N`` in detection order, the best score on top where
masks overlap; :func:`instance_label_map`), map it back to the source grid by
nearest neighbour (:meth:`Preprocessor.revert`) and write it as a 16-bit map (uint16; int32 TIFF/NIfTI
past 65,535 objects) under the same case id and extension rules as semantic predictions (JPEG inputs get
PNG outputs). Detections painted over entirely by better ones leave no id in the map.

With ``instances_json`` a sidecar ``{case}_instances.json`` holds, for every id in the map, its score, class
label and box ``[x1, y1, x2, y2]`` (source pixels, the upper corner one past the last pixel; 3D not
supported by Mask R-CNN): ``{"scores": {id: score}, "labels": {id: label}, "boxes": {id: box}}``, the format
``medseg evaluate --instance`` reads the scores from (for AP). Every file is written atomically; when a
case fails, its files already written are removed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from medseg.data.cases import read_case
from medseg.data.datasets import Case
from medseg.data.geometry import DataError
from medseg.data.instances import label_map_from_masks
from medseg.data.io import image_extension, lossless_mask_path, write_mask
from medseg.data.preprocess import Preprocessor
from medseg.engine.watershed import instance_dtype
from medseg.errors import MedsegError
from medseg.fileio import remove_stale_temporaries_of, write_bytes_atomically, write_text_atomically

logger = logging.getLogger(__name__)

__all__ = ["INSTANCES_SUFFIX", "instance_boxes", "instance_label_map", "instance_outputs",
           "predict_instance_case", "predict_instance_cases"]

INSTANCES_SUFFIX = "_instances.json"


def instance_label_map(detection: dict[str, torch.Tensor]) -> tuple[np.ndarray, dict[int, float]]:
    """An instance label map (ids ``1..N`` in detection order, the best score painted last) and the score
    of each id from one image's detections ``{"masks" [N, H, W], "scores" [N], ...}``."""
    scores = detection["scores"].detach().float().cpu().numpy()
    masks = detection["masks"].detach().cpu().numpy()
    ids = label_map_from_masks(masks, scores)
    return ids, {i + 1: float(score) for i, score in enumerate(scores)}


def instance_boxes(label_map: np.ndarray) -> dict[int, list[int]]:
    """The box ``[x1, y1, x2, y2]`` (2D; 3D ``[x1, y1, z1, x2, y2, z2]``) of every id of a label map, ``x``
    the last axis, the upper corner one past the last pixel."""
    boxes = {}
    for index, box in enumerate(ndimage.find_objects(label_map), start=1):
        if box is not None:
            lower = [int(s.start) for s in reversed(box)]
            upper = [int(s.stop) for s in reversed(box)]
            boxes[index] = lower + upper
    return boxes


def _sidecar(label_map: np.ndarray, scores: dict[int, float], labels: dict[int, int]) -> str:
    boxes = instance_boxes(label_map)
    ids = sorted(boxes)
    content: dict[str, Any] = {"scores": {str(i): scores[i] for i in ids},
                               "labels": {str(i): labels[i] for i in ids},
                               "boxes": {str(i): boxes[i] for i in ids}}
    return json.dumps(content, indent=1) + "\n"


@torch.inference_mode()
def predict_instance_case(model: torch.nn.Module, case: Case, preprocessing: dict[str, Any], in_channels: int,
                          mask_path: Path, json_path: Path | None, overlay_path: Path | None,
                          device: torch.device) -> Path:
    """Predict one case with an instance model and write its label map (and sidecar / overlay)."""
    written: list[Path] = []
    try:
        image, _, geometry = read_case(case, with_label=False)
        if image.shape[0] != in_channels:
            raise DataError(case.images[0], f"{image.shape[0]} channels, the model takes {in_channels}")
        if geometry.spatial_dims != 2:
            raise DataError(case.images[0], f"{geometry.spatial_dims}D image, the instance model is 2D")
        preprocessor = Preprocessor.from_dict(preprocessing)
        prepared = preprocessor(image, None, geometry)
        detection = model([torch.from_numpy(np.ascontiguousarray(prepared.image)).to(device)])[0]
        ids, scores = instance_label_map(detection)
        classes = {i + 1: int(c) for i, c in enumerate(detection["labels"].cpu().tolist())}
        reverted = preprocessor.revert(ids[None], prepared, order=0, fill=0)[0]
        label_map = reverted.astype(instance_dtype(int(reverted.max(initial=0))))
        for path in (mask_path, json_path, overlay_path):
            if path is not None:
                remove_stale_temporaries_of(path)
        written.append(mask_path)
        write_mask(mask_path, label_map[None], geometry.with_shape(tuple(image.shape[1:])))
        if json_path is not None:
            written.append(json_path)
            write_text_atomically(json_path, _sidecar(label_map, scores, classes))
        if overlay_path is not None:
            from medseg.engine.display import overlay_png

            written.append(overlay_path)
            overlay_path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(overlay_path, overlay_png(image, label_map))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return mask_path


def instance_outputs(case: Case, folder: Path, single_file: Path | None, instances_json: bool,
                     overlays: bool) -> tuple[Path, Path | None, Path | None]:
    """Where a case's label map, sidecar and overlay go (``None``: not written)."""
    extension = image_extension(case.images[0]) or ".nii.gz"
    mask = single_file or lossless_mask_path(folder / f"{case.case_id}{extension}")
    json_path = mask.parent / f"{case.case_id}{INSTANCES_SUFFIX}" if instances_json else None
    overlay = mask.parent / "overlays" / f"{case.case_id}.png" if overlays else None
    return mask, json_path, overlay


def predict_instance_cases(models: Sequence[Any], cases: Sequence[Case], folder: Path,
                           single_file: Path | None, *, instances_json: bool, overlays: bool,
                           device: torch.device, progress: bool,
                           done: Callable[[], None] = lambda: None) -> list[Path]:
    """Predict every case with the instance checkpoint ``models[0]`` (a :class:`LoadedModel`; ensembles
    are refused) into ``folder`` (or ``single_file`` for one input file); returns the label maps.
    ``done`` is called after each case."""
    if len(models) != 1:
        raise MedsegError(f"predict: instance checkpoints cannot be ensembled ({len(models)} given; pass "
                          "one)")
    loaded = models[0]
    written = []
    bar = tqdm(cases, desc="predict", unit="case", disable=not progress or len(cases) < 2)
    for case in bar:
        mask, json_path, overlay = instance_outputs(case, folder, single_file, instances_json, overlays)
        written.append(predict_instance_case(loaded.model, case, loaded.preprocessing, loaded.in_channels,
                                             mask, json_path, overlay, device))
        done()
    logger.info("predicted %d cases into %s", len(written), folder)
    return written
