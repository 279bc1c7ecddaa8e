"""Validation during training (``medseg train``): metrics over the validation cases and the best score.

:class:`Validator` predicts each validation case from the preprocessed cache, as a whole image or, when the
run trains on patches (or ``inference.patch_size`` is set), with Gaussian sliding windows, and averages
``train.val_metrics`` over cases and classes (NaN values skipped), reduced across DDP ranks as sums and
counts. Instance models (Mask R-CNN) are validated by :class:`InstanceValidator`: whole validation
images, detections painted into a label map (best score on top), AP / AP50 / AP75 pooled over the cases
and the DSB score, AJI, PQ and object Dice averaged over them (:mod:`medseg.metrics.instance`).
:class:`BestMetric` follows ``train.best_metric`` from epoch to epoch: whether a validation
improved on the best so far, and how many have not (for early stopping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.engine.config import LOWER_IS_BETTER, RunConfig
from medseg.engine.distributed import DistributedContext, all_reduce_sum
from medseg.engine.inference import PaddedPredictor, probabilities_to_labels
from medseg.engine.plan import DataPlan
from medseg.engine.predict_instances import instance_label_map
from medseg.engine.slice_inference import SlicePredictor
from medseg.metrics import evaluate_case
from medseg.metrics.instance import InstanceEvaluation
from medseg.outputs import main_logits

__all__ = ["BestMetric", "InstanceValidator", "Validator"]


def _label_maps(logits: torch.Tensor, label_mode: str, threshold: float) -> list[np.ndarray]:
    """Per evaluated channel a label map: binary/multilabel one 0/1 map per channel, multiclass argmax."""
    scores = logits if label_mode == "multiclass" else torch.sigmoid(logits)  # validation thresholds p
    labels = probabilities_to_labels(scores, label_mode, threshold).cpu().numpy()
    return list(labels) if label_mode == "multilabel" else [labels]


class Validator:
    """Validation metrics over cases, as per-metric sums and counts (NaN skipped) for DDP reduction."""

    def __init__(self, config: RunConfig, plan: DataPlan, device: torch.device, ctx: DistributedContext):
        self.config, self.plan, self.device, self.ctx = config, plan, device, ctx
        self.metrics = list(config.train.val_metrics)
        self.patch = config.inference.patch_size or config.data.patch_size

    def predict(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        if self.plan.slices is not None:  # 2.5D: the volume rebuilt from whole-slice predictions
            predictor = SlicePredictor(PaddedPredictor(model), self.plan.slice_axes, self.plan.slices,
                                       self.config.data.label_mode, self.config.inference.window_batch_size)
            return predictor.volume_logits(image).float()
        if self.patch is None:
            return main_logits(model(image[None]))[0].float()
        from medseg.engine.inference import sliding_window_inference

        inference = self.config.inference
        return sliding_window_inference(model, image, self.patch, self.plan.num_classes, step=inference.step,
                                        sigma_scale=inference.sigma_scale,
                                        window_batch_size=inference.window_batch_size, device=self.device)

    def case_rows(self, model: nn.Module, case_id: str) -> list[tuple[str, float]]:
        image, label = self.plan.cache.load(case_id, mmap=False)
        logits = self.predict(model, torch.from_numpy(np.ascontiguousarray(image)).to(self.device))
        mode = self.config.data.label_mode
        preds = _label_maps(logits, mode, self.config.inference.threshold)
        spacing = self.plan.cache.info(case_id).get("spacing")
        if mode == "multiclass":
            pairs = [(preds[0], label[0], range(1, self.plan.num_classes))]
        else:
            pairs = [(p, g, (1,)) for p, g in zip(preds, label, strict=True)]
        rows = []
        for pred, gt, classes in pairs:
            rows += [(m, v) for _, m, v in evaluate_case(pred, gt, classes=classes, spacing=spacing,
                                                         metrics=self.metrics)]
        return rows

    @torch.inference_mode()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        """Mean of each metric over this rank's share of the cases and classes, reduced across ranks."""
        model.eval()
        ids = self.plan.val_ids[self.ctx.rank::self.ctx.world_size]
        sums = torch.zeros(2 * len(self.metrics), dtype=torch.float64)
        for case_id in ids:
            for metric, value in self.case_rows(model, case_id):
                if not math.isnan(value):
                    k = self.metrics.index(metric)
                    sums[2 * k] += value
                    sums[2 * k + 1] += 1
        if self.ctx.enabled:
            sums = all_reduce_sum(sums.to(self.device), self.ctx).cpu()
        return {f"val_{m}": (sums[2 * k] / sums[2 * k + 1]).item() if sums[2 * k + 1] > 0 else math.nan
                for k, m in enumerate(self.metrics)}


class InstanceValidator:
    """Validation of an instance model on whole validation images: ``val_<metric>`` of the instance
    metrics in ``train.val_metrics``. Under DDP every rank evaluates every case (AP is pooled over the
    set), so all ranks get the same numbers without a reduction."""

    def __init__(self, config: RunConfig, plan: DataPlan, device: torch.device, ctx: DistributedContext):
        self.config, self.plan, self.device, self.ctx = config, plan, device, ctx
        self.metrics = list(config.train.val_metrics)

    @torch.inference_mode()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        evaluation = InstanceEvaluation()
        for case_id in self.plan.val_ids:
            image, label = self.plan.cache.load(case_id, mmap=False)
            detection = model([torch.from_numpy(np.ascontiguousarray(image)).to(self.device)])[0]
            ids, scores = instance_label_map(detection)
            evaluation.add(case_id, ids, label[0], scores)
        summary = evaluation.summary()
        values = {**summary["mean"], **{k: summary["ap"][k] for k in ("ap", "ap50", "ap75")}}
        return {f"val_{m}": float(values[m]) if evaluation.cases else math.nan for m in self.metrics}


@dataclass
class BestMetric:
    """The best validation score of ``train.best_metric`` so far and the validations since it improved."""

    metric: str
    lower_is_better: bool
    score: float | None = None
    stale: int = 0

    @classmethod
    def of(cls, config: RunConfig) -> BestMetric:
        """Tracking ``config.train.best_metric`` (lower is better for distances and error rates)."""
        metric = config.train.best_metric
        return cls(metric, metric in LOWER_IS_BETTER)

    def improves(self, score: float) -> bool:
        """Whether ``score`` beats the best so far (NaN never does; the first number always does)."""
        if math.isnan(score):
            return False
        if self.score is None:
            return True
        return score < self.score if self.lower_is_better else score > self.score

    def update(self, row: dict[str, Any]) -> bool:
        """Take an epoch's log row: True when its ``val_<metric>`` is a new best (a row without a
        validation changes nothing)."""
        key = f"val_{self.metric}"
        if key not in row:
            return False
        if self.improves(row[key]):
            self.score, self.stale = row[key], 0
            return True
        self.stale += 1
        return False
