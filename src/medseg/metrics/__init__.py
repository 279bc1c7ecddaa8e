"""Segmentation metrics per case and per class, with physical spacing (numpy; torch inputs accepted).

- :mod:`~medseg.metrics.overlap`: Dice, IoU, VOE, RVD, accuracy, precision, recall, specificity, FPR,
  FNR, F-beta (one confusion count), MAE;
- :mod:`~medseg.metrics.surface`: HD, HD95, ASD, ASSD, MSD, NSD from one pair of surface-distance arrays
  (surfaces by erosion, distance transforms on crops);
- :mod:`~medseg.metrics.polyp`: S-measure, E-measure, weighted F-measure (Fan et al.);
- :mod:`~medseg.metrics.case`: :func:`evaluate_case`, every metric of one case, class by class;
- :mod:`~medseg.metrics.instance`: instance label maps: IoU matrix, COCO AP, DSB2018 score, AJI, PQ,
  object Dice (:func:`evaluate_instances`, :class:`InstanceEvaluation` for a data set).

Each function documents its empty-mask conventions.
"""

from medseg.metrics.case import METRIC_NAMES, evaluate_case
from medseg.metrics.instance import InstanceEvaluation, evaluate_instances, iou_matrix
from medseg.metrics.overlap import (
    Confusion,
    accuracy,
    dice,
    fbeta,
    fnr,
    fpr,
    iou,
    mae,
    precision,
    recall,
    rvd,
    specificity,
    voe,
)
from medseg.metrics.polyp import e_measure, s_measure, weighted_fbeta
from medseg.metrics.surface import (
    DISTANCE_METRICS,
    average_surface_distance,
    average_symmetric_surface_distance,
    distance_metrics,
    hausdorff,
    hausdorff95,
    msd,
    normalized_surface_dice,
    surface_distances,
)

__all__ = [
    "DISTANCE_METRICS", "METRIC_NAMES", "Confusion", "InstanceEvaluation", "accuracy",
    "average_surface_distance", "average_symmetric_surface_distance", "dice", "distance_metrics", "e_measure",
    "evaluate_case", "evaluate_instances", "fbeta", "fnr", "fpr", "hausdorff", "hausdorff95", "iou",
    "iou_matrix", "mae", "msd", "normalized_surface_dice", "precision", "recall", "rvd", "s_measure",
    "specificity", "surface_distances", "voe", "weighted_fbeta",
]
