"""Patch sampling: class locations, the foreground share of a batch, padding, seeding, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.sampling import PatchSampler, class_locations, copy_patch
from medseg.errors import MedsegError


def blobs_case(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image of values >= 1 and a label with two small classes, one touching the border."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(1, 2, (2, *shape)).astype(np.float32)
    label = np.zeros((1, *shape), np.uint8)
    label[(0, *(slice(3, 5) for _ in shape))] = 1
    label[(0, *(slice(n - 2, n) for n in shape))] = 3
    return image, label


def test_class_locations_sample_each_class() -> None:
    _, label = blobs_case((20, 30))
    label[0, 8:18, 8:28] = 2  # 200 voxels
    locations = class_locations(label, max_per_class=50, rng=np.random.default_rng(0))
    assert sorted(locations) == [1, 2, 3]
    assert len(locations[1]) == 4 and len(locations[2]) == 50 and locations[2].shape[1] == 2
    for value, coords in locations.items():
        assert np.all(label[(0, *coords.T)] == value)
        assert len({tuple(c) for c in coords}) == len(coords)  # no repeats


def test_class_locations_of_multilabel_regions_are_per_channel() -> None:
    label = np.zeros((3, 4, 4, 4), np.uint8)
    label[0, 1:3, 1:3, 1:3] = 1
    label[2, 0, 0, 0] = 1
    locations = class_locations(label)
    assert sorted(locations) == [0, 2] and len(locations[0]) == 8
    np.testing.assert_array_equal(locations[2], [[0, 0, 0]])


@pytest.mark.parametrize(("n", "fraction", "expected"), [
    (12, 0.33, 4), (2, 0.33, 1), (3, 0.33, 1), (4, 0.5, 2), (5, 0.0, 0), (5, 1.0, 5)])
def test_foreground_share_is_the_end_of_the_batch(n: int, fraction: float, expected: int) -> None:
    flags = PatchSampler((4, 4), fraction, seed=0).foreground_flags(n)
    assert flags.sum() == expected and np.all(flags[n - expected:])


def test_single_patch_batches_are_foreground_with_the_fraction_as_probability() -> None:
    sampler = PatchSampler((4, 4), 0.33, seed=0)
    share = np.mean([sampler.foreground_flags(1)[0] for _ in range(3000)])
    assert 0.29 < share < 0.37


@pytest.mark.parametrize("shape", [(64, 80), (24, 28, 32)])
def test_foreground_patches_are_centred_on_foreground(shape: tuple[int, ...]) -> None:
    image, label = blobs_case(shape)
    locations = class_locations(label)
    patch = (9,) * len(shape)
    sampler = PatchSampler(patch, foreground_fraction=0.5, seed=3, image_pad_value=-1, clamp_to_image=False)
    centre = (slice(None), 0, *(p // 2 for p in patch))
    classes_seen = set()
    for _ in range(20):
        images, labels = sampler.sample_batch([(image, label, locations)] * 6)
        assert images.shape == (6, 2, *patch) and labels.shape == (6, 1, *patch)
        fg_centres = labels[centre][3:]
        assert np.all(fg_centres > 0)
        classes_seen |= set(fg_centres.tolist())
    assert classes_seen == {1, 3}  # a random class present in the case, the border one included


@pytest.mark.parametrize("shape", [(64, 80), (24, 28, 32)])
def test_clamped_foreground_patches_stay_inside_and_contain_foreground(shape: tuple[int, ...]) -> None:
    image, label = blobs_case(shape)
    sampler = PatchSampler((10,) * len(shape), foreground_fraction=1.0, seed=0, image_pad_value=-1)
    images, labels = sampler.sample_batch([(image, label, class_locations(label))] * 8)
    assert images.min() >= 1  # no padding: the image is larger than the patch
    assert all(np.any(lab > 0) for lab in labels)


def test_random_patches_cover_the_image_without_padding() -> None:
    image, label = blobs_case((30, 40))
    sampler = PatchSampler((8, 8), foreground_fraction=0.0, seed=1, image_pad_value=-1)
    images, _ = sampler.sample_batch([(image, label, None)] * 200)
    assert images.min() >= 1
    seen = np.zeros((30, 40), bool)
    for i in range(200):  # locate each patch by its values
        y, x = np.argwhere(image[0] == images[i, 0, 0, 0])[0]
        seen[y:y + 8, x:x + 8] = True
    assert seen[0, 0] and seen[-1, -1] and seen.mean() > 0.95


@pytest.mark.parametrize("shape", [(5, 7), (3, 6, 4)])
def test_image_smaller_than_patch_is_centred_and_padded(shape: tuple[int, ...]) -> None:
    image, label = blobs_case(shape)
    label[:] = 1
    patch = (10,) * len(shape)
    sampler = PatchSampler(patch, foreground_fraction=0.5, seed=0, image_pad_value=-5, label_pad_value=255)
    images, labels = sampler.sample_batch([(image, label, class_locations(label))] * 2)
    assert images.shape == (2, 2, *patch)
    offsets = [(p - n) // 2 for p, n in zip(patch, shape, strict=True)]
    inside = (slice(None), *(slice(o, o + n) for o, n in zip(offsets, shape, strict=True)))
    for i in range(2):
        np.testing.assert_array_equal(images[i][inside], image)
    assert np.sum(images == -5) == images.size - 2 * image.size
    assert set(np.unique(labels)) == {1, 255}


def test_ignore_label_padding_widens_the_label_dtype() -> None:
    image, label = blobs_case((4, 4))
    _, labels = PatchSampler((6, 6), label_pad_value=-1, seed=0).sample(image, label)
    assert labels.dtype == np.int16 and labels.min() == -1


@pytest.mark.parametrize("shape", [(40, 50), (20, 22, 24)])
def test_sampling_is_reproducible_for_a_seed(shape: tuple[int, ...]) -> None:
    image, label = blobs_case(shape)
    cases = [(image, label, class_locations(label))] * 4
    patch = (8,) * len(shape)
    a = PatchSampler(patch, seed=7).sample_batch(cases)
    b = PatchSampler(patch, seed=7).sample_batch(cases)
    c = PatchSampler(patch, seed=8).sample_batch(cases)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_copy_patch_windows_partly_outside() -> None:
    array = np.arange(20).reshape(1, 4, 5)
    out = np.full((1, 3, 3), -1)
    copy_patch(array, (-1, 3), out)
    np.testing.assert_array_equal(out[0], [[-1, -1, -1], [3, 4, -1], [8, 9, -1]])


def test_patch_dimensions_must_match() -> None:
    image, label = blobs_case((10, 10))
    with pytest.raises(MedsegError, match="patch size"):
        PatchSampler((4, 4, 4), seed=0).sample(image, label)
