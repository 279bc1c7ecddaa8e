"""Surface distance metrics of one class: HD, HD95, ASD, ASSD, MSD and NSD, with physical spacing.

Definitions (A = prediction, B = ground truth, ∂A and ∂B their surfaces, d(x, ∂B) the Euclidean distance
in physical units from a surface voxel x to the nearest voxel of ∂B):

- surface voxels: ``mask & ~binary_erosion(mask)`` with face connectivity (``connectivity=1``: the
  cross-shaped structuring element, MONAI's and medpy's default; ``connectivity=ndim`` gives the full
  3x3(x3) element) and the outside of the image counted as background, so a mask touching the image border
  has its border voxels on the surface;
- directed distances D(A→B) = {d(a, ∂B) : a ∈ ∂A} and D(B→A), one value per surface voxel;
- HD = max(max D(A→B), max D(B→A)) (symmetric Hausdorff distance); MSD is the same quantity under the
  name the spec uses ("MSD = symmetric Hausdorff");
- HD95 = max(P95 D(A→B), P95 D(B→A)), the larger of the two directed 95th percentiles with linear
  interpolation, as MONAI's ``compute_hausdorff_distance(percentile=95)``;
- ASD = mean D(A→B) (directed, as MONAI's ``compute_average_surface_distance(symmetric=False)``);
- ASSD = mean of D(A→B) ∪ D(B→A), the mean over all surface voxels of both masks (not the mean of the two
  directed means), as MONAI's ``compute_average_surface_distance(symmetric=True)``;
- NSD at tolerance τ (surface Dice, Nikolov et al. 2021) = (|{d ∈ D(A→B): d ≤ τ}| + |{d ∈ D(B→A): d ≤ τ}|)
  / (|∂A| + |∂B|), surface size measured by surface voxel count (not DeepMind's surfel areas), as MONAI's
  ``compute_surface_dice(use_subvoxels=False)``.

Empty masks: both empty → every distance 0 and NSD 1 (MONAI gives NaN for NSD here); one empty → HD, HD95,
ASD, ASSD and MSD are ``empty_distance`` (NaN by default, counted by the summary; pass a finite worst value
to penalise instead) and NSD is 0.

Speed (the spec: surfaces by erosion, distance transforms only on crops, never on the full volume when a
crop suffices). Everything outside the joint bounding box of A ∪ B is background, so:

1. The joint bounding box is split into tight boxes ("leaves") by recursive cuts along empty slabs of the
   union's axis projections. Each leaf is surrounded by background at Chebyshev distance 1, so eroding a
   leaf alone with a background border (``border_value=0``, what a one-voxel zero margin would give) gives
   exactly the full volume's surface voxels there.
2. Each leaf's distances come from a Euclidean distance transform (``sampling=spacing``) of the complement
   of the other surface on a window: the leaf plus a small margin, clipped to the joint box. A window
   distance d is exact when no voxel outside the window can be closer: when d is at most the physical
   distance from the voxel to every window side that is not a side of the joint box (beyond those sides
   there is no surface at all). A single object is one leaf whose window is the whole joint box, always
   exact: every surface voxel of B lies inside the joint box, so its nearest one to any point does too.
3. The few voxels a window cannot certify (the other surface is farther than the margin, e.g. a false
   positive far from any truth) are resolved exactly by a nearest-neighbour query (k-d tree) over the
   other surface's voxel coordinates, instead of a distance transform on a large box.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg.errors import MedsegError
from medseg.metrics.overlap import as_mask_pair

DISTANCE_METRICS = ("hd", "hd95", "asd", "assd", "msd", "nsd")
#: Window margin around a leaf, in voxels of the finest axis (converted to voxels per axis by spacing).
WINDOW_MARGIN = 4
#: Most boxes one projection cut may produce (beyond it, a box is cut along one axis only).
MAX_CELLS = 64

Box = tuple[slice, ...]


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    """Spacing per array axis as a float64 vector (None: 1, a number: isotropic)."""
    if spacing is None:
        return np.ones(ndim)
    values = np.array(spacing, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(ndim, float(values))
    if values.shape != (ndim,) or not np.all(values > 0):
        raise MedsegError(f"spacing must be {ndim} positive numbers, got {spacing}")
    return values


def _runs(occupied: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the runs of True in a 1D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], occupied.view(np.int8), [0]))))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _projections(mask: np.ndarray) -> list[np.ndarray]:
    """Per axis, which indices hold foreground (``any`` over the other axes), in two passes over ``mask``."""
    if mask.ndim == 1:
        return [mask]
    return [mask.any(axis=tuple(range(1, mask.ndim))), *_projections(np.logical_or.reduce(mask, axis=0))]


def _leaf_boxes(pred: np.ndarray, gt: np.ndarray) -> list[Box]:
    """Tight boxes of the foreground of ``pred | gt`` separated by empty slabs (recursive projection cuts).

    A box is cut at every empty slab of all axes at once (the grid of occupied runs; along the axis with
    the most runs only when that grid has more than :data:`MAX_CELLS` cells, as speckles would give).
    """
    leaves, stack = [], [tuple(slice(0, n) for n in pred.shape)]
    while stack:
        box = stack.pop()
        ranges = []
        for side, p, g in zip(box, _projections(pred[box]), _projections(gt[box]), strict=True):
            ranges.append([slice(side.start + start, side.start + stop) for start, stop in _runs(p | g)])
        if not ranges[0]:
            continue  # no foreground in this box
        if all(len(r) == 1 for r in ranges):
            leaves.append(tuple(r[0] for r in ranges))
            continue
        if math.prod(len(r) for r in ranges) > MAX_CELLS:
            axis = max(range(pred.ndim), key=lambda a: len(ranges[a]))
            ranges = [r if a == axis else [slice(r[0].start, r[-1].stop)] for a, r in enumerate(ranges)]
        stack.extend(itertools.product(*ranges))
    return leaves


def _shift(box: Box, origin: Sequence[int]) -> Box:
    return tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, origin, strict=True))


class _Surfaces:
    """Surface voxels of A and B on their joint bounding box (the "crop"), leaf by leaf."""

    def __init__(self, pred: np.ndarray, gt: np.ndarray, leaves: list[Box], connectivity: int) -> None:
        self.origin = [min(b[a].start for b in leaves) for a in range(pred.ndim)]
        stop = [max(b[a].stop for b in leaves) for a in range(pred.ndim)]
        self.shape = tuple(e - o for o, e in zip(self.origin, stop, strict=True))
        self.leaves = [_shift(b, self.origin) for b in leaves]
        structure = ndimage.generate_binary_structure(pred.ndim, connectivity)
        # surface masks of the crop (np.zeros maps zero pages lazily: only the leaves are written)
        self.masks = (np.zeros(self.shape, bool), np.zeros(self.shape, bool))
        self.coords: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        for leaf, box in zip(self.leaves, leaves, strict=True):
            for mask, target, coords in zip((pred, gt), self.masks, self.coords, strict=True):
                region = mask[box]  # its outside neighbours are background: erode with a background border
                surface = region & ~ndimage.binary_erosion(region, structure, border_value=0)
                target[leaf] = surface
                coords.append(np.argwhere(surface) + [s.start for s in leaf])

    def count(self, which: int) -> int:
        return sum(len(c) for c in self.coords[which])


def _window(leaf: Box, margin: np.ndarray, shape: Sequence[int]) -> Box:
    """``leaf`` grown by ``margin`` voxels per axis, clipped to ``shape``."""
    return tuple(slice(max(b.start - m, 0), min(b.stop + m, n))
                 for b, m, n in zip(leaf, margin, shape, strict=True))


def _certified_bound(local: np.ndarray, window: Box, shape: Sequence[int], spacing: np.ndarray) -> np.ndarray:
    """Per point, the physical distance to the nearest voxel beyond a window side inside the crop.

    Sides that are sides of the crop do not count: no surface lies beyond them.
    """
    bound = np.full(len(local), np.inf)
    for axis, (w, n, s) in enumerate(zip(window, shape, spacing, strict=True)):
        if w.start > 0:
            bound = np.minimum(bound, (local[:, axis] + 1) * s)
        if w.stop < n:
            bound = np.minimum(bound, (w.stop - w.start - local[:, axis]) * s)
    return bound


def _directed(surfaces: _Surfaces, source: int, spacing: np.ndarray) -> np.ndarray:
    """D(source → other): each source surface voxel's distance to the other surface (see the module doc)."""
    target_mask, target_coords = surfaces.masks[1 - source], surfaces.coords[1 - source]
    margin = np.ceil(WINDOW_MARGIN * spacing.min() / spacing).astype(int)
    parts, pending = [], []
    for leaf, points in zip(surfaces.leaves, surfaces.coords[source], strict=True):
        if len(points) == 0:
            continue
        window = _window(leaf, margin, surfaces.shape)
        target = target_mask[window]
        if not target.any():
            pending.append(points)
            continue
        local = points - [w.start for w in window]
        field = ndimage.distance_transform_edt(~target, sampling=spacing)
        distances = field[tuple(local.T)]
        # exact where no voxel beyond the window can be closer; a window that is the whole crop is always
        # exact, since every voxel of the other surface lies inside the joint bounding box
        exact = distances <= _certified_bound(local, window, surfaces.shape, spacing)
        parts.append(distances[exact])
        pending.append(points[~exact])
    pending_points = np.concatenate(pending) if pending else np.empty((0, len(spacing)), int)
    if len(pending_points):
        tree = cKDTree(np.concatenate(target_coords) * spacing)
        parts.append(tree.query(pending_points * spacing)[0])
    return np.concatenate(parts) if parts else np.empty(0)


def surface_distances(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None,
                      connectivity: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(D(A→B), D(B→A))``: the distance of every surface voxel of one mask to the other mask's surface.

    Distances are in the units of ``spacing`` (per array axis; None means 1), in no particular voxel order.
    Both arrays are empty when both masks are; when one mask is empty its array is empty and the other's
    values are ``inf``.
    """
    pred, gt = as_mask_pair(pred, gt)
    spacing = _spacing(spacing, pred.ndim)
    leaves = _leaf_boxes(pred, gt)
    if not leaves:  # both masks empty
        return np.empty(0), np.empty(0)
    surfaces = _Surfaces(pred, gt, leaves, connectivity)
    if surfaces.count(0) == 0 or surfaces.count(1) == 0:
        return np.full(surfaces.count(0), np.inf), np.full(surfaces.count(1), np.inf)
    return _directed(surfaces, 0, spacing), _directed(surfaces, 1, spacing)


def metrics_from_distances(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray, tolerance: float = 1.0,
                           percentile: float = 95.0, empty_distance: float = math.nan) -> dict[str, float]:
    """HD, HD95, ASD, ASSD, MSD and NSD from the two directed distance arrays (empty-mask conventions as in
    the module doc: an empty array means that mask is empty)."""
    if len(pred_to_gt) == 0 and len(gt_to_pred) == 0:
        return dict.fromkeys(DISTANCE_METRICS, 0.0) | {"nsd": 1.0}
    if len(pred_to_gt) == 0 or len(gt_to_pred) == 0:
        return dict.fromkeys(DISTANCE_METRICS, float(empty_distance)) | {"nsd": 0.0}
    hd = float(max(pred_to_gt.max(), gt_to_pred.max()))
    both = np.concatenate([pred_to_gt, gt_to_pred])
    return {
        "hd": hd,
        "hd95": float(max(np.percentile(pred_to_gt, percentile), np.percentile(gt_to_pred, percentile))),
        "asd": float(pred_to_gt.mean()),
        "assd": float(both.mean()),
        "msd": hd,
        "nsd": float(np.count_nonzero(both <= tolerance) / len(both)),
    }


def distance_metrics(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None,
                     tolerance: float = 1.0, *, percentile: float = 95.0, empty_distance: float = math.nan,
                     connectivity: int = 1) -> dict[str, float]:
    """All surface metrics ``{"hd", "hd95", "asd", "assd", "msd", "nsd"}`` from one pair of distance
    computations (``tolerance`` τ of NSD in the units of ``spacing``; ``percentile`` of HD95)."""
    pred_to_gt, gt_to_pred = surface_distances(pred, gt, spacing, connectivity)
    return metrics_from_distances(pred_to_gt, gt_to_pred, tolerance, percentile, empty_distance)


def _single_distance(key: str, name: str, doc: str) -> Callable[..., float]:
    """A function of ``(pred, gt, spacing=None, empty_distance=nan)`` returning ``distance_metrics[key]``."""

    def metric(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None,
               empty_distance: float = math.nan) -> float:
        return distance_metrics(pred, gt, spacing, empty_distance=empty_distance)[key]

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = f"{doc} (see the module doc; ``empty_distance`` when exactly one mask is empty)."
    return metric


hausdorff = _single_distance("hd", "hausdorff", "Symmetric Hausdorff distance HD")
hausdorff95 = _single_distance("hd95", "hausdorff95",
                               "HD95: the larger of the two directed 95th-percentile distances (MONAI's)")
average_surface_distance = _single_distance(
    "asd", "average_surface_distance", "ASD: mean distance from the prediction's surface to the truth's")
average_symmetric_surface_distance = _single_distance(
    "assd", "average_symmetric_surface_distance",
    "ASSD: mean over the surface voxels of both masks of the distance to the other surface")
msd = _single_distance("msd", "msd", "MSD as the spec defines it: the symmetric Hausdorff distance (= HD)")


def normalized_surface_dice(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None,
                            tolerance: float = 1.0) -> float:
    """NSD (surface Dice) at tolerance τ (units of ``spacing``): the share of both surfaces' voxels within τ
    of the other surface; 1 when both masks are empty, 0 when one is."""
    return distance_metrics(pred, gt, spacing, tolerance)["nsd"]
