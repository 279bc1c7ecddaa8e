"""Preprocessing steps: crop/uncrop, resampling (with nnU-Net's anisotropic rule), normalisation, resize,
label mapping, and the Preprocessor chain with its dict round trip and revert."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from medseg.data.geometry import Geometry
from medseg.data.preprocess import (
    Preprocessor,
    compute_ct_stats,
    crop_geometry,
    crop_to_nonzero,
    lowres_axis,
    map_labels,
    normalize,
    resample,
    resample_label,
    resize,
    uncrop,
)
from medseg.errors import MedsegError


def geometry(spacing: tuple[float, ...], shape: tuple[int, ...], direction: np.ndarray | None = None
             ) -> Geometry:
    d = len(spacing)
    direction = np.eye(d) if direction is None else direction
    return Geometry(spacing=spacing, origin=tuple(float(i + 1) for i in range(d)),
                    direction=tuple(direction.ravel().tolist()), shape=shape)


def physical_point(geom: Geometry, index: tuple[int, ...]) -> np.ndarray:
    """ITK: origin + direction @ (spacing * index), with index and spacing in (x, y, z) order."""
    d = len(index)
    idx_xyz = np.array(index[::-1], dtype=float)
    spacing_xyz = np.array(geom.spacing[::-1], dtype=float)
    return np.array(geom.origin) + np.array(geom.direction).reshape(d, d) @ (spacing_xyz * idx_xyz)


# ------------------------------------------------------------------ crop


@pytest.mark.parametrize("shape", [(12, 15), (9, 12, 15)])
def test_crop_to_nonzero_finds_box_and_uncrop_restores(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((2, *shape), np.float32)
    inner = tuple(slice(2, n - 3) for n in shape)
    image[(0, *inner)] = rng.uniform(1, 2, [n - 5 for n in shape])
    image[(1, *(slice(1, 2) for _ in shape))] = 5.0  # a voxel non-zero only in channel 1 widens the box
    label = (image[:1] > 1.5).astype(np.uint8)
    cropped, cropped_label, box = crop_to_nonzero(image, label)
    assert box == tuple((1, n - 3) for n in shape)
    assert cropped.shape == (2, *[n - 4 for n in shape]) and cropped_label.shape[1:] == cropped.shape[1:]
    np.testing.assert_array_equal(uncrop(cropped, box, shape), image)
    np.testing.assert_array_equal(uncrop(cropped_label, box, shape), label)


def test_crop_of_empty_image_keeps_everything() -> None:
    image = np.zeros((1, 4, 5))
    cropped, label, box = crop_to_nonzero(image)
    assert box == ((0, 4), (0, 5)) and cropped.shape == image.shape and label is None


def test_crop_geometry_moves_origin_to_the_box_start() -> None:
    angle = 0.3
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    geom = geometry((3.0, 0.8, 0.6), (10, 20, 30), direction)
    box = ((2, 8), (5, 15), (7, 30))
    cropped = crop_geometry(geom, box)
    np.testing.assert_allclose(cropped.origin, physical_point(geom, (2, 5, 7)))
    assert cropped.shape == (6, 10, 23) and cropped.spacing == geom.spacing


# ------------------------------------------------------------------ resampling


def test_resample_shape_follows_spacing_ratio_and_keeps_origin() -> None:
    image = np.random.default_rng(0).normal(size=(1, 10, 20, 30)).astype(np.float32)
    geom = geometry((2.0, 1.0, 0.5), (10, 20, 30))
    out, new = resample(image, geom, (1.0, 1.0, 1.0), order=3)
    assert out.shape == (1, 20, 20, 15) and out.dtype == np.float32
    assert new.spacing == (1.0, 1.0, 1.0) and new.shape == (20, 20, 15) and new.origin == geom.origin


def test_linear_resampling_reproduces_a_linear_ramp() -> None:
    z, y, x = np.meshgrid(np.arange(6), np.arange(7), np.arange(8), indexing="ij")
    ramp = (2.0 * z + 3.0 * y - x)[None].astype(np.float32)
    out, _ = resample(ramp, geometry((1.0, 1.0, 1.0), ramp.shape[1:]), (0.5, 0.5, 0.5), order=1)
    zi, yi, xi = np.meshgrid(*(np.arange(n) * 0.5 for n in out.shape[1:]), indexing="ij")
    inside = (zi <= 5) & (yi <= 6) & (xi <= 7)
    np.testing.assert_allclose(out[0][inside], (2 * zi + 3 * yi - xi)[inside], atol=1e-5)


def test_label_resampling_nearest_keeps_the_label_set() -> None:
    label = np.random.default_rng(1).choice(np.array([0, 2, 7], np.uint8), size=(1, 9, 11))
    geom = geometry((1.0, 1.0), (9, 11))
    for mode in ("nearest", "linear_argmax"):
        out, new = resample_label(label, geom, (0.7, 1.6), mode=mode)
        assert out.dtype == np.uint8 and out.shape == (1, 13, 7) and new.spacing == (0.7, 1.6)
        assert set(np.unique(out)) <= {0, 2, 7} and len(np.unique(out)) == 3


def test_linear_argmax_on_an_exact_upsampling_keeps_labels_on_the_grid() -> None:
    label = np.zeros((1, 8, 8), np.uint8)
    label[0, 2:6, 3:7] = 1
    out, _ = resample_label(label, geometry((1.0, 1.0), (8, 8)), (0.5, 0.5), mode="linear_argmax")
    np.testing.assert_array_equal(out[0, ::2, ::2], label[0])  # original voxel centres keep their value


def test_anisotropy_rule() -> None:
    assert lowres_axis((5.0, 1.0, 1.0)) == 0
    assert lowres_axis((1.0, 0.8, 3.2)) == 2
    assert lowres_axis((2.0, 1.0, 1.0)) is None  # ratio not above 3
    assert lowres_axis((5.0, 5.0, 1.0)) is None  # two coarse axes: no separate axis (nnU-Net)
    assert lowres_axis((5.0, 1.0)) is None  # 2D


def test_anisotropic_data_is_resampled_with_nearest_along_the_low_resolution_axis() -> None:
    slices = np.arange(6, dtype=np.float32) * 10
    volume = np.broadcast_to(slices[:, None, None], (6, 8, 8))[None].copy()
    out, _ = resample(volume, geometry((5.0, 1.0, 1.0), (6, 8, 8)), (2.5, 1.0, 1.0), order=1)
    assert out.shape == (1, 12, 8, 8)
    assert set(np.unique(out)) <= set(slices.tolist())  # no blend between slices
    iso, _ = resample(volume, geometry((2.0, 1.0, 1.0), (6, 8, 8)), (1.0, 1.0, 1.0), order=1)
    assert 5.0 in np.unique(iso)  # isotropic enough: linear along z too, blends appear


# ------------------------------------------------------------------ normalisation


def test_zscore_per_channel() -> None:
    noise = np.random.default_rng(0).normal(50, 7, (10, 12))
    image = np.stack([noise, np.linspace(0, 3, 120).reshape(10, 12)])
    out = normalize(image, "zscore")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(2, -1).mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(out.reshape(2, -1).std(1), 1, atol=1e-4)


def test_zscore_over_the_nonzero_mask_leaves_the_background_at_zero() -> None:
    image = np.zeros((1, 10, 10), np.float32)
    image[0, 2:8, 2:8] = np.random.default_rng(0).uniform(100, 200, (6, 6))
    out = normalize(image, "zscore", {"nonzero_only": True})
    inside = out[0, 2:8, 2:8]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-4
    assert np.all(out[0][image[0] == 0] == 0)


def test_ct_statistics_and_clipping() -> None:
    rng = np.random.default_rng(0)
    images = [rng.normal(40, 30, (1, 20, 20)) for _ in range(3)]
    labels = [np.zeros((1, 20, 20), np.uint8) for _ in range(3)]
    for label in labels:
        label[0, 5:15, 5:15] = 1
    stats = compute_ct_stats(zip(images, labels, strict=True))
    foreground = np.concatenate([im[0, 5:15, 5:15].ravel() for im in images])
    assert stats["mean"][0] == pytest.approx(foreground.mean())
    assert stats["std"][0] == pytest.approx(foreground.std())
    low, high = np.percentile(foreground, [0.5, 99.5])
    assert stats["clip_low"][0] == pytest.approx(low) and stats["clip_high"][0] == pytest.approx(high)
    image = np.array([[[-1000.0, 40.0, 3000.0]]])
    out = normalize(image, "ct", {"mean": 40.0, "std": 20.0, "clip_low": -10.0, "clip_high": 90.0})
    np.testing.assert_allclose(out[0, 0], [(-10 - 40) / 20, 0.0, (90 - 40) / 20])


def test_ct_needs_its_statistics() -> None:
    with pytest.raises(MedsegError, match="clip_low"):
        normalize(np.zeros((1, 3, 3)), "ct", {"mean": 0, "std": 1})
    with pytest.raises(MedsegError, match="no foreground"):
        compute_ct_stats([(np.ones((1, 3, 3)), np.zeros((1, 3, 3)))])


def test_rgb_scaling_and_mean_std() -> None:
    image = np.array([[[0, 255]], [[51, 102]], [[255, 255]]], np.uint8)
    np.testing.assert_allclose(normalize(image, "rgb")[:, 0], [[0, 1], [0.2, 0.4], [1, 1]], atol=1e-6)
    out = normalize(image, "rgb", {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.25, 1.0]})
    np.testing.assert_allclose(out[:, 0], [[-1, 1], [-1.2, -0.4], [0.5, 0.5]], atol=1e-6)
    assert normalize(image, "none").dtype == np.float32


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(MedsegError, match="'minmax'.*ct, zscore, rgb, none"):
        normalize(np.zeros((1, 2, 2)), "minmax")


# ------------------------------------------------------------------ resize and labels


@pytest.mark.parametrize(("shape", "target"), [((37, 53), (32, 32)), ((9, 10, 11), (12, 8, 16))])
def test_resize_shapes_and_label_values(shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, *shape)).astype(np.float32)
    label = rng.choice(np.array([0, 1, 4], np.uint8), size=(1, *shape))
    out = resize(image, target)
    assert out.shape == (3, *target) and out.dtype == np.float32
    out_label = resize(label, target, is_label=True)
    assert out_label.shape == (1, *target) and out_label.dtype == np.uint8
    assert set(np.unique(out_label)) <= {0, 1, 4}


def test_resize_of_a_constant_image_stays_constant() -> None:
    out = resize(np.full((1, 40, 30), 3.0, np.float32), (16, 16))
    np.testing.assert_allclose(out, 3.0, atol=1e-5)


def test_map_label_values() -> None:
    label = np.array([[[0, 1, 2], [4, 4, 3]]], np.uint8)
    out = map_labels(label, {4: 3, 3: 300, "1": 0})
    np.testing.assert_array_equal(out, [[[0, 0, 2], [3, 3, 300]]])
    assert out.dtype == np.int16


def test_brats_regions_from_labels() -> None:
    label = np.array([[[0, 1, 2, 4], [4, 2, 1, 0]]], np.uint8)
    out = map_labels(label, {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]})
    assert out.shape == (3, 2, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], [[0, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(out[1], [[0, 1, 0, 1], [1, 0, 1, 0]])
    np.testing.assert_array_equal(out[2], [[0, 0, 0, 1], [1, 0, 0, 0]])


@pytest.mark.parametrize(("mapping", "key"), [
    ({"WT": [1, 2], "TC": "1,4"}, "'TC'"),
    ({"WT": [1, "x"]}, "'WT'"),
    ({1: 2, 3: 2.5}, "3"),
    ({"bg": 0}, "'bg'"),
])
def test_invalid_label_mapping_names_the_key(mapping: dict, key: str) -> None:
    with pytest.raises(MedsegError, match=key):
        map_labels(np.zeros((1, 2, 2), np.uint8), mapping)


# ------------------------------------------------------------------ the chain


def test_preprocessor_dict_round_trip_through_json_and_yaml() -> None:
    stats = {"mean": 1.0, "std": 2.0, "clip_low": -5, "clip_high": 9}
    pre = Preprocessor(normalization="ct", norm_stats=stats,
                       target_spacing=(3.0, 0.5, 0.5), crop_nonzero=True, resize_shape=None,
                       label_mapping={1: 0, 2: 1}, image_order=1, label_interpolation="linear_argmax")
    data = pre.to_dict()
    assert Preprocessor.from_dict(json.loads(json.dumps(data))) == pre
    assert Preprocessor.from_dict(yaml.safe_load(yaml.safe_dump(data))) == pre
    assert Preprocessor.from_dict(data).fingerprint() == pre.fingerprint()
    assert Preprocessor(target_spacing=(3.0, 0.5, 0.6)).fingerprint() != Preprocessor(
        target_spacing=(3.0, 0.5, 0.5)).fingerprint()


def test_preprocessor_rejects_bad_config_naming_the_key() -> None:
    with pytest.raises(MedsegError, match="preprocessing.spacing"):
        Preprocessor.from_dict({"spacing": [1, 1]})
    with pytest.raises(MedsegError, match="normalization 'mri'"):
        Preprocessor(normalization="mri")


def test_preprocessor_chain_and_revert_to_the_source_grid() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((1, 8, 12, 10), np.float32)
    image[0, 1:7, 2:11, 1:9] = rng.uniform(1, 5, (6, 9, 8))
    label = np.zeros((1, 8, 12, 10), np.uint8)
    label[0, 2:5, 4:9, 3:7] = 2
    label[0, 5:7, 4:9, 3:7] = 1
    geom = geometry((2.0, 1.0, 1.0), (8, 12, 10))
    pre = Preprocessor(normalization="zscore", norm_stats={"nonzero_only": True},
                       target_spacing=(1.0, 0.5, 0.5), crop_nonzero=True, image_order=1,
                       label_mapping={"all": [1, 2], "core": [2]})
    case = pre(image, label, geom)
    assert case.crop_box == ((1, 7), (2, 11), (1, 9))
    assert case.image.shape == (1, 12, 18, 16) and case.label.shape == (2, 12, 18, 16)
    assert case.geometry.spacing == (1.0, 0.5, 0.5)
    np.testing.assert_allclose(case.geometry.origin, physical_point(geom, (1, 2, 1)))
    back = pre.revert(case.label, case, order=0)
    np.testing.assert_array_equal(back, map_labels(label, pre.label_mapping))


def test_preprocessor_resize_for_fixed_size_models() -> None:
    image = np.random.default_rng(0).integers(0, 256, (3, 50, 70)).astype(np.uint8)
    label = np.zeros((1, 50, 70), np.uint8)
    label[0, 10:30, 20:50] = 1
    pre = Preprocessor(normalization="rgb", resize_shape=(32, 32))
    case = pre(image, label, Geometry.identity((50, 70)))
    assert case.image.shape == (3, 32, 32) and case.label.shape == (1, 32, 32)
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0
    np.testing.assert_allclose(case.geometry.spacing, (50 / 32, 70 / 32))
    back = pre.revert(case.label, case, order=0)
    assert back.shape == (1, 50, 70) and (back == label).mean() > 0.97


def test_resize_and_revert_take_tensors_and_give_the_numpy_results() -> None:
    rng = np.random.default_rng(4)
    image = rng.normal(size=(2, 37, 29)).astype(np.float32)
    label = rng.choice(np.array([0, 1, 3], np.int16), size=(1, 37, 29))
    for target in ((16, 20), (40, 44)):
        out = resize(torch.from_numpy(image), target)
        assert isinstance(out, torch.Tensor)
        np.testing.assert_array_equal(out.numpy(), resize(image, target))
        labels = resize(torch.from_numpy(label), target, is_label=True)
        assert labels.dtype == torch.int16
        np.testing.assert_array_equal(labels.numpy(), resize(label, target, is_label=True))
    volume = rng.normal(size=(1, 12, 20, 18)).astype(np.float32)
    volume[:, :2] = 0  # cropped away
    geometry = Geometry(spacing=(2.5, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        shape=(12, 20, 18))
    prep = Preprocessor(normalization="none", target_spacing=(1.5, 1.2, 1.0), crop_nonzero=True)
    case = prep(volume, None, geometry)
    scores = rng.normal(size=(3, *case.image.shape[1:])).astype(np.float32)
    reverted = prep.revert(torch.from_numpy(scores), case, order=1, fill=-1.0)
    assert isinstance(reverted, torch.Tensor) and reverted.shape == (3, 12, 20, 18)
    np.testing.assert_array_equal(reverted.numpy(), prep.revert(scores, case, order=1, fill=-1.0))
    assert (reverted[:, :2] == -1).all()
