"""Tests of the polyp-benchmark measures: hand-derived values, a loop-based transcription of the formulas
(the MATLAB evaluation toolbox's definitions) on random cases, values pinned from py_sod_metrics, input
rules."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import MedsegError
from medseg.metrics.polyp import e_measure, e_measure_curve, s_measure, to_probability, weighted_fbeta

EPS = float(np.finfo(np.float64).eps)


def _blob_case(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random mask and a noisy probability map that roughly follows it."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=rng.uniform(0.6, 1.5))
    gt = noise > np.quantile(noise, rng.uniform(0.4, 0.9))
    prob = 0.6 * gt + 0.3 * ndimage.gaussian_filter(rng.random(shape), 1.0) + 0.3 * rng.random(shape) - 0.15
    return np.clip(prob, 0.0, 1.0), gt


def _random_cases(count: int, ndim: int = 2, low: int = 4, high: int = 11) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(1234 + ndim)
    cases = []
    for index in range(count):
        shape = tuple(int(s) for s in rng.integers(low, high, size=ndim))
        prob, gt = _blob_case(rng, shape)
        if index % 7 == 3:  # a single foreground pixel
            gt = np.zeros(shape, bool)
            gt[tuple(int(rng.integers(s)) for s in shape)] = True
        if index % 7 == 5:  # a binary prediction
            prob = (prob > 0.5).astype(float)
        cases.append((prob, gt))
    return cases


# ------------------------------------------------------------------- loop-based reference transcriptions


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _loop_mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _loop_ssim(prob: list[float], gt: list[float]) -> float:
    count = len(prob)
    x, y = sum(prob) / count, sum(gt) / count
    var_x = sum((p - x) ** 2 for p in prob) / (count - 1 + EPS)
    var_y = sum((g - y) ** 2 for g in gt) / (count - 1 + EPS)
    cov = sum((p - x) * (g - y) for p, g in zip(prob, gt, strict=True)) / (count - 1 + EPS)
    alpha = 4 * x * y * cov
    beta = (x * x + y * y) * (var_x + var_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def _loop_s_measure(prob: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """2D S-measure written pixel by pixel after the MATLAB StructureMeasure.m."""
    rows, cols = gt.shape
    pixels = [(i, j) for i in range(rows) for j in range(cols)]
    fg = [(i, j) for i, j in pixels if gt[i, j]]
    mu = len(fg) / len(pixels)
    if mu == 0:
        return 1 - sum(prob[p] for p in pixels) / len(pixels)
    if mu == 1:
        return sum(prob[p] for p in pixels) / len(pixels)
    objects = []
    for values in ([prob[p] for p in fg], [1 - prob[p] for p in pixels if not gt[p]]):
        mean, std = _loop_mean_std(values)
        objects.append(2 * mean / (mean**2 + 1 + std + EPS))
    s_object = mu * objects[0] + (1 - mu) * objects[1]
    y_split = _round_half_up(sum(i + 1 for i, _ in fg) / len(fg))  # 1-based centroid, MATLAB round
    x_split = _round_half_up(sum(j + 1 for _, j in fg) / len(fg))
    s_region = 0.0
    for row_range in (range(0, y_split), range(y_split, rows)):
        for col_range in (range(0, x_split), range(x_split, cols)):
            block = [(i, j) for i in row_range for j in col_range]
            if block:
                weight = len(block) / len(pixels)
                s_region += weight * _loop_ssim([prob[p] for p in block], [float(gt[p]) for p in block])
    return max(0.0, alpha * s_object + (1 - alpha) * s_region)


def _loop_e_curve(prob: np.ndarray, gt: np.ndarray) -> list[float]:
    """Eφ at each threshold t/255 from the alignment matrix of the binarised map (Enhancedmeasure.m)."""
    truth = gt.astype(float)
    count = truth.size
    curve = []
    for t in range(256):
        pred = (prob >= t / 255).astype(float)
        if truth.sum() == 0:
            enhanced = 1.0 - pred
        elif truth.sum() == count:
            enhanced = pred
        else:
            centred_p, centred_g = pred - pred.mean(), truth - truth.mean()
            align = 2 * centred_g * centred_p / (centred_g**2 + centred_p**2 + EPS)
            enhanced = (align + 1) ** 2 / 4
        curve.append(float(enhanced.sum()) / count)
    return curve


def _loop_weighted_f(prob: np.ndarray, gt: np.ndarray, beta2: float = 1.0) -> float:
    """Fβw after original_WFb.m, any-D, with explicit loops for the distances and the 7^d Gaussian.

    The nearest foreground pixel of a background pixel is taken from scipy's EDT indices (ties have to be
    broken the same way), after checking that it is at the brute-force minimum distance.
    """
    if not gt.any():
        return 0.0
    points = list(itertools.product(*(range(s) for s in gt.shape)))
    fg = [p for p in points if gt[p]]
    _, nearest = ndimage.distance_transform_edt(~gt, return_indices=True)
    error = np.abs(prob - gt)
    dist, dependent = {}, {}
    for p in points:
        dist[p] = min(math.dist(p, q) for q in fg)
        q = tuple(int(nearest[(axis, *p)]) for axis in range(gt.ndim))
        assert math.isclose(math.dist(p, q), dist[p])
        dependent[p] = error[q]
    weights1d = [math.exp(-(d * d) / 50.0) for d in range(-3, 4)]
    smoothed = {}
    for p in points:
        total, norm = 0.0, 0.0
        for offset in itertools.product(range(-3, 4), repeat=gt.ndim):
            weight = math.prod(weights1d[o + 3] for o in offset)
            norm += weight
            q = tuple(a + o for a, o in zip(p, offset, strict=True))
            if all(0 <= c < s for c, s in zip(q, gt.shape, strict=True)):
                total += weight * dependent[q]
        smoothed[p] = total / norm
    weighted = {}
    for p in points:
        if gt[p]:
            weighted[p] = min(error[p], smoothed[p])
        else:
            weighted[p] = error[p] * (2 - math.exp(math.log(0.5) / 5 * dist[p]))
    tp_w = len(fg) - sum(weighted[p] for p in fg)
    fp_w = sum(weighted[p] for p in points if not gt[p])
    recall = 1 - sum(weighted[p] for p in fg) / len(fg)
    precision = tp_w / (EPS + tp_w + fp_w)
    return (1 + beta2) * recall * precision / (EPS + recall + beta2 * precision)


# ------------------------------------------------------------------------------------ hand-derived values


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 6)])
def test_perfect_prediction_scores_one(shape: tuple[int, ...]) -> None:
    gt = np.zeros(shape, bool)
    gt[(slice(1, 3),) * len(shape)] = True
    prob = gt.astype(float)
    assert s_measure(prob, gt) == pytest.approx(1.0, abs=1e-12)
    # Eφ: 1 at every threshold but t = 0, where everything counts as predicted foreground (φ = 0, f = 1/4).
    assert e_measure(prob, gt) == pytest.approx(((255 + 0.25) / 256, 1.0), abs=1e-12)
    assert weighted_fbeta(prob, gt) == pytest.approx(1.0, abs=1e-12)


def test_s_measure_all_zero_prediction_by_hand() -> None:
    # 4x4, gt = rows 0-1, cols 0-2 (6 px). S_object: O_FG = 0 (mean 0); O_BG = 2/(1+1+0) = 1, μ = 6/16.
    # Centroid (1-based) row 1.5 -> 2, col 2 -> 2: blocks 2x2. LT all fg, prob 0: α = β = 0 -> 1.
    # RT gt [[1,0],[1,0]], prob 0: α = 0, β = (0 + 1/4)·(0 + 1/3) > 0 -> 0. LB, RB all 0 -> 1.
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:3] = True
    s_object = (1 - 6 / 16) * 1.0
    s_region = 0.25 * (1 + 0 + 1 + 1)
    assert s_measure(np.zeros((4, 4)), gt) == pytest.approx(0.5 * s_object + 0.5 * s_region, abs=1e-12)
    assert s_measure(np.zeros((4, 4)), gt, alpha=1.0) == pytest.approx(s_object, abs=1e-12)


def test_s_measure_special_cases() -> None:
    prob = np.full((3, 5), 0.2)
    assert s_measure(prob, np.zeros((3, 5), bool)) == pytest.approx(0.8)
    assert s_measure(prob, np.ones((3, 5), bool)) == pytest.approx(0.2)


def test_s_measure_centroid_rounds_halves_up() -> None:
    # fg cols 2-3 (0-based) -> 1-based centroid 3.5: MATLAB rounds to 4 (py_sod_metrics' round-half-even: 3).
    rng = np.random.default_rng(1)
    gt = np.zeros((8, 8), bool)
    gt[2:4, 2:4] = True
    prob = rng.random((8, 8))
    assert s_measure(prob, gt) == pytest.approx(_loop_s_measure(prob, gt), abs=1e-12)


def test_s_measure_foreground_on_last_column_is_finite() -> None:
    # The centroid on the last column leaves empty blocks (NaN in the reference code): weight 0 here.
    gt = np.zeros((5, 5), bool)
    gt[1:, 4] = True
    prob = np.linspace(0, 1, 25).reshape(5, 5)
    value = s_measure(prob, gt)
    assert math.isfinite(value)
    assert value == pytest.approx(_loop_s_measure(prob, gt), abs=1e-12)


def _alignment(a: Fraction, b: Fraction) -> Fraction:
    """f(φ) = (1 + 2ab/(a² + b²))² / 4 in exact arithmetic."""
    phi = 2 * a * b / (a * a + b * b)
    return (1 + phi) ** 2 / 4


def test_e_measure_by_hand() -> None:
    # 4x4, gt = top-left 2x2 (μ_g = 4/16); prob 0.5 on gt, 0.75 on one background pixel, 0 elsewhere.
    # t = 0: everything predicted fg -> centred pred 0 -> φ = 0 -> f = 1/4 everywhere.
    # t = 1..127 (127 thresholds): 4 TP + 1 FP, μ_p = 5/16. t = 128..191 (64): 1 FP, μ_p = 1/16.
    # t = 192..255 (64): nothing predicted -> f = 1/4.
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True
    prob = 0.5 * gt
    prob[3, 3] = 0.75
    g1, g0 = Fraction(12, 16), Fraction(-4, 16)
    e1 = (
        4 * _alignment(Fraction(11, 16), g1)
        + _alignment(Fraction(11, 16), g0)
        + 11 * _alignment(Fraction(-5, 16), g0)
    ) / 16
    e2 = (
        _alignment(Fraction(15, 16), g0)
        + 4 * _alignment(Fraction(-1, 16), g1)
        + 11 * _alignment(Fraction(-1, 16), g0)
    ) / 16
    quarter = Fraction(1, 4)
    expected_mean = (quarter + 127 * e1 + 64 * e2 + 64 * quarter) / 256
    mean, best = e_measure(prob, gt)
    assert mean == pytest.approx(float(expected_mean), abs=1e-12)
    assert best == pytest.approx(float(max(quarter, e1, e2)), abs=1e-12)
    curve = e_measure_curve(prob, gt)
    assert curve[[0, 1, 127, 128, 191, 192, 255]] == pytest.approx(
        [0.25, float(e1), float(e1), float(e2), float(e2), 0.25, 0.25], abs=1e-12
    )


def test_e_measure_special_cases() -> None:
    # gt empty, prob 0: at t = 0 every pixel counts as predicted fg -> 0; at t >= 1 all agree -> 1.
    assert e_measure(np.zeros((3, 4)), np.zeros((3, 4), bool)) == pytest.approx((255 / 256, 1.0))
    # gt full, prob 1: predicted fg at every threshold -> 1.
    assert e_measure(np.ones((3, 4)), np.ones((3, 4), bool)) == pytest.approx((1.0, 1.0))


def test_e_measure_legacy_denominator() -> None:
    gt = np.zeros((5, 6), bool)
    gt[1:3, 2:5] = True
    expected = ((255 + 0.25) / 256 * 30 / 29, 30 / 29)
    assert e_measure(gt, gt, legacy_denominator=True) == pytest.approx(expected, rel=1e-12)


def test_weighted_fbeta_all_zero_prediction_by_hand() -> None:
    # E = 1 on gt, 0 elsewhere; every background pixel takes its nearest fg pixel's error 1, so the
    # smoothed map is s(i)·s(j) with s the Gaussian mass inside the 4-pixel image (zero padding) < 1.
    # fg: Ew = s(i)s(j); bg: Ew = 0 -> FPw = 0, P = 1, R = 1 - mean_fg s(i)s(j), F = 2R / (1 + R).
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True
    g = [math.exp(-d * d / 50) for d in range(-3, 4)]
    s = [sum(g[r - i + 3] for r in range(4)) / sum(g) for i in range(4)]
    recall = 1 - (s[0] * s[0] + 2 * s[0] * s[1] + s[1] * s[1]) / 4
    assert weighted_fbeta(np.zeros((4, 4)), gt) == pytest.approx(2 * recall / (1 + recall), abs=1e-12)


def test_weighted_fbeta_false_positive_by_hand() -> None:
    # gt = pixel (0, 0), predicted exactly, plus prob 0.5 at (3, 3): all dependent errors are 0, so
    # TPw = 1, R = 1, FPw = 0.5·(2 - 0.5^(√18/5)), P = 1/(1 + FPw).
    gt = np.zeros((4, 4), bool)
    gt[0, 0] = True
    prob = gt.astype(float)
    prob[3, 3] = 0.5
    precision = 1 / (1 + 0.5 * (2 - 0.5 ** (math.sqrt(18) / 5)))
    assert weighted_fbeta(prob, gt) == pytest.approx(2 * precision / (1 + precision), abs=1e-12)
    assert weighted_fbeta(prob, gt, beta2=0.3) == pytest.approx(
        1.3 * precision / (1 + 0.3 * precision), abs=1e-12
    )


def test_weighted_fbeta_empty_gt_is_zero() -> None:
    assert weighted_fbeta(np.zeros((4, 4)), np.zeros((4, 4), bool)) == 0.0


# ------------------------------------------------------------------------------- independent references


@pytest.mark.parametrize("case", range(14))
def test_against_loop_transcription_2d(case: int) -> None:
    prob, gt = _random_cases(14)[case]
    assert s_measure(prob, gt) == pytest.approx(_loop_s_measure(prob, gt), abs=1e-10)
    curve = _loop_e_curve(prob, gt)
    assert e_measure_curve(prob, gt) == pytest.approx(curve, abs=1e-10)
    assert e_measure(prob, gt) == pytest.approx((np.mean(curve), max(curve)), abs=1e-10)
    assert weighted_fbeta(prob, gt) == pytest.approx(_loop_weighted_f(prob, gt), abs=1e-10)


@pytest.mark.parametrize("case", range(4))
def test_weighted_fbeta_against_loop_transcription_3d(case: int) -> None:
    prob, gt = _random_cases(4, ndim=3, low=3, high=6)[case]
    assert weighted_fbeta(prob, gt) == pytest.approx(_loop_weighted_f(prob, gt), abs=1e-10)


def test_3d_extensions_reduce_to_2d() -> None:
    prob, gt = _random_cases(1)[0]
    # E-measure counts pixels only; S-measure on a one-slice volume has empty second halves along axis 0.
    volume_shape = (prob.shape[0], 1, prob.shape[1])
    assert e_measure(prob.reshape(volume_shape), gt.reshape(volume_shape)) == pytest.approx(
        e_measure(prob, gt), abs=1e-12
    )
    assert s_measure(prob[None], gt[None]) == pytest.approx(s_measure(prob, gt), abs=1e-12)


# Values from py_sod_metrics 1.6.2 (PyPI ``pysodmetrics``; Smeasure / Emeasure / WeightedFmeasure with
# normalize=False): (Sα, mean Eφ, max Eφ, Fβw). Its Eφ divides by N - 1, hence legacy_denominator=True.
# The cases avoid centroids on exact halves, where its rounding differs from MATLAB's.
PY_SOD_METRICS = {
    "ellipse_wave": (0.8118822035165092, 0.6299394773760163, 1.0013458950201868, 0.5497239220037945),
    "shifted_soft": (0.4656903704129107, 0.6246636467309264, 0.7257767317650177, 0.36745821819751495),
    "two_blobs_binary": (0.2878927157873521, 0.56940084580044, 0.5706520786319904, 0.09538651095876091),
}


def _pinned_case(name: str) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:24, 0:31].astype(float)
    ellipse = ((yy - 10.2) / 6) ** 2 + ((xx - 14.3) / 9) ** 2 <= 1
    if name == "ellipse_wave":
        wave = 0.5 + 0.5 * np.sin(0.7 * xx + 0.3 * yy) * np.cos(0.4 * yy)
        return np.clip(0.55 * ellipse + 0.45 * wave, 0, 1), ellipse
    if name == "shifted_soft":
        shifted = ((yy - 14.6) / 5) ** 2 + ((xx - 9.1) / 7) ** 2 <= 1
        return np.clip(0.8 * shifted + 0.1 * np.cos(xx) ** 2, 0, 1), ellipse
    two = (((yy - 5.3) ** 2 + (xx - 6.2) ** 2) <= 9) | (((yy - 17.4) ** 2 + (xx - 23.1) ** 2) <= 16)
    return two.astype(float), ellipse


@pytest.mark.parametrize("name", sorted(PY_SOD_METRICS))
def test_against_py_sod_metrics_values(name: str) -> None:
    prob, gt = _pinned_case(name)
    s_ref, e_mean_ref, e_max_ref, wf_ref = PY_SOD_METRICS[name]
    assert s_measure(prob, gt) == pytest.approx(s_ref, abs=1e-9)
    assert e_measure(prob, gt, legacy_denominator=True) == pytest.approx((e_mean_ref, e_max_ref), abs=1e-9)
    assert weighted_fbeta(prob, gt) == pytest.approx(wf_ref, abs=1e-9)


# ------------------------------------------------------------------------------------ ranges and inputs


def test_values_lie_in_unit_interval() -> None:
    for prob, gt in _random_cases(20, low=3, high=30) + _random_cases(5, ndim=3, low=3, high=12):
        values = [s_measure(prob, gt), *e_measure(prob, gt), weighted_fbeta(prob, gt)]
        assert all(0.0 <= v <= 1.0 for v in values), values


def test_uint8_and_bool_inputs_match_float() -> None:
    prob, gt = _random_cases(3)[2]
    as_uint8 = np.round(prob * 255).astype(np.uint8)
    as_float = as_uint8 / 255.0
    for measure in (s_measure, e_measure, weighted_fbeta):
        assert measure(as_uint8, gt) == pytest.approx(measure(as_float, gt), abs=1e-12)
        assert measure(gt, gt.astype(np.uint8)) == pytest.approx(measure(gt.astype(float), gt), abs=1e-12)
        assert measure(gt.astype(np.int64), gt) == pytest.approx(measure(gt.astype(float), gt), abs=1e-12)
    np.testing.assert_array_equal(to_probability(np.array([0, 255], np.uint8)), [0.0, 1.0])
    np.testing.assert_array_equal(to_probability(np.array([0, 1], np.uint8)), [0.0, 1.0])


@pytest.mark.parametrize(
    "prob",
    [np.full((3, 3), 1.5), np.full((3, 3), -0.1), np.full((3, 3), np.nan), np.full((3, 3), 300)],
)
def test_bad_probabilities_raise(prob: np.ndarray) -> None:
    with pytest.raises(MedsegError):
        s_measure(prob, np.ones((3, 3), bool))


def test_bad_arguments_raise() -> None:
    with pytest.raises(MedsegError, match="shape"):
        e_measure(np.zeros((3, 3)), np.zeros((3, 4), bool))
    with pytest.raises(MedsegError):
        s_measure(np.zeros((3, 3)), np.zeros((3, 3), bool), alpha=1.5)
    with pytest.raises(MedsegError):
        weighted_fbeta(np.zeros((3, 3)), np.zeros((3, 3), bool), beta2=-1.0)
    with pytest.raises(MedsegError):
        weighted_fbeta(np.zeros((0, 3)), np.zeros((0, 3), bool))
