"""``medseg evaluate --instance``: instance label maps against instance ground truth (AP, DSB score, AJI,
PQ, object Dice; :mod:`medseg.metrics.instance`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medseg.data.geometry import DataError
from medseg.data.io import read_mask
from medseg.engine.evaluate import Summary, _check_folder, matched_cases, metrics_csv, parallel_map
from medseg.engine.pairing import CasePair, _fit_shape, read_truth
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically
from medseg.metrics.aggregate import Row, summarize

logger = logging.getLogger(__name__)


def evaluate_instance_folders(pred_dir: str | Path, gt_dir: str | Path, out_dir: str | Path | None = None,
                              progress: bool = True, max_detections: int | None = None) -> Summary:
    """Evaluate instance label maps of ``pred_dir`` against ``gt_dir``: ``metrics.csv`` and ``summary.json``.

    Cases are paired as by :func:`evaluate_folders` (:func:`match_cases`). Predictions and truths are
    instance label maps (0 background, one id per object; 16-bit PNG/TIFF, NIfTI or any lossless format
    read by :func:`medseg.data.io.read_mask`; JPEG cannot hold ids and is refused). Scores for AP come
    from an optional sidecar ``{case}_instances.json`` beside the prediction,
    ``{"scores": {"<id>": <score>, ...}}`` naming every predicted id; without one every predicted
    instance scores 1 (ids of the sidecar that the map lacks are ignored). ``read_mask`` turns a 2D map of
    exactly {0, 255} into {0, 1}: a one-object map with id 255 then has id 1. Metrics and conventions:
    :mod:`medseg.metrics.instance`.

    ``metrics.csv`` holds ``case,class,metric,value`` rows (class 1: one category) of
    :data:`~medseg.metrics.instance.CASE_METRICS`; ``summary.json`` their statistics over cases
    (:func:`~medseg.metrics.aggregate.summarize`) and ``ap``: COCO AP, AP50, AP75 and AP per threshold
    computed once over the detections of all cases (not a mean of per-image APs). Unreadable cases, bad
    sidecars and size mismatches are left out and listed in ``problems``.
    """
    from medseg.metrics.instance import CASE_METRICS, InstanceEvaluation

    pred_dir = _check_folder(Path(pred_dir), "prediction")
    gt_dir = _check_folder(Path(gt_dir), "ground-truth")
    if max_detections is not None and max_detections < 1:
        raise MedsegError(f"max_detections must be positive, got {max_detections}")
    matching = matched_cases(pred_dir, gt_dir)
    problems = dict(matching.problems)
    evaluation = InstanceEvaluation(max_detections=max_detections)

    def evaluate_pair(pair: CasePair) -> None:
        try:
            truth, _ = read_truth(pair.truth)
            labels, geometry = read_mask(pair.prediction)
            if geometry.source_format == "jpeg":
                raise DataError(pair.prediction, "JPEG is lossy and cannot hold instance ids")
            prediction = _fit_shape(pair.prediction, labels[0], truth.shape)
            sidecar = pair.prediction.parent / f"{pair.case_id}_instances.json"
            scores = None
            if sidecar.is_file():
                try:
                    content = json.loads(sidecar.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise DataError(sidecar, f"not readable as JSON ({exc})") from None
                expected = 'expected {"scores": {"<instance id>": <score>, ...}}'
                if not isinstance(content, dict) or not isinstance(content.get("scores"), dict):
                    raise DataError(sidecar, expected)
                try:
                    scores = {int(key): float(value) for key, value in content["scores"].items()}
                except (TypeError, ValueError):
                    raise DataError(sidecar, f"{expected} with integer ids and numbers") from None
                if not np.all(np.isfinite(list(scores.values()))):
                    raise DataError(sidecar, "scores must be finite numbers")
                lacking = [int(i) for i in np.unique(prediction) if i > 0 and int(i) not in scores]
                if lacking:
                    shown = ", ".join(map(str, lacking[:5])) + (" ..." if len(lacking) > 5 else "")
                    raise DataError(sidecar, f"no score for predicted instance(s) {shown}")
            try:
                evaluation.add(pair.case_id, prediction, truth, scores)
            except MedsegError as error:  # the maps themselves (e.g. negative ids)
                raise DataError(pair.prediction, str(error)) from None
        except DataError as error:
            problems[pair.case_id] = f"{error.path.name}: {error.problem}"

    parallel_map(evaluate_pair, matching.pairs, workers=1, progress=progress, description="evaluate")
    problems = dict(sorted(problems.items()))
    if not evaluation.cases:
        first, problem = next(iter(problems.items()))
        raise MedsegError(f"no case could be evaluated ({len(problems)} with problems), e.g. {first}: "
                          f"{problem}")
    for identifier, problem in problems.items():
        logger.warning("%s: %s (case left out)", identifier, problem)
    rows: list[Row] = [(case, 1, name, values[name]) for case, values in evaluation.cases.items()
                       for name in CASE_METRICS]
    data = summarize(rows, missing=matching.missing, extra=matching.extra, metric_order=CASE_METRICS)
    data.update(ap=evaluation.average_precision(), classes=[1], problems=problems, mode="instance",
                prediction_folder=str(pred_dir), ground_truth_folder=str(gt_dir),
                max_detections=max_detections)
    summary = Summary(data, rows, {})
    out = Path(out_dir) if out_dir is not None else pred_dir / "evaluation"
    files = {name: out / name for name in ("metrics.csv", "summary.json")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(files["metrics.csv"], metrics_csv(rows))
        write_text_atomically(files["summary.json"], json.dumps(summary.to_json(), indent=1) + "\n")
    except OSError as exc:
        raise MedsegError(f"cannot write into {out}: {exc.strerror}") from None
    summary.files = files
    return summary
