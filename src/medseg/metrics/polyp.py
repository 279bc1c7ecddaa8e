"""The polyp-benchmark measures of a probability map against a binary mask (Fan et al.).

* :func:`s_measure` -- structure measure Sα (Fan et al., ICCV 2017),
* :func:`e_measure` -- enhanced-alignment measure Eφ, mean and max over 256 thresholds
  (Fan et al., IJCAI 2018),
* :func:`weighted_fbeta` -- weighted F-measure Fβw (Margolin et al., CVPR 2014),

defined as in the MATLAB evaluation toolbox that PraNet and its successors (M2SNet, ...) report with, and
its Python port ``py_sod_metrics``. The few places where that code is ill-defined or deviates from the
papers are stated in each docstring.

Inputs: ``prob`` is a probability map (float in [0, 1]; a bool mask counts as 0/1; an integer map is a
0/1 mask when its maximum is at most 1 and an 8-bit 0..255 map otherwise, see :func:`to_probability`),
``gt`` a mask of the same shape whose non-zero voxels are the foreground. The measures are defined on 2D
images; they are computed on 3D (any-D) arrays with the natural extension noted in each docstring.
Unlike the MATLAB toolbox, no min-max rescaling (``mapminmax``) of ``prob`` is done here.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import ndimage

from medseg.errors import MedsegError

EPS = float(np.finfo(np.float64).eps)  # MATLAB's eps, used where the reference code adds it
N_THRESHOLDS = 256  # E-measure thresholds t / 255, t = 0..255
WF_KERNEL_SIZE = 7  # Gaussian smoothing of the weighted F-measure: fspecial('gaussian', 7, 5)
WF_SIGMA = 5.0
WF_DECAY = math.log(0.5) / 5.0  # pixel importance: background errors count 2 - exp(decay * distance)


# ---------------------------------------------------------------------------------------------- inputs


def to_probability(prob: np.ndarray) -> np.ndarray:
    """``prob`` as float64 in [0, 1].

    bool → 0/1; float → unchanged, must lie in [0, 1]; integer → a 0/1 mask when its values are 0 and 1
    only, otherwise an 8-bit map 0..255 divided by 255 (so a uint8 0/255 prediction and a float 0/1
    prediction give the same values). Raises :class:`MedsegError` for NaN or out-of-range values.
    """
    array = np.asarray(prob)
    if array.dtype == bool:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise MedsegError(f"integer probability maps must hold 0..255, got values in [{low}, {high}]")
        return array.astype(np.float64) / (255.0 if high > 1 else 1.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise MedsegError(f"probability map must be bool, integer or float, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if array.size and not (np.all(np.isfinite(array)) and array.min() >= 0.0 and array.max() <= 1.0):
        raise MedsegError("float probability maps must be finite and lie in [0, 1]")
    return array


def _prepare(prob: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(prob float64 in [0, 1], gt bool)`` of equal, non-empty shape."""
    prob_array = to_probability(prob)
    gt_array = np.asarray(gt) != 0
    if prob_array.shape != gt_array.shape:
        raise MedsegError(f"shape mismatch: prob {prob_array.shape} vs gt {gt_array.shape}")
    if prob_array.ndim == 0 or prob_array.size == 0:
        raise MedsegError(f"polyp measures need a non-empty image, got shape {prob_array.shape}")
    return prob_array, gt_array


# ------------------------------------------------------------------------------------------- S-measure


def s_measure(prob: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure Sα = α·S_object + (1 − α)·S_region (Fan et al., ICCV 2017, eq. 2), clipped at 0.

    Special cases (as in the reference code): ``gt`` all background → 1 − mean(prob); ``gt`` all
    foreground → mean(prob). So a perfect prediction scores 1 and an all-zero prediction of a non-empty
    mask scores only what its background agreement earns. In 3D the region term splits the volume into
    the 8 octants at the rounded centroid (the 2D quadrants' natural extension).
    """
    if not 0.0 <= alpha <= 1.0:
        raise MedsegError(f"alpha must lie in [0, 1], got {alpha}")
    prob, gt = _prepare(prob, gt)
    foreground = gt.mean()
    if foreground == 0.0:
        return float(1.0 - prob.mean())
    if foreground == 1.0:
        return float(prob.mean())
    score = alpha * _object_score(prob, gt) + (1.0 - alpha) * _region_score(prob, gt)
    return float(max(0.0, score))


def _object_score(prob: np.ndarray, gt: np.ndarray) -> float:
    """S_object = μ·O_FG + (1 − μ)·O_BG with μ the foreground fraction (eq. 5)."""
    foreground = gt.mean()
    return foreground * _object_term(prob[gt]) + (1.0 - foreground) * _object_term(1.0 - prob[~gt])


def _object_term(values: np.ndarray) -> float:
    """O = 2x̄ / (x̄² + 1 + σ_x), σ_x the sample standard deviation (0 for one pixel) (eq. 4)."""
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return 2.0 * mean / (mean * mean + 1.0 + std + EPS)


def _region_score(prob: np.ndarray, gt: np.ndarray) -> float:
    """S_region = Σ_k w_k·ssim_k over the blocks cut at the ground truth's centroid, w_k = block area share.

    A block that is empty (the centroid on the last row/column) has weight 0 and is skipped; the reference
    code returns NaN there.
    """
    splits = [_split_index(gt, axis) for axis in range(gt.ndim)]
    halves = [(slice(0, split), slice(split, size)) for split, size in zip(splits, gt.shape, strict=True)]
    score = 0.0
    for block in itertools.product(*halves):
        prob_block, gt_block = prob[block], gt[block]
        if prob_block.size:
            score += prob_block.size / prob.size * _block_ssim(prob_block, gt_block)
    return score


def _split_index(gt: np.ndarray, axis: int) -> int:
    """End (exclusive, 0-based) of the first half along ``axis``: the 1-based centroid rounded half up.

    MATLAB's ``round`` (halves away from zero) on 1-based coordinates, computed in integers so exact
    halves round the same way; py_sod_metrics rounds halves to even and can differ by one pixel there.
    """
    other_axes = tuple(a for a in range(gt.ndim) if a != axis)
    counts = gt.sum(axis=other_axes, dtype=np.int64)
    total = int(counts.sum())
    coordinate_sum = int(np.dot(counts, np.arange(1, gt.shape[axis] + 1, dtype=np.int64)))
    return (2 * coordinate_sum + total) // (2 * total)


def _block_ssim(prob: np.ndarray, gt: np.ndarray) -> float:
    """SSIM-like block score 4·x̄ȳ·σ_xy / ((x̄² + ȳ²)(σ_x² + σ_y²)) (eq. 6), 1 when both terms are 0."""
    truth = gt.astype(np.float64)
    count = prob.size
    mean_p, mean_g = prob.mean(), truth.mean()
    dev_p, dev_g = prob - mean_p, truth - mean_g
    var_p = float(np.sum(dev_p * dev_p)) / (count - 1 + EPS)
    var_g = float(np.sum(dev_g * dev_g)) / (count - 1 + EPS)
    cov = float(np.sum(dev_p * dev_g)) / (count - 1 + EPS)
    numerator = 4.0 * mean_p * mean_g * cov
    denominator = (mean_p * mean_p + mean_g * mean_g) * (var_p + var_g)
    if numerator != 0.0:
        return float(numerator / (denominator + EPS))
    return 1.0 if denominator == 0.0 else 0.0


# ------------------------------------------------------------------------------------------- E-measure


def e_measure(prob: np.ndarray, gt: np.ndarray, *, legacy_denominator: bool = False) -> tuple[float, float]:
    """Enhanced-alignment measure Eφ: ``(mean, max)`` over the 256 thresholds of :func:`e_measure_curve`.

    Perfect prediction → max 1, mean (255 + 1/4) / 256 (the t = 0 threshold); ``gt`` empty and ``prob``
    all zero → (255/256, 1). Conventions and the ``legacy_denominator`` switch: :func:`e_measure_curve`.
    """
    curve = e_measure_curve(prob, gt, legacy_denominator=legacy_denominator)
    return float(curve.mean()), float(curve.max())


def e_measure_curve(prob: np.ndarray, gt: np.ndarray, *, legacy_denominator: bool = False) -> np.ndarray:
    """Eφ of the binary map ``prob >= t / 255`` at index t = 0..255 (Fan et al., IJCAI 2018; PraNet eval).

    Eφ = mean of f(φ) = (1 + φ)² / 4 (eq. 6) with the alignment φ = 2·(g∘p) / (g∘g + p∘p) of the
    mean-centred binary maps (eq. 3). Special cases (the paper's and the reference code's): ``gt`` all
    background → the fraction of predicted background; ``gt`` all foreground → the fraction of
    predicted foreground. At t = 0 every pixel counts as predicted foreground, so even a perfect
    prediction of a non-trivial mask scores 1/4 there and its mean over thresholds is (255 + 1/4) / 256
    (its max is 1), exactly as in the reference code. Vectorised over thresholds: each pixel's threshold
    level is found once and the four (pred, gt) counts come from reversed cumulative histograms.

    The mean is over the N pixels, so a perfect prediction scores exactly 1. The MATLAB toolbox (and
    py_sod_metrics) divide by N − 1 + eps instead, i.e. values larger by N / (N − 1) (+8e-6 on 352x352);
    ``legacy_denominator=True`` reproduces that. Any-D: the measure only counts pixels.
    """
    prob, gt = _prepare(prob, gt)
    total = prob.size
    levels = np.searchsorted(np.arange(N_THRESHOLDS) / (N_THRESHOLDS - 1.0), prob.ravel(), side="right") - 1
    gt_flat = gt.ravel()
    true_pos = _count_at_least(levels[gt_flat])  # predicted fg & gt fg, per threshold
    false_pos = _count_at_least(levels[~gt_flat])  # predicted fg & gt bg
    pred_fg = true_pos + false_pos
    gt_fg = int(gt_flat.sum())
    if gt_fg == 0:
        enhanced_sum = total - pred_fg
    elif gt_fg == total:
        enhanced_sum = pred_fg
    else:
        enhanced_sum = _enhanced_sum(true_pos, false_pos, gt_fg, total)
    denominator = total - 1 + EPS if legacy_denominator else total
    return enhanced_sum / denominator


def _count_at_least(levels: np.ndarray) -> np.ndarray:
    """Entry t: how many of ``levels`` are >= t, for t = 0..255."""
    histogram = np.bincount(levels, minlength=N_THRESHOLDS).astype(np.float64)
    return np.cumsum(histogram[::-1])[::-1]


def _enhanced_sum(true_pos: np.ndarray, false_pos: np.ndarray, gt_fg: int, total: int) -> np.ndarray:
    """Σ f(φ) over the image: each (pred, gt) pixel class has one centred value pair, hence one f."""
    false_neg = gt_fg - true_pos
    true_neg = total - gt_fg - false_pos
    pred_mean = (true_pos + false_pos) / total
    gt_mean = gt_fg / total
    pred_fg, pred_bg = 1.0 - pred_mean, -pred_mean
    gt_fg_value, gt_bg_value = 1.0 - gt_mean, -gt_mean
    return (
        true_pos * _enhanced_alignment(pred_fg, gt_fg_value)
        + false_pos * _enhanced_alignment(pred_fg, gt_bg_value)
        + false_neg * _enhanced_alignment(pred_bg, gt_fg_value)
        + true_neg * _enhanced_alignment(pred_bg, gt_bg_value)
    )


def _enhanced_alignment(pred_value: np.ndarray, gt_value: float) -> np.ndarray:
    """f(φ) = (1 + φ)² / 4 with φ = 2ab / (a² + b²); ``gt_value`` is never 0 here (non-trivial gt)."""
    phi = 2.0 * pred_value * gt_value / (pred_value * pred_value + gt_value * gt_value)
    return (1.0 + phi) ** 2 / 4.0


# ------------------------------------------------------------------------------------ weighted F-measure


def weighted_fbeta(prob: np.ndarray, gt: np.ndarray, beta2: float = 1.0) -> float:
    """Weighted F-measure Fβw = (1 + β²)·Pw·Rw / (β²·Pw + Rw) (Margolin et al., CVPR 2014, eq. 11).

    Error E = |prob − gt|; dependency: each background pixel takes the error of its nearest foreground
    pixel (Euclidean distance transform indices), that map is smoothed by a 7x7 Gaussian with σ = 5 (zero
    padding) and foreground pixels keep min(E, smoothed E); importance: background errors are weighted by
    2 − exp(ln(0.5)/5 · distance to the foreground). TPw = |gt| − Σ_fg Ew, FPw = Σ_bg Ew,
    Rw = 1 − mean_fg Ew, Pw = TPw / (TPw + FPw). ``gt`` all background → 0 (the reference convention,
    even for an all-zero prediction). 3D: the 7x7x7 Gaussian and distances in voxels (spacing ignored,
    as the constants are in pixels).
    """
    if beta2 < 0.0:
        raise MedsegError(f"beta2 must be >= 0, got {beta2}")
    prob, gt = _prepare(prob, gt)
    if not gt.any():
        return 0.0
    distance, nearest = ndimage.distance_transform_edt(~gt, return_indices=True)
    error = np.abs(prob - gt)
    dependent_error = error[tuple(nearest)]  # foreground pixels are their own nearest foreground pixel
    smoothed = _gaussian_smooth(dependent_error)
    error = np.where(gt & (smoothed < error), smoothed, error)
    weighted = error * np.where(gt, 1.0, 2.0 - np.exp(WF_DECAY * distance))
    fg_error = float(weighted[gt].sum())
    tp_w = float(gt.sum()) - fg_error
    fp_w = float(weighted[~gt].sum())
    recall = 1.0 - fg_error / float(gt.sum())
    precision = tp_w / (tp_w + fp_w + EPS)
    return float((1.0 + beta2) * recall * precision / (recall + beta2 * precision + EPS))


def _gaussian_smooth(image: np.ndarray) -> np.ndarray:
    """MATLAB ``imfilter(x, fspecial('gaussian', 7, 5))``: normalised separable Gaussian, zero padding."""
    radius = WF_KERNEL_SIZE // 2
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-offsets * offsets / (2.0 * WF_SIGMA * WF_SIGMA))
    kernel /= kernel.sum()
    smoothed = image
    for axis in range(image.ndim):
        smoothed = ndimage.correlate1d(smoothed, kernel, axis=axis, mode="constant", cval=0.0)
    return smoothed
