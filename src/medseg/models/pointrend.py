"""PointRend for semantic segmentation (Kirillov et al., CVPR 2020; detectron2 ``projects/PointRend``).

:class:`PointRend` wraps any network that implements the protocol :class:`CoarseAndFine`:
``coarse_and_fine(x) -> (coarse logits, fine features)`` (coarse at stride 4 or any stride, fine a
stride-4 feature map) and an int ``fine_channels``. A network whose full forward would leave parameters
unused under PointRend provides ``pointrend_backbone()`` instead, returning a module that implements the
protocol with only what it uses (the U-Net: its decoder stopped at stride 4 plus a 1x1 coarse head).

* Training (Sec. 3.1): points chosen on the coarse prediction by :func:`~medseg.blocks.point_sampling.
  training_points` (``k N`` uniform, the ``beta N`` most uncertain, ``(1 - beta) N`` uniform); the
  :class:`~medseg.blocks.point_head.PointRendHead` predicts them from the fine features and the coarse
  logits sampled there. Returns ``SegOutput(logits=coarse up-sampled to the input size, extras=
  {"point_logits": [B, K, N], "point_coords": [B, N, dims]})`` for :class:`~medseg.losses.pointrend.
  PointRendLoss`.
* Inference (Sec. 3.1, adaptive subdivision): from the coarse logits, repeat until the input size:
  up-sample x2 (bi/trilinear, ``align_corners=False``; the last step to the exact input size, so any
  ratio works), take the ``subdivision_points`` most uncertain grid points, predict them with the point
  head and write them back. As in detectron2 the head's coarse input is the *original* coarse prediction
  sampled (bilinearly) at the points, the same input as in training. Returns a plain Tensor.

``wrap_pointrend(model, options)`` is what ``model.pointrend`` in a run config does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from medseg import layers
from medseg.blocks.point_head import PointRendHead
from medseg.blocks.point_sampling import (
    point_sample,
    points_for_size,
    training_points,
    uncertain_grid_points,
    uncertainty,
)
from medseg.errors import MedsegError, check_choice
from medseg.models.base import SegmentationModel
from medseg.outputs import SegOutput

POINT_LOGITS = "point_logits"
POINT_COORDS = "point_coords"
MODES = ("auto", "binary", "multiclass", "multilabel")
OPTIONS = ("points", "oversample", "importance", "subdivision_points", "steps", "every_layer", "mode",
           "channels", "layers")
"""The keys of ``model.pointrend`` / :func:`wrap_pointrend`'s options (the model's, not the loss's)."""


@runtime_checkable
class CoarseAndFine(Protocol):
    """What :class:`PointRend` wraps: coarse logits and a stride-4 feature map of the same input."""

    fine_channels: int

    def coarse_and_fine(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


def subdivision_sizes(coarse: Sequence[int], target: Sequence[int],
                      steps: int | None = None) -> list[list[int]]:
    """The grid sizes of the subdivision steps from ``coarse`` to ``target``: doubled per step and clipped
    to the target (so the last step lands on it exactly); at most ``steps`` of them (None: all)."""
    size, target = [int(s) for s in coarse], [int(s) for s in target]
    sizes: list[list[int]] = []
    while size != target and (steps is None or len(sizes) < steps):
        size = [min(2 * s, t) if s < t else t for s, t in zip(size, target, strict=True)]
        sizes.append(size)
    return sizes


class PointRend(SegmentationModel):
    """PointRend (Kirillov et al. 2020) over any :class:`CoarseAndFine` network, 2D or 3D.

    Args:
        model: the network (implements :class:`CoarseAndFine`, or ``pointrend_backbone()`` returning one).
        num_classes: logit channels K (default: ``model.num_classes``).
        points: training points N per sample; None: :func:`~medseg.blocks.point_sampling.points_for_size`
            of the input (2048 at 512x1024, the Cityscapes config's density: one per 256 pixels/voxels).
        oversample: k, candidates drawn per training point (3).
        importance: beta, the share of training points taken among the most uncertain candidates (0.75).
        subdivision_points: points refined per subdivision step at inference (8192).
        steps: at most this many subdivision steps (None: until the input size; when fewer steps stop short
            of it the map is resized bi/trilinearly to the input at the end).
        every_layer: concatenate the coarse logits to every point-head layer (instance config), not only
            to its input (semantic config, the default).
        mode: label mode for the uncertainty: ``auto`` (1 channel binary, else multiclass), ``binary``,
            ``multiclass`` or ``multilabel`` (the most uncertain channel).
        channels: width of the point head's hidden layers (256).
        layers: hidden layers of the point head (3).
    """

    def __init__(self, model: nn.Module, num_classes: int | None = None, points: int | None = None,
                 oversample: float = 3.0, importance: float = 0.75, subdivision_points: int = 8192,
                 steps: int | None = None, every_layer: bool = False, mode: str = "auto", channels: int = 256,
                 layers: int = 3) -> None:
        super().__init__()
        backbone = model.pointrend_backbone() if hasattr(model, "pointrend_backbone") else model
        if not isinstance(backbone, CoarseAndFine) or not isinstance(backbone.fine_channels, int):
            raise MedsegError(f"PointRend: {type(model).__name__} does not implement coarse_and_fine(x) -> "
                              "(coarse logits, stride-4 features) with an int fine_channels")
        num_classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise MedsegError(f"PointRend: give num_classes for {type(model).__name__} (it has no "
                              "num_classes attribute)")
        if points is not None and points < 1 or subdivision_points < 1 or oversample < 1 \
                or not 0 <= importance <= 1 or steps is not None and steps < 0:
            raise MedsegError(f"PointRend: need points >= 1 (or None), subdivision_points >= 1, oversample "
                              f">= 1, 0 <= importance <= 1 and steps >= 0 (or None), got points {points}, "
                              f"subdivision_points {subdivision_points}, oversample {oversample}, importance "
                              f"{importance}, steps {steps}")
        self.backbone = backbone
        self.spatial_dims = getattr(backbone, "spatial_dims", getattr(model, "spatial_dims", None))
        self.input_multiple = int(getattr(backbone, "input_multiple", getattr(model, "input_multiple", 1)))
        self.num_classes = num_classes
        self.points, self.oversample, self.importance = points, float(oversample), float(importance)
        self.subdivision_points, self.steps = int(subdivision_points), steps
        self.mode = check_choice("mode", mode, MODES)
        self.point_head = PointRendHead(backbone.fine_channels, num_classes, channels, layers, every_layer)

    @property
    def multilabel(self) -> bool:
        return self.mode == "multilabel"

    def predict_points(self, coarse: Tensor, fine: Tensor, coords: Tensor) -> Tensor:
        """Point logits ``[B, K, N]`` at ``coords [B, N, dims]`` from the fine features and coarse logits."""
        return self.point_head(point_sample(fine, coords), point_sample(coarse, coords))

    def forward(self, x: Tensor) -> Tensor | SegOutput:
        check = getattr(self.backbone, "check_input", None)
        if callable(check):
            check(x)
        coarse, fine = self.backbone.coarse_and_fine(x)
        size = list(x.shape[2:])
        if self.training:
            count = self.points if self.points is not None else points_for_size(size)
            coords = training_points(coarse, count, self.oversample, self.importance, self.multilabel)
            point_logits = self.predict_points(coarse, fine, coords)
            return SegOutput(layers.resize_to(coarse, size),
                             extras={POINT_LOGITS: point_logits, POINT_COORDS: coords})
        return self.subdivide(coarse, fine, size)

    def subdivide(self, coarse: Tensor, fine: Tensor, size: Sequence[int]) -> Tensor:
        """Adaptive subdivision from ``coarse`` to ``size`` (see the module docstring)."""
        logits = coarse
        for grid in subdivision_sizes(coarse.shape[2:], size, self.steps):
            logits = layers.resize_to(logits, grid)
            scores = uncertainty(logits, self.multilabel)
            indices, coords = uncertain_grid_points(scores, self.subdivision_points)
            refined = self.predict_points(coarse, fine, coords).to(logits.dtype)
            batch, classes = logits.shape[:2]
            flat = logits.reshape(batch, classes, -1)
            flat = flat.scatter(2, indices.unsqueeze(1).expand(-1, classes, -1), refined)
            logits = flat.view(logits.shape)
        return layers.resize_to(logits, list(size))


def wrap_pointrend(model: nn.Module, options: Mapping[str, Any] | None = None, *,
                   num_classes: int | None = None) -> PointRend:
    """``model`` wrapped in :class:`PointRend` with ``options`` (keys of :data:`OPTIONS`; unknown keys raise
    :class:`MedsegError` naming them)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise MedsegError(f"unknown PointRend option(s) {', '.join(unknown)}; allowed: {', '.join(OPTIONS)}")
    return PointRend(model, num_classes=num_classes, **options)

