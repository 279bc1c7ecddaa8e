"""Sliding-window inference, mirroring TTA, whole-image inference, ensembling and label conversions,
checked against independent computations and MONAI's ``sliding_window_inference``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg import create_model
from medseg.engine.benchmark import measure_peak_memory
from medseg.engine.inference import (
    choose_accumulate_device,
    ensemble_predict,
    gaussian_importance_map,
    logits_to_labels,
    logits_to_probabilities,
    mirror_combinations,
    predict_logits,
    predict_mirrored,
    probabilities_to_labels,
    sliding_window_inference,
    sliding_window_positions,
    whole_image_inference,
)
from medseg.errors import MedsegError
from medseg.outputs import SegOutput

monai_utils = pytest.importorskip("monai.data.utils")
monai_inferers = pytest.importorskip("monai.inferers")


def pointwise(in_channels: int, num_classes: int, spatial_dims: int) -> torch.nn.Module:
    """A fixed 1x1 convolution: every voxel's output depends on that voxel only."""
    conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(in_channels, num_classes, 1)
    return conv.eval()


def monai_reference(predictor, image: torch.Tensor, patch, batch: int = 2) -> torch.Tensor:
    with torch.no_grad():
        return monai_inferers.sliding_window_inference(image[None], patch, batch, predictor, overlap=0.5,
                                                       mode="gaussian", sigma_scale=0.125)[0]


# ----------------------------------------------------------------------------------------------------
# Gaussian map and positions
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [(33, 33), (16, 24, 20), (7, 9, 64)])
def test_gaussian_map_max_one_symmetric_positive(patch):
    weights = gaussian_importance_map(patch)
    assert weights.shape == patch and weights.dtype == torch.float32
    assert weights.max().item() == 1.0
    assert (weights > 0).all()
    for axis in range(len(patch)):
        assert torch.equal(weights, weights.flip(axis))


def test_gaussian_map_equals_nnunet_construction_on_odd_patch():
    """nnU-Net: a delta at the centre smoothed by scipy's gaussian_filter (σ = patch/8), over its maximum;
    on odd patches the centres coincide."""
    patch = (33, 25, 17)
    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    expected = ndimage.gaussian_filter(delta, [p / 8 for p in patch], 0, mode="constant", cval=0)
    expected /= expected.max()
    torch.testing.assert_close(gaussian_importance_map(patch), torch.from_numpy(expected).float(),
                               atol=1e-6, rtol=1e-5)


def test_gaussian_map_replaces_underflow_by_smallest_value():
    weights = gaussian_importance_map((64,), sigma_scale=0.005)
    assert (weights > 0).all()
    assert weights[0] == weights[1] == weights.min()  # both underflowed and got the smallest non-zero value


def test_gaussian_map_monai_convention_equals_monai():
    patch = (24, 17, 32)
    ours = gaussian_importance_map(patch, convention="monai")
    theirs = monai_utils.compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
    torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize(("size", "patch", "step", "expected"), [
    (256, 96, 0.5, [0, 40, 80, 120, 160]),
    (96, 96, 0.5, [0]),
    (100, 96, 0.5, [0, 4]),
    (500, 128, 0.5, [0, 62, 124, 186, 248, 310, 372]),
    (200, 64, 0.25, [0, 15, 30, 45, 60, 76, 91, 106, 121, 136]),
    (300, 100, 1.0, [0, 100, 200]),
])
def test_positions_follow_nnunet_formula(size, patch, step, expected):
    assert sliding_window_positions([size], [patch], step) == [expected]
    n = math.ceil((size - patch) / (patch * step)) + 1
    assert len(expected) == n


@pytest.mark.parametrize("convention", ["nnunet", "monai"])
@pytest.mark.parametrize(("size", "patch", "step"), [((37, 64, 50), (16, 32, 50), 0.5),
                                                     ((90, 31), (20, 7), 0.3)])
def test_positions_cover_the_image(size, patch, step, convention):
    covered = np.zeros(size, dtype=bool)
    for corner in itertools.product(*sliding_window_positions(size, patch, step, convention=convention)):
        assert all(0 <= c <= s - p for c, s, p in zip(corner, size, patch, strict=True))
        covered[tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))] = True
    assert covered.all()


def test_positions_monai_convention_equals_monai_slices():
    size, patch = (256, 100, 64), (96, 48, 64)
    interval = [int(p * 0.5) if p != s else p for s, p in zip(size, patch, strict=True)]
    expected = sorted({tuple(s.start for s in slices)
                       for slices in monai_utils.dense_patch_slices(size, patch, interval)})
    ours = sorted(itertools.product(*sliding_window_positions(size, patch, 0.5, convention="monai")))
    assert ours == expected


def test_positions_reject_bad_input():
    with pytest.raises(MedsegError, match="at least the patch"):
        sliding_window_positions((10, 10), (16, 8))
    with pytest.raises(MedsegError, match="step"):
        sliding_window_positions((32,), (16,), 0.0)


# ----------------------------------------------------------------------------------------------------
# Sliding window
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "patch"), [((45, 61, 37), (16, 24, 20)), ((70, 53), (32, 32))])
@pytest.mark.parametrize("convention", ["nnunet", "monai"])
def test_pointwise_predictor_equals_whole_image(size, patch, convention):
    model = pointwise(2, 3, len(size))
    image = torch.randn(2, *size)
    expected = model(image[None])[0].detach()
    ours = sliding_window_inference(model, image, patch, 3, window_batch_size=3, convention=convention)
    assert ours.shape == (3, *size)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_agrees_with_monai_on_a_unet():
    model = create_model("unet", in_channels=1, num_classes=3, spatial_dims=3, features=4, depth=2).eval()
    image = torch.randn(1, 40, 36, 28)
    patch = (16, 16, 16)
    ours = sliding_window_inference(model, image[None], patch, 3, window_batch_size=2, convention="monai")
    reference = monai_reference(model, image, patch)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() < 1e-4
    # The default (nnU-Net) placement differs (36: 0, 7, 13, 20 vs MONAI's 0, 8, 16, 20) and so do the
    # numbers.
    default = sliding_window_inference(model, image, patch, 3, window_batch_size=2)
    assert (default - reference).abs().max().item() > 1e-3


def test_image_smaller_than_patch_is_padded():
    model = create_model("unet", in_channels=1, num_classes=2, spatial_dims=2, features=4, depth=2).eval()
    image = torch.randn(1, 10, 45)
    ours = sliding_window_inference(model, image, (16, 16), 2, convention="monai")
    assert ours.shape == (2, 10, 45)
    reference = monai_reference(model, image, (16, 16))
    assert (ours - reference).abs().max().item() < 1e-4
    conv = pointwise(1, 2, 2)
    torch.testing.assert_close(sliding_window_inference(conv, image, (16, 16), 2),
                               conv(image[None])[0].detach(), atol=1e-5, rtol=1e-5)


def test_predictor_returning_segoutput_and_identity_predictor():
    image = torch.randn(3, 30, 26)
    ours = sliding_window_inference(lambda b: SegOutput(b.clone(), aux=[b[:, :1]]), image, (16, 16), 3)
    torch.testing.assert_close(ours, image)
    identity = sliding_window_inference(lambda b: b, image, (16, 16), 3, mirror_axes=(0, 1))
    torch.testing.assert_close(identity, image)


def test_predictor_with_wrong_output_is_an_error():
    with pytest.raises(MedsegError, match="expected"):
        sliding_window_inference(lambda b: b[:, :1], torch.randn(2, 20, 20), (16, 16), 2)
    with pytest.raises(MedsegError, match="spatial"):
        sliding_window_inference(lambda b: b, torch.randn(20, 20), (16, 16), 1)


def test_cpu_accumulation_equals_device_accumulation():
    model = create_model("unet", in_channels=1, num_classes=2, spatial_dims=3, features=4, depth=2).eval()
    image = torch.randn(1, 24, 30, 20)
    default = sliding_window_inference(model, image, (16, 16, 16), 2)
    on_cpu = sliding_window_inference(model, image, (16, 16, 16), 2, accumulate_device="cpu")
    torch.testing.assert_close(on_cpu, default, atol=0, rtol=0)
    assert choose_accumulate_device(torch.device("cpu"), 10**15) == torch.device("cpu")
    cuda = torch.device("cuda")
    assert choose_accumulate_device(cuda, 2**30, memory_budget=2**29) == torch.device("cpu")
    assert choose_accumulate_device(cuda, 2**28, memory_budget=2**29) == cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_windows_with_cpu_accumulation():
    model = create_model("unet", in_channels=1, num_classes=2, spatial_dims=3, features=4, depth=2).eval()
    image = torch.randn(1, 40, 36, 28)
    on_gpu = sliding_window_inference(model.cuda(), image.cuda(), (16, 16, 16), 2)
    on_cpu = sliding_window_inference(model, image.cuda(), (16, 16, 16), 2, accumulate_device="cpu")
    assert on_gpu.device.type == "cuda" and on_cpu.device.type == "cpu"
    torch.testing.assert_close(on_cpu, on_gpu.cpu(), atol=1e-5, rtol=1e-5)


def test_memory_is_the_accumulator_plus_one_window_batch():
    """No copy of the input per window and no stack of all windows: the peak stays near the output."""
    image = torch.randn(1, 64, 64, 64)
    out_bytes = 2 * image.numel() * 4
    batch_bytes = 4 * 16**3 * 4 * 3  # the window buffer and the batch's logits, with room for temporaries
    peak = measure_peak_memory(lambda: sliding_window_inference(lambda b: b.repeat(1, 2, 1, 1, 1), image,
                                                                (16, 16, 16), 2, window_batch_size=4))
    assert out_bytes <= peak <= out_bytes * 1.6 + batch_bytes


# ----------------------------------------------------------------------------------------------------
# Mirroring TTA
# ----------------------------------------------------------------------------------------------------

def test_mirror_combinations():
    assert mirror_combinations((2, 0, 1)) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]


def symmetric_conv(spatial_dims: int) -> torch.nn.Module:
    """A 3x3(x3) convolution whose kernels are symmetric under every flip: flip-equivariant."""
    conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1)
    with torch.no_grad():
        kernel = conv.weight.clone()
        for axes in mirror_combinations(range(spatial_dims)):
            kernel += conv.weight.flip([a + 2 for a in axes])
        conv.weight.copy_(kernel)
    return conv.eval()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mirroring_a_flip_equivariant_predictor_changes_nothing(spatial_dims):
    model = symmetric_conv(spatial_dims)
    image = torch.randn(1, *[20] * spatial_dims)
    patch = (12,) * spatial_dims
    plain = sliding_window_inference(model, image, patch, 2)
    mirrored = sliding_window_inference(model, image, patch, 2, mirror_axes=tuple(range(spatial_dims)))
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("spatial_dims", "axes"), [(2, (0, 1)), (3, (0, 2))])
def test_mirroring_equals_the_average_over_flipped_images(spatial_dims, axes):
    """With symmetric window positions (40 = 0, 8, 16, 24 with patch 16) and a symmetric Gaussian, TTA
    inside the windows equals the mean of the sliding-window results of the flipped images."""
    torch.manual_seed(1)
    model = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1).eval()
    image = torch.randn(1, *[40] * spatial_dims)
    patch = (16,) * spatial_dims
    ours = sliding_window_inference(model, image, patch, 2, mirror_axes=axes)
    expected = sliding_window_inference(model, image, patch, 2)
    for combination in mirror_combinations(axes):
        dims = [a + 1 for a in combination]
        expected += sliding_window_inference(model, image.flip(dims), patch, 2).flip(dims)
    expected /= len(mirror_combinations(axes)) + 1
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    plain = sliding_window_inference(model, image, patch, 2)
    assert (ours - plain).abs().max() > 1e-3  # the predictor is not equivariant: TTA changes the result


def test_predict_mirrored_is_the_manual_average():
    model = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    batch = torch.randn(2, 1, 9, 11)
    with torch.no_grad():
        manual = (model(batch) + model(batch.flip(2)).flip(2) + model(batch.flip(3)).flip(3)
                  + model(batch.flip(2, 3)).flip(2, 3)) / 4
        torch.testing.assert_close(predict_mirrored(model, batch, (0, 1)), manual)
    with pytest.raises(MedsegError, match="mirror axes"):
        predict_mirrored(model, batch, (2,))


# ----------------------------------------------------------------------------------------------------
# Whole image, ensembling, conversions
# ----------------------------------------------------------------------------------------------------

def test_whole_image_resizes_to_the_model_and_back():
    seen = []

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.shape))
        return torch.cat([batch, -batch], dim=1)

    image = torch.rand(1, 50, 70)
    logits = whole_image_inference(predictor, image, (32, 32))
    assert seen == [(1, 1, 32, 32)] and logits.shape == (2, 50, 70)
    small = F.interpolate(image[None], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    expected = F.interpolate(small, size=(50, 70), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(logits[0], expected)
    logits.add_(1)  # a normal tensor, not an inference tensor
    same = predict_logits(lambda b: b, image, 1)
    torch.testing.assert_close(same, image)


def test_ensemble_averages_probabilities():
    image = torch.randn(2, 24, 20)
    models = [pointwise(2, 3, 2) for _ in range(3)]
    with torch.no_grad():
        expected = sum(torch.softmax(m(image[None])[0], dim=0) for m in models) / 3
    ours = ensemble_predict(models, image, 3, "multiclass", patch_size=(16, 16))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        expected = sum(torch.sigmoid(m(image[None])[0]) for m in models) / 3
    ours = ensemble_predict(models, image, 3, "multilabel")
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(MedsegError):
        ensemble_predict([], image, 3, "multiclass")


def test_logits_to_probabilities_and_labels():
    logits = torch.randn(4, 7, 5, 3)
    probabilities = logits_to_probabilities(logits, "multiclass")
    torch.testing.assert_close(probabilities, torch.softmax(logits, dim=0))
    labels = probabilities_to_labels(probabilities, "multiclass")
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), logits.argmax(dim=0))
    assert torch.equal(logits_to_labels(logits, "multiclass"), labels)
    sigmoid = logits_to_probabilities(logits, "multilabel")
    torch.testing.assert_close(sigmoid, torch.sigmoid(logits))
    for threshold in (0.3, 0.5, 0.8):
        expected = (torch.sigmoid(logits) > threshold).to(torch.uint8)
        assert torch.equal(probabilities_to_labels(sigmoid, "multilabel", threshold), expected)
        assert torch.equal(logits_to_labels(logits, "multilabel", threshold), expected)
    binary = probabilities_to_labels(torch.sigmoid(logits[:1]), "binary")
    assert binary.shape == (7, 5, 3) and torch.equal(binary, (logits[0] > 0).to(torch.uint8))
    copy = logits.clone()
    assert logits_to_probabilities(copy, "multiclass", inplace=True) is copy
    torch.testing.assert_close(copy, probabilities)
    with pytest.raises(MedsegError, match="binary"):
        logits_to_probabilities(logits, "binary")
    with pytest.raises(MedsegError, match="label mode"):
        logits_to_labels(logits, "softmax")


def test_label_conversions_of_numpy_arrays_equal_the_tensor_ones() -> None:
    logits = torch.randn(4, 7, 5, 3)
    array = logits.numpy()
    for mode in ("multiclass", "multilabel"):
        ours = logits_to_labels(array, mode, 0.3)
        assert isinstance(ours, np.ndarray) and ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, logits_to_labels(logits, mode, 0.3).numpy())
    probabilities = np.array([[[0.2, 0.5, 0.7]]])
    np.testing.assert_array_equal(probabilities_to_labels(probabilities, "binary"), [[0, 0, 1]])
    inclusive = probabilities_to_labels(probabilities, "binary", inclusive=True)
    np.testing.assert_array_equal(inclusive, [[0, 1, 1]])
    assert torch.equal(probabilities_to_labels(torch.from_numpy(probabilities), "binary", inclusive=True),
                       torch.tensor([[0, 1, 1]], dtype=torch.uint8))
