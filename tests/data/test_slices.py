"""2.5D and tri-planar slicing (medseg.data.slices, medseg.engine.slice_inference): windows, replicate
padding, rebuilds, averaging and the training sampler, on hand-made volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.data.sampling import class_locations
from medseg.data.slices import (
    SliceSampler,
    resolve_slice_axes,
    slice_window,
    slice_windows,
    window_indices,
)
from medseg.engine.slice_inference import SlicePredictor, logits_of, mean_probabilities, predict_by_slices
from medseg.errors import MedsegError


def coordinate_volume(shape: tuple[int, int, int] = (4, 5, 6)) -> np.ndarray:
    """Two channels: channel 0 holds 100 z + 10 y + x, channel 1 the same plus 1000."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    code = (100 * z + 10 * y + x).astype(np.float32)
    return np.stack([code, code + 1000])


def test_window_indices_repeat_the_edge_slices():
    assert window_indices([0, 2, 4], k=2, extent=5).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4],
                                                                   [2, 3, 4, 4, 4]]
    assert window_indices([1], k=0, extent=3).tolist() == [[1]]
    with pytest.raises(MedsegError, match="k must be >= 0"):
        window_indices([0], k=-1, extent=3)
    with pytest.raises(MedsegError, match="out of range"):
        window_indices([3], k=1, extent=3)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_windows_are_channel_major_neighbour_slices(axis):
    volume = coordinate_volume()
    extent = volume.shape[axis + 1]
    for index in range(extent):
        window = slice_window(volume, axis, index, k=2)
        assert window.shape == (2 * 5, *np.delete(volume.shape[1:], axis))
        for c in range(2):
            for j, offset in enumerate(range(-2, 3)):
                neighbour = min(max(index + offset, 0), extent - 1)
                expected = np.take(volume[c], neighbour, axis=axis)
                np.testing.assert_array_equal(window[c * 5 + j], expected)


def test_numpy_and_torch_windows_agree():
    volume = coordinate_volume()
    for axis in range(3):
        indices = range(volume.shape[axis + 1])
        windows = slice_windows(torch.from_numpy(volume), axis, 1, indices)
        assert isinstance(windows, torch.Tensor)
        np.testing.assert_array_equal(windows.numpy(), slice_windows(volume, axis, 1, indices))


def test_windows_need_a_volume():
    with pytest.raises(MedsegError, match="needs a volume"):
        slice_windows(np.zeros((1, 4, 4), np.float32), 0, 1, [0])


def centre_channels(k: int, channels: int):
    """A '2D model' returning the centre slice of every channel of its window."""
    width = 2 * k + 1
    return lambda batch: batch[:, [c * width + k for c in range(channels)]]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_centre_slice_model_rebuilds_the_input(axis, batch_size):
    volume = torch.from_numpy(coordinate_volume())
    rebuilt = predict_by_slices(centre_channels(2, 2), volume, axis, k=2, batch_size=batch_size)
    assert rebuilt.shape == volume.shape
    torch.testing.assert_close(rebuilt, volume)


@pytest.mark.parametrize("mode", ["multilabel", "multiclass"])  # 2 sigmoid channels: multilabel
def test_triplanar_identity_rebuilds_the_input(mode):
    volume = torch.from_numpy(coordinate_volume()) / 1000  # logits in a range where the round trip is exact
    predictor = SlicePredictor(centre_channels(1, 2), (0, 1, 2), k=1, mode=mode, batch_size=4)
    rebuilt = predictor(volume[None])[0]
    if mode == "multiclass":  # logits are defined up to a constant per voxel: compare the probabilities
        torch.testing.assert_close(rebuilt.softmax(0), volume.softmax(0), atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(rebuilt, volume, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["multilabel", "multiclass"])  # 2 sigmoid channels: multilabel
def test_triplanar_averages_the_probabilities_of_the_three_axes(mode):
    """Each axis of a 3x4x5 volume gives slices of its own shape; the 'model' answers each shape with its own
    constant logits, so the ensemble must be the mean of the three probability vectors."""
    volume = torch.zeros(1, 3, 4, 5)
    answers = {(4, 5): torch.tensor([2.0, -1.0]), (3, 5): torch.tensor([0.5, 0.0]),
               (3, 4): torch.tensor([-3.0, 1.0])}

    def per_shape(batch):
        logits = answers[tuple(batch.shape[2:])]
        return logits.view(1, 2, 1, 1).expand(batch.shape[0], 2, *batch.shape[2:]).clone()

    combined = SlicePredictor(per_shape, (0, 1, 2), k=0, mode=mode)(volume[None])[0]
    convert = (lambda v: v.softmax(0)) if mode == "multiclass" else torch.sigmoid
    expected = torch.stack([convert(v) for v in answers.values()]).mean(0)
    probabilities = convert(combined)
    for voxel in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        torch.testing.assert_close(probabilities[(slice(None), *voxel)], expected, atol=1e-6, rtol=1e-5)
    single = SlicePredictor(per_shape, (1,), k=0, mode=mode)(volume[None])[0]
    torch.testing.assert_close(single[:, 0, 0, 0], answers[(3, 5)])  # one axis: its logits, unchanged


def test_mean_probabilities_and_logits_of_round_trip():
    a, b = torch.tensor([[0.0, 2.0]]), torch.tensor([[4.0, -2.0]])
    mean = mean_probabilities([a, b], "binary")
    torch.testing.assert_close(mean, (torch.sigmoid(a) + torch.sigmoid(b)) / 2)
    torch.testing.assert_close(torch.sigmoid(logits_of(mean, "binary")), mean)
    probs = torch.tensor([[0.2, 0.5], [0.8, 0.5]])
    torch.testing.assert_close(logits_of(probs, "multiclass").softmax(0), probs)
    with pytest.raises(MedsegError, match="at least one"):
        mean_probabilities([], "binary")


def test_slice_axis_resolution():
    assert resolve_slice_axes("auto", (1.0, 1.0, 1.0)) == (0,)  # tie: axial
    assert resolve_slice_axes("auto", (0.8, 0.8, 3.0)) == (2,)  # the coarsest axis
    assert resolve_slice_axes("auto", (5.0, 0.7, 0.7)) == (0,)
    assert resolve_slice_axes("auto", (1.0, 2.0, 2.0)) == (1,)  # first of the coarsest
    assert resolve_slice_axes("auto", None) == (0,)
    assert resolve_slice_axes("coronal") == (1,) and resolve_slice_axes("sagittal") == (2,)
    assert resolve_slice_axes("axial", (1.0, 1.0, 9.0)) == (0,)  # a named plane ignores the spacing
    assert resolve_slice_axes("triplanar") == (0, 1, 2)
    with pytest.raises(MedsegError, match="expected auto"):
        resolve_slice_axes("oblique")


def lesion_case(shape=(9, 12, 10), voxel=(6, 3, 7)):
    """Image channel 0 = slice index along axis 0; one foreground voxel; its locations."""
    image = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape)[None].copy()
    label = np.zeros((1, *shape), np.uint8)
    label[(0, *voxel)] = 2
    return image, label, class_locations(label)


def test_sampler_centres_foreground_samples_on_a_foreground_slice():
    image, label, locations = lesion_case()
    sampler = SliceSampler((8, 8), k=1, axes=(0,), foreground_fraction=1.0, seed=0)
    images, labels = sampler.sample_batch([(image, label, locations)] * 6, np.random.default_rng(1))
    assert images.shape == (6, 3, 8, 8) and images.dtype == np.float32
    assert labels.shape == (6, 1, 8, 8) and labels.dtype == np.uint8
    assert np.all(images[:, 1] == 6) and np.all(images[:, 0] == 5) and np.all(images[:, 2] == 7)
    assert np.all(labels.reshape(6, -1).max(1) == 2)  # the foreground voxel lies in every patch


def test_sampler_uniform_samples_pair_image_and_label_slices():
    image, label, locations = lesion_case()
    label[0] = np.arange(9)[:, None, None]  # the label value is the slice index
    sampler = SliceSampler((12, 10), k=2, axes=(0,), foreground_fraction=0.0, seed=0)
    images, labels = sampler.sample_batch([(image, label, locations)] * 16, np.random.default_rng(2))
    centres = images[:, 2, 0, 0]
    assert len(set(centres.tolist())) > 1  # different slices are drawn
    np.testing.assert_array_equal(labels[:, 0, 0, 0], centres)
    np.testing.assert_array_equal(images[:, 0, 0, 0], np.clip(centres - 2, 0, 8))  # replicate padding


def test_triplanar_sampler_draws_every_axis_and_pads_to_the_patch():
    image, label, locations = lesion_case()
    sampler = SliceSampler((16, 16), k=0, axes=(0, 1, 2), foreground_fraction=0.5, seed=0)
    rng = np.random.default_rng(3)
    axes = {sampler.sample_into(image, label, locations, False, rng, np.zeros((1, 16, 16), np.float32),
                                np.zeros((1, 16, 16), np.uint8))[0] for _ in range(30)}
    assert axes == {0, 1, 2}
    images, _ = sampler.sample_batch([(image, label, locations)] * 4, rng)
    assert images.shape == (4, 1, 16, 16)


def test_sampler_rejects_bad_settings():
    with pytest.raises(MedsegError, match="2 values"):
        SliceSampler((8, 8, 8), k=1)
    with pytest.raises(MedsegError, match="k must be >= 0"):
        SliceSampler((8, 8), k=-1)
    with pytest.raises(MedsegError, match="slice axes"):
        SliceSampler((8, 8), k=1, axes=(3,))
