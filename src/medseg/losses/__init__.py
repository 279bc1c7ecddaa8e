"""Segmentation losses for binary, multiclass and multilabel modes, 2D and 3D, taking logits.

``create_loss(name, **options)`` builds a registered loss, ``build_loss(config)`` a weighted compound
(optionally under deep supervision), ``list_losses()`` lists the names. Conventions (modes, targets,
``ignore_index``, ``include_background``, reductions) are in :mod:`medseg.losses.base`.
"""

from __future__ import annotations

from medseg.losses.base import MODES, SegLoss, Targets, prepare_targets
from medseg.losses.boundary import (
    BoundaryLoss,
    DistanceMapCache,
    boundary_schedule,
    signed_distance_map,
    signed_distance_maps,
    target_distance_maps,
)
from medseg.losses.compound import ComboLoss, CompoundLoss, DiceCELoss, ExpLogLoss, build_loss
from medseg.losses.conresnet import ConResNetLoss, residual_targets
from medseg.losses.deep_supervision import DeepSupervisionLoss, deep_supervision_weights
from medseg.losses.perceptual import LossNet, M2SNetLoss
from medseg.losses.pixel import (
    BalancedBCELoss,
    BCELoss,
    CrossEntropyLoss,
    FocalLoss,
    WeightedCrossEntropyLoss,
)
from medseg.losses.pointrend import PointRendLoss, point_loss
from medseg.losses.region import DiceLoss, FocalTverskyLoss, GeneralizedDiceLoss, JaccardLoss, TverskyLoss
from medseg.losses.registry import create_loss, list_losses, loss_options, register_loss, unregister_loss
from medseg.losses.structure import StructureLoss, edge_weights

__all__ = [
    "MODES",
    "BCELoss",
    "BalancedBCELoss",
    "BoundaryLoss",
    "ComboLoss",
    "ConResNetLoss",
    "CompoundLoss",
    "CrossEntropyLoss",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "DiceLoss",
    "DistanceMapCache",
    "ExpLogLoss",
    "FocalLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "JaccardLoss",
    "LossNet",
    "M2SNetLoss",
    "PointRendLoss",
    "SegLoss",
    "StructureLoss",
    "Targets",
    "TverskyLoss",
    "WeightedCrossEntropyLoss",
    "boundary_schedule",
    "build_loss",
    "create_loss",
    "deep_supervision_weights",
    "edge_weights",
    "list_losses",
    "loss_options",
    "point_loss",
    "prepare_targets",
    "residual_targets",
    "register_loss",
    "signed_distance_map",
    "signed_distance_maps",
    "target_distance_maps",
    "unregister_loss",
]
