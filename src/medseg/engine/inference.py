"""Inference: sliding window with Gaussian importance weighting, mirroring TTA, whole-image inference,
ensembling, and the conversions logits -> probabilities -> labels.

Sliding window (nnU-Net, Isensee et al. 2021, ``nnunetv2/inference/sliding_window_prediction.py``):
the image is padded to at least the patch size, windows are placed on a grid with a step of half a
patch, each window's logits are multiplied by a Gaussian importance map (σ = patch/8 per axis) and
summed into float32 accumulators; the sum is divided by the summed weights and the padding is cropped
away. The result is a weighted mean of **logits** (as in nnU-Net); softmax/sigmoid come after
(:func:`logits_to_probabilities`), so ensembling averages probabilities of models, not logits.

Two conventions of window placement and weights exist:

- ``"nnunet"`` (default): ``ceil((size - patch) / (patch * step)) + 1`` positions per axis, evenly
  spaced from 0 to ``size - patch`` (rounded), so the windows overlap uniformly; a Gaussian normalised
  to a maximum of 1 whose zeros (underflow) are replaced by its smallest non-zero value. Unlike
  nnU-Net's map (centred on voxel ``patch // 2``) ours is centred on ``(patch - 1) / 2``, hence
  symmetric, so that mirrored windows are weighted like unmirrored ones.
- ``"monai"``: MONAI's ``sliding_window_inference(..., overlap=1 - step, mode="gaussian")``: a fixed
  interval ``int(patch * (1 - overlap))`` from 0 with the last window moved back inside the image,
  and a Gaussian that is not normalised and is clamped below at 1e-3. It exists to compare with MONAI;
  the uniform spacing of nnU-Net's rule is the better default (MONAI's last two windows may overlap
  almost entirely).

Memory: the accumulators are the output (``num_classes`` float32 maps of the padded size) on
``accumulate_device`` plus one window batch; the sum of the weights is never stored for the whole
volume but computed slab by slab during the final division. The input is not copied unless it has
to be padded. Window outputs are moved to the accumulation device batch by batch, so a volume whose
logits do not fit on the GPU is accumulated on the CPU.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medseg.errors import MedsegError, check_choice
from medseg.layers import resize_to
from medseg.outputs import SegOutput, main_logits

logger = logging.getLogger(__name__)

Predictor = Callable[[Tensor], "Tensor | SegOutput"]
"""Any callable on a window batch ``[b, C, *patch]`` returning logits ``[b, K, *patch]`` (or a
:class:`SegOutput`); typically a model in eval mode. The returned tensor is reused in place (weighted,
summed over mirrors) unless it shares memory with the input batch."""

Scores = TypeVar("Scores", Tensor, np.ndarray)
"""Logits or probabilities ``[K, *spatial]``: a tensor, or for the label conversions a numpy array too."""

Convention = Literal["nnunet", "monai"]
CONVENTIONS = ("nnunet", "monai")
LABEL_MODES = ("binary", "multiclass", "multilabel")
MONAI_MIN_WEIGHT = 1e-3
SLAB_BYTES = 8 * 2**20  # size of the weight-sum slab computed during the final division


def _patch_tuple(patch_size: Sequence[int]) -> tuple[int, ...]:
    patch = tuple(int(p) for p in patch_size)
    if not patch or any(p < 1 for p in patch):
        raise MedsegError(f"patch size must be positive integers, got {tuple(patch_size)}")
    return patch


# ----------------------------------------------------------------------------------------------------
# Window placement and weights
# ----------------------------------------------------------------------------------------------------

def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float | Sequence[float] = 0.125, *,
                            convention: Convention = "nnunet", device: torch.device | str | None = None,
                            dtype: torch.dtype = torch.float32) -> Tensor:
    """The Gaussian importance map of a window: ``prod_d exp(-x_d^2 / (2 σ_d^2))`` with
    ``σ_d = sigma_scale * patch_d`` and ``x_d`` measured from the window's centre ``(patch_d - 1) / 2``.

    ``"nnunet"``: normalised to a maximum of exactly 1, zeros replaced by the smallest non-zero value
    (nnU-Net's ``compute_gaussian``, centred symmetrically). ``"monai"``: not normalised, clamped below
    at ``max(min, 1e-3)`` (MONAI's ``compute_importance_map``).
    """
    check_choice("convention", convention, CONVENTIONS)
    patch = _patch_tuple(patch_size)
    scales = [float(sigma_scale)] * len(patch) if isinstance(sigma_scale, (int, float)) else list(sigma_scale)
    if len(scales) != len(patch) or any(s <= 0 for s in scales):
        raise MedsegError(f"sigma_scale must be positive, one value or one per axis, got {sigma_scale!r}")
    weights = torch.ones((), dtype=torch.float32, device=device)
    for p, scale in zip(patch, scales, strict=True):
        x = torch.arange(p, dtype=torch.float64) - (p - 1) / 2
        factor = torch.exp(-(x**2) / (2 * (scale * p) ** 2)).to(device=device, dtype=torch.float32)
        weights = weights.unsqueeze(-1) * factor  # the outer product, in float32 like MONAI's
    if convention == "monai":
        weights.clamp_(min=max(weights.min().item(), MONAI_MIN_WEIGHT))
    else:
        weights.div_(weights.max())
        zeros = weights == 0
        if zeros.any():
            weights[zeros] = weights[~zeros].min()
    return weights.to(device=device, dtype=dtype)


def sliding_window_positions(image_size: Sequence[int], patch_size: Sequence[int], step: float = 0.5, *,
                             convention: Convention = "nnunet") -> list[list[int]]:
    """The window start positions along each axis of an image of ``image_size`` (at least the patch size).

    ``"nnunet"``: ``n = ceil((size - patch) / (patch * step)) + 1`` positions ``round(i * (size - patch)
    / (n - 1))``. ``"monai"``: interval ``int(patch * step)`` (at least 1; the whole patch when it
    equals the size) from 0 until a window reaches the end, the last one moved back to ``size - patch``.
    """
    check_choice("convention", convention, CONVENTIONS)
    patch = _patch_tuple(patch_size)
    size = tuple(int(s) for s in image_size)
    if len(size) != len(patch) or any(s < p for s, p in zip(size, patch, strict=True)):
        raise MedsegError(f"image size {size} must have one extent per patch axis, each at least the patch "
                          f"size {patch} (pad first)")
    if not 0 < step <= 1:
        raise MedsegError(f"step must be in (0, 1], got {step}")
    positions = []
    for s, p in zip(size, patch, strict=True):
        if convention == "nnunet":
            n = math.ceil((s - p) / (p * step)) + 1
            stride = (s - p) / (n - 1) if n > 1 else 0.0
            positions.append([round(i * stride) for i in range(n)])
        else:
            interval = p if s == p else max(int(p * step), 1)
            n = next(i for i in range(s) if i * interval + p >= s) + 1
            positions.append([min(i * interval, s - p) for i in range(n)])
    return positions


def _window(corner: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))


# ----------------------------------------------------------------------------------------------------
# Prediction of one batch (mirroring TTA)
# ----------------------------------------------------------------------------------------------------

def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty combination of the spatial ``mirror_axes`` (nnU-Net's test-time mirroring)."""
    axes = sorted(set(int(a) for a in mirror_axes))
    return [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _call(predictor: Predictor, batch: Tensor) -> Tensor:
    """The predictor's logits as a float32 tensor that we own (copied if it aliases the input)."""
    logits = main_logits(predictor(batch))
    if logits.dtype != torch.float32:
        return logits.float()
    return logits.clone() if _shares_memory(logits, batch) else logits


def predict_mirrored(predictor: Predictor, batch: Tensor, mirror_axes: Sequence[int] | None = None) -> Tensor:
    """Logits of ``batch`` ``[b, C, *spatial]`` (float32), averaged over the mirrored inputs when
    ``mirror_axes`` (spatial axes, 0-based) are given: the mean of ``flip(predictor(flip(x, A)), A)``
    over the identity and every combination ``A`` of the axes (nnU-Net)."""
    logits = _call(predictor, batch)
    if not mirror_axes:
        return logits
    spatial_dims = batch.ndim - 2
    if any(not 0 <= a < spatial_dims for a in mirror_axes):
        raise MedsegError(f"mirror axes must be spatial axes in [0, {spatial_dims}), "
                          f"got {tuple(mirror_axes)}")
    combinations = mirror_combinations(mirror_axes)
    for axes in combinations:
        dims = [a + 2 for a in axes]
        logits += torch.flip(main_logits(predictor(torch.flip(batch, dims))), dims)
    return logits.div_(len(combinations) + 1)


class PaddedPredictor(nn.Module):
    """Pads a batch (zeros after the end of each axis) to the network's input multiple (U-Net:
    ``2 ** depth``) and crops the logits back; returns the main logits as a Tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.multiple = int(getattr(model, "input_multiple", 1) or 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        pad: list[int] = []
        for n in reversed(size):
            pad += [0, -n % self.multiple]
        padded = F.pad(x, pad) if any(pad) else x
        logits = main_logits(self.model(padded))
        return logits[(slice(None), slice(None), *(slice(0, n) for n in size))] if any(pad) else logits


# ----------------------------------------------------------------------------------------------------
# Sliding-window inference
# ----------------------------------------------------------------------------------------------------

def _single_image(image: Tensor, spatial_dims: int) -> Tensor:
    """``[C, *spatial]`` from ``[C, *spatial]`` or ``[1, C, *spatial]``."""
    if image.ndim == spatial_dims + 2 and image.shape[0] == 1:
        return image[0]
    if image.ndim != spatial_dims + 1:
        raise MedsegError(f"image must be [C, *spatial] or [1, C, *spatial] with {spatial_dims} spatial "
                          f"axes, got shape {tuple(image.shape)}")
    return image


def _pad_to_patch(image: Tensor, patch: Sequence[int],
                  value: float = 0.0) -> tuple[Tensor, tuple[slice, ...]]:
    """Pad ``[C, *spatial]`` with ``value`` to at least ``patch`` (half before, half after, as nnU-Net and
    MONAI do); return the padded image and the slices of the original region (no copy when none is needed)."""
    size = image.shape[1:]
    diffs = [max(p - s, 0) for s, p in zip(size, patch, strict=True)]
    region = tuple(slice(d // 2, d // 2 + s) for d, s in zip(diffs, size, strict=True))
    if not any(diffs):
        return image, region
    pads = [v for d in reversed(diffs) for v in (d // 2, d - d // 2)]
    return F.pad(image, pads, mode="constant", value=value), region


def choose_accumulate_device(window_device: torch.device, output_bytes: int,
                             memory_budget: int | None = None) -> torch.device:
    """Where to accumulate the logits: the window device when ``output_bytes`` fit in ``memory_budget``
    bytes (default: half of the device's free memory on CUDA; anything on the CPU), else the CPU."""
    if window_device.type == "cpu":
        return window_device
    if memory_budget is None:
        if window_device.type != "cuda":
            return window_device
        free, _ = torch.cuda.mem_get_info(window_device)
        memory_budget = free // 2
    if output_bytes <= memory_budget:
        return window_device
    logger.info("accumulating %.0f MiB of logits on the CPU (device budget %.0f MiB)", output_bytes / 2**20,
                memory_budget / 2**20)
    return torch.device("cpu")


def _divide_by_weight_sum(logits_sum: Tensor, weights: Tensor, positions: Sequence[Sequence[int]],
                          patch: Sequence[int]) -> None:
    """``logits_sum /= sum of the windows' weights``, the weight sum built slab by slab along the first
    spatial axis (at most ~SLAB_BYTES at a time) instead of as a full volume."""
    size = logits_sum.shape[1:]
    row_bytes = 4 * math.prod(size[1:])
    thickness = max(1, min(size[0], SLAB_BYTES // row_bytes))
    rest_windows = [_window(c, patch[1:]) for c in itertools.product(*positions[1:])]
    buffer = torch.empty((thickness, *size[1:]), dtype=weights.dtype, device=logits_sum.device)
    for start in range(0, size[0], thickness):
        stop = min(start + thickness, size[0])
        slab = buffer[:stop - start].zero_()
        for first in positions[0]:
            lo, hi = max(start, first), min(stop, first + patch[0])
            if lo >= hi:
                continue
            rows = weights[lo - first:hi - first]
            for window in rest_windows:
                slab[(slice(lo - start, hi - start), *window)] += rows
        logits_sum[:, start:stop].div_(slab)


def _accumulate(logits_sum: Tensor, logits: Tensor, weights: Tensor,
                windows: Sequence[tuple[slice, ...]]) -> None:
    """``logits_sum[window_i] += logits[i] * weights``: fused on one device; weighted on the window device
    and then moved when accumulating elsewhere (one batch at a time)."""
    if logits.device == logits_sum.device:
        for window, window_logits in zip(windows, logits, strict=True):
            logits_sum[(slice(None), *window)].addcmul_(window_logits, weights)
        return
    moved = logits.mul_(weights).to(logits_sum.device)
    for window, window_logits in zip(windows, moved, strict=True):
        logits_sum[(slice(None), *window)] += window_logits


def sliding_window_inference(predictor: Predictor, image: Tensor, patch_size: Sequence[int],
                             num_classes: int, *, step: float = 0.5,
                             sigma_scale: float | Sequence[float] = 0.125,
                             window_batch_size: int = 4, device: torch.device | str | None = None,
                             accumulate_device: torch.device | str | None = None,
                             memory_budget: int | None = None, mirror_axes: Sequence[int] | None = None,
                             convention: Convention = "nnunet", pad_value: float = 0.0,
                             progress: bool = False) -> Tensor:
    """Gaussian-weighted sliding-window logits of one image (nnU-Net; see the module docstring).

    Args:
        predictor: a callable on ``[b, C, *patch]`` returning logits ``[b, num_classes, *patch]`` (or a
            :class:`SegOutput`), e.g. a model in eval mode. Called under ``torch.inference_mode``.
        image: ``[C, *spatial]`` or ``[1, C, *spatial]``, on any device.
        patch_size: the window size, one extent per spatial axis.
        num_classes: the predictor's output channels.
        step: the window step as a fraction of the patch (0.5: half-overlapping windows).
        sigma_scale: σ of the Gaussian as a fraction of the patch (one value or one per axis).
        window_batch_size: windows per predictor call.
        device: where the windows are predicted (default: the image's device).
        accumulate_device: where the logits are accumulated and returned (default: ``device`` when the
            output fits ``memory_budget``, else the CPU; see :func:`choose_accumulate_device`).
        memory_budget: bytes the accumulators may take on a GPU (default: half its free memory).
        mirror_axes: spatial axes (0-based) for mirroring TTA, e.g. ``(0, 1, 2)``; None: no mirroring.
        convention: ``"nnunet"`` (default) or ``"monai"`` window placement and Gaussian.
        pad_value: the constant the image is padded with when smaller than the patch.
        progress: show a tqdm bar over the window batches.

    Returns:
        float32 logits ``[num_classes, *spatial]`` on the accumulation device (the Gaussian-weighted mean
        of the windows' logits; a view into the padded accumulator when the image had to be padded).
    """
    patch = _patch_tuple(patch_size)
    x = _single_image(image, len(patch))
    if window_batch_size < 1 or num_classes < 1:
        raise MedsegError(f"window_batch_size and num_classes must be >= 1, got {window_batch_size} and "
                          f"{num_classes}")
    window_device = torch.device(device) if device is not None else x.device
    padded, region = _pad_to_patch(x, patch, pad_value)
    size = padded.shape[1:]
    positions = sliding_window_positions(size, patch, step, convention=convention)
    corners = list(itertools.product(*positions))
    out_bytes = 4 * num_classes * math.prod(size)
    acc_device = (torch.device(accumulate_device) if accumulate_device is not None
                  else choose_accumulate_device(window_device, out_bytes, memory_budget))
    weights = gaussian_importance_map(patch, sigma_scale, convention=convention, device=window_device)
    logits_sum = torch.zeros((num_classes, *size), dtype=torch.float32, device=acc_device)
    batch_size = min(window_batch_size, len(corners))
    dtype = x.dtype if x.is_floating_point() else torch.float32
    buffer = torch.empty((batch_size, x.shape[0], *patch), dtype=dtype, device=window_device)
    starts = range(0, len(corners), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="sliding window", unit="batch")
    with torch.inference_mode():
        for start in starts:
            batch_corners = corners[start:start + batch_size]
            batch = buffer[:len(batch_corners)]
            for i, corner in enumerate(batch_corners):
                batch[i].copy_(padded[(slice(None), *_window(corner, patch))])
            logits = predict_mirrored(predictor, batch, mirror_axes)
            if logits.shape[1:] != (num_classes, *patch):
                raise MedsegError(f"the predictor returned {tuple(logits.shape)} for windows "
                                  f"{tuple(batch.shape)}; expected [b, {num_classes}, *{patch}]")
            _accumulate(logits_sum, logits, weights, [_window(c, patch) for c in batch_corners])
            del logits  # not alive during the next batch's prediction
        _divide_by_weight_sum(logits_sum, weights.to(acc_device), positions, patch)
    return logits_sum[(slice(None), *region)]


# ----------------------------------------------------------------------------------------------------
# Whole-image inference, dispatch and ensembling
# ----------------------------------------------------------------------------------------------------

def whole_image_inference(predictor: Predictor, image: Tensor, model_size: Sequence[int] | None = None, *,
                          mirror_axes: Sequence[int] | None = None,
                          device: torch.device | str | None = None) -> Tensor:
    """Logits ``[K, *spatial]`` of one image ``[C, *spatial]`` (or ``[1, C, *spatial]`` when ``model_size``
    is given) predicted in one piece: resized to ``model_size`` (fixed-size 2D models; None keeps the
    size), predicted (with mirroring TTA) and the logits resized back to the image's size (linear
    interpolation)."""
    spatial_dims = len(model_size) if model_size is not None else image.ndim - 1
    x = _single_image(image, spatial_dims)
    size = tuple(x.shape[1:])
    batch = x.unsqueeze(0).to(device if device is not None else x.device)
    with torch.no_grad():  # not inference_mode: the result stays a normal tensor
        if model_size is not None:
            batch = resize_to(batch.float(), list(_patch_tuple(model_size)), antialias=True)
        logits = predict_mirrored(predictor, batch, mirror_axes)
        return resize_to(logits, list(size), antialias=True)[0]


def predict_logits(predictor: Predictor, image: Tensor, num_classes: int, *,
                   patch_size: Sequence[int] | None = None, model_size: Sequence[int] | None = None,
                   mirror_axes: Sequence[int] | None = None, **sliding_options: object) -> Tensor:
    """Logits ``[num_classes, *spatial]``: sliding window when ``patch_size`` is given (options of
    :func:`sliding_window_inference`), else whole-image inference (resized to ``model_size`` if given)."""
    if patch_size is not None and model_size is not None:
        raise MedsegError("give either patch_size (sliding window) or model_size (whole image), not both")
    if patch_size is not None:
        return sliding_window_inference(predictor, image, patch_size, num_classes, mirror_axes=mirror_axes,
                                        **sliding_options)  # type: ignore[arg-type]
    device = sliding_options.get("device")
    logits = whole_image_inference(predictor, image, model_size, mirror_axes=mirror_axes,
                                   device=device)  # type: ignore[arg-type]
    if logits.shape[0] != num_classes:
        raise MedsegError(f"the predictor returned {logits.shape[0]} channels, expected {num_classes}")
    return logits


def ensemble_predict(predictors: Sequence[Predictor], image: Tensor, num_classes: int, mode: str, *,
                     patch_size: Sequence[int] | None = None, model_size: Sequence[int] | None = None,
                     mirror_axes: Sequence[int] | None = None, **sliding_options: object) -> Tensor:
    """The mean of the predictors' probabilities ``[num_classes, *spatial]`` (softmax or sigmoid by
    ``mode``), e.g. the five folds of a cross-validation (nnU-Net averages probabilities, not logits).
    Each predictor runs as :func:`predict_logits`; one probability map is held besides the sum."""
    if not predictors:
        raise MedsegError("ensemble_predict needs at least one predictor")
    total: Tensor | None = None
    for predictor in predictors:
        logits = predict_logits(predictor, image, num_classes, patch_size=patch_size, model_size=model_size,
                                mirror_axes=mirror_axes, **sliding_options)
        probabilities = logits_to_probabilities(logits, mode, inplace=True)
        if total is None:
            total = probabilities
        else:
            total += probabilities.to(total.device)
        del logits, probabilities
    assert total is not None
    return total.div_(len(predictors))


# ----------------------------------------------------------------------------------------------------
# Logits -> probabilities -> labels (chunked along the first spatial axis to bound temporaries)
# ----------------------------------------------------------------------------------------------------

def _chunks(length: int, row_elements: int, budget: int = 2**24) -> list[slice]:
    step = max(1, budget // max(row_elements, 1))
    return [slice(s, min(s + step, length)) for s in range(0, length, step)]


def _check_mode(mode: str, channels: int) -> None:
    check_choice("label mode", mode, LABEL_MODES)
    if mode == "binary" and channels != 1:
        raise MedsegError(f"binary mode needs 1 channel, got {channels}")


def logits_to_probabilities(logits: Tensor, mode: str, *, inplace: bool = False) -> Tensor:
    """Probabilities of ``logits`` ``[K, *spatial]``: softmax over the channels (``multiclass``) or a
    sigmoid per channel (``binary``, ``multilabel``). ``inplace`` overwrites ``logits`` (no second
    full-size tensor); otherwise one float32 output is allocated. Computed in chunks along the first
    spatial axis."""
    if logits.ndim < 2:
        raise MedsegError(f"logits must be [K, *spatial], got shape {tuple(logits.shape)}")
    _check_mode(mode, logits.shape[0])
    out = logits if inplace else torch.empty_like(logits, dtype=torch.float32)
    for rows in _chunks(logits.shape[1], logits[:, :1].numel()):
        chunk = logits[:, rows].float()
        out[:, rows] = torch.softmax(chunk, dim=0) if mode == "multiclass" else torch.sigmoid(chunk)
    return out


def _labels(scores: Scores, mode: str, cut: float, inclusive: bool = False) -> Scores:
    """Labels from probabilities or logits: argmax over channels (uint8 up to 256 classes) or
    ``scores > cut`` (``>=`` when ``inclusive``) per channel (uint8); binary gives ``[*spatial]``. A numpy
    array is converted with numpy (no torch: safe in forked evaluation workers)."""
    _check_mode(mode, scores.shape[0])
    if isinstance(scores, np.ndarray):
        if mode == "multiclass":
            return np.argmax(scores, axis=0).astype(np.uint8 if scores.shape[0] <= 256 else np.int64)
        labels = (scores >= cut if inclusive else scores > cut).astype(np.uint8)
        return labels[0] if mode == "binary" else labels
    if mode == "multiclass":
        dtype = torch.uint8 if scores.shape[0] <= 256 else torch.int64
        out = torch.empty(scores.shape[1:], dtype=dtype, device=scores.device)
        for rows in _chunks(scores.shape[1], scores[:, :1].numel()):
            out[rows] = scores[:, rows].argmax(dim=0).to(dtype)
        return out
    labels = (scores >= cut if inclusive else scores > cut).to(torch.uint8)
    return labels[0] if mode == "binary" else labels


def probabilities_to_labels(probabilities: Scores, mode: str, threshold: float = 0.5, *,
                            inclusive: bool = False) -> Scores:
    """Label map of probabilities ``[K, *spatial]`` (a tensor, or a numpy array converted with numpy):
    ``multiclass`` -> argmax ``[*spatial]``; ``binary`` -> ``p > threshold`` ``[*spatial]``; ``multilabel``
    -> ``p > threshold`` ``[K, *spatial]`` (uint8). ``inclusive``: ``p >= threshold`` (how ``medseg
    evaluate`` reads probability maps)."""
    return _labels(probabilities, mode, threshold, inclusive)


def logits_to_labels(logits: Scores, mode: str, threshold: float = 0.5) -> Scores:
    """The labels of :func:`probabilities_to_labels` computed from the logits without the probabilities
    (argmax of logits; ``logit > log(t / (1 - t))`` for sigmoid channels); tensors or numpy arrays."""
    if not 0 < threshold < 1:
        raise MedsegError(f"threshold must be in (0, 1), got {threshold}")
    return _labels(logits, mode, math.log(threshold / (1 - threshold)))
