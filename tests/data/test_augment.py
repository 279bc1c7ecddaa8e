"""Tests of the batched augmentation (medseg.data.augment), 2D and 3D."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from medseg.data.augment import AugmentationConfig, BatchAugmenter, gaussian_blur
from medseg.errors import MedsegError

TRANSFORMS = [
    "mirror", "rot90", "rotation", "scale", "shear", "elastic",
    "noise", "blur", "brightness", "contrast", "low_resolution", "gamma",
]  # fmt: skip
INTENSITY = ["noise", "blur", "brightness", "contrast", "low_resolution", "gamma"]
SIZE = {2: 16, 3: 10}


def only(**settings: dict) -> AugmentationConfig:
    """A config with every transform off except the given ones (``name={...settings}``)."""
    data: dict = {name: False for name in TRANSFORMS}
    for name, value in settings.items():
        data[name] = {"enabled": True, **value} if name in TRANSFORMS else value
    return AugmentationConfig.from_dict(data)


def ramp_batch(dims: int, batch: int = 4, channels: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose every voxel is distinct and a label equal to the image's first channel (as int)."""
    shape = (batch, 1, *([SIZE[dims]] * dims))
    label = torch.arange(int(np.prod(shape))).reshape(shape)
    image = torch.cat([label.float() + 1000.0 * c for c in range(channels)], dim=1)
    return image, label


def random_batch(dims: int, batch: int = 3, values: tuple[int, ...] = (0, 3, 7)) -> tuple[torch.Tensor, ...]:
    shape = (batch, *([SIZE[dims]] * dims))
    image = torch.rand(batch, 2, *shape[1:])
    label = torch.tensor(values)[torch.randint(0, len(values), shape)][:, None]
    return image, label


@pytest.mark.parametrize("dims", [2, 3])
def test_everything_disabled_is_the_exact_identity_and_inputs_are_untouched(dims: int) -> None:
    image, label = random_batch(dims)
    image_copy, label_copy = image.clone(), label.clone()
    out_image, out_label = BatchAugmenter(AugmentationConfig.disabled(), dims, seed=1)(image, label)
    assert torch.equal(out_image, image) and torch.equal(out_label, label)
    assert out_image.data_ptr() != image.data_ptr()
    augmented, _ = BatchAugmenter(spatial_dims=dims, seed=1)(image, label)  # the default config
    assert torch.equal(image, image_copy) and torch.equal(label, label_copy)
    assert not torch.equal(augmented, image)


@pytest.mark.parametrize("dims", [2, 3])
def test_flips_are_exact_and_the_same_for_image_and_label(dims: int) -> None:
    image, label = ramp_batch(dims, batch=16)
    out_image, out_label = BatchAugmenter(only(mirror={"p": 0.5}), dims, seed=3)(image, label)
    seen = set()
    for i in range(len(image)):
        matches = [
            axes for n in range(dims + 1) for axes in itertools.combinations(range(2, dims + 2), n)
            if torch.equal(out_image[i], image[i].flip([a - 1 for a in axes]))
        ]  # fmt: skip
        assert len(matches) == 1
        assert torch.equal(out_label[i], label[i].flip([a - 1 for a in matches[0]]))
        seen.add(matches[0])
    assert len(seen) > 2  # flips decided per sample and per axis


@pytest.mark.parametrize("dims", [2, 3])
def test_single_axis_mirror_with_p_one(dims: int) -> None:
    image, label = ramp_batch(dims)
    out_image, out_label = BatchAugmenter(only(mirror={"p": 1.0, "axes": [dims - 1]}), dims)(image, label)
    assert torch.equal(out_image, image.flip(-1)) and torch.equal(out_label, label.flip(-1))


@pytest.mark.parametrize("dims", [2, 3])
def test_rot90_is_exact_and_consistent(dims: int) -> None:
    image, label = ramp_batch(dims, batch=12)
    out_image, out_label = BatchAugmenter(only(rot90={"p": 1.0}), dims, seed=2)(image, label)
    planes = list(itertools.combinations(range(1, dims + 1), 2))
    seen = set()
    for i in range(len(image)):
        candidates = [(k, plane) for k in (1, 2, 3) for plane in planes]
        matches = [(k, p) for k, p in candidates if torch.equal(out_image[i], image[i].rot90(k, p))]
        assert len(matches) == 1  # all voxels distinct: each (k, plane) is a different permutation
        k, plane = matches[0]
        assert torch.equal(out_label[i], label[i].rot90(k, plane))
        seen.add(matches[0])
    assert len(seen) > 2


def test_rot90_needs_a_square_plane() -> None:
    with pytest.raises(MedsegError, match="augmentation.rot90"):
        BatchAugmenter(only(rot90={"p": 1.0}), 2)(torch.rand(1, 1, 8, 6), None)


@pytest.mark.parametrize("dims", [2, 3])
def test_affine_with_zero_rotation_and_unit_scale_is_identity(dims: int) -> None:
    image, label = random_batch(dims)
    config = only(rotation={"p": 1.0, "degrees": [0, 0]}, scale={"p": 1.0, "factor": [1, 1]})
    out_image, out_label = BatchAugmenter(config, dims)(image, label)
    torch.testing.assert_close(out_image, image, atol=1e-5, rtol=0)
    assert torch.equal(out_label, label)


@pytest.mark.parametrize("dims", [2, 3])
def test_affine_rotation_by_90_degrees_matches_the_exact_permutation(dims: int) -> None:
    image, label = ramp_batch(dims, batch=2)
    degrees = [90, 90] if dims == 2 else [[90, 90], [0, 0], [0, 0]]  # 3D: about array axis 0
    out_image, out_label = BatchAugmenter(only(rotation={"p": 1.0, "degrees": degrees}), dims)(image, label)
    # content rotated by +90° in the last two axes (y, x): out[.., i, j] = in[.., j, N-1-i]
    expected_image = image.transpose(-1, -2).flip(-2)
    torch.testing.assert_close(out_image, expected_image, atol=1e-3, rtol=1e-5)
    assert torch.equal(out_label, label.transpose(-1, -2).flip(-2))


def test_scale_above_one_enlarges_the_content() -> None:
    n = 16
    x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2  # centred ramp along x
    image = x.expand(1, 1, n, n).clone()
    out, _ = BatchAugmenter(only(scale={"p": 1.0, "factor": [2, 2]}), 2)(image, None)
    # out(v) = in(v / 2): the slope halves around the centre (bilinear is exact on a linear ramp)
    torch.testing.assert_close(out[0, 0, 4:12, 4:12], image[0, 0, 4:12, 4:12] / 2, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_labels_keep_their_value_set_after_rotation_scale_shear_and_elastic(dims: int) -> None:
    image, label = random_batch(dims, batch=4)
    spatial = {"p": 1.0}
    elastic = {"p": 1.0, "magnitude": [0.05, 0.1]}
    config = only(rotation=spatial, scale=spatial, shear=spatial, elastic=elastic)
    out_image, out_label = BatchAugmenter(config, dims, seed=4)(image, label)
    assert out_label.dtype == label.dtype and out_label.shape == label.shape
    assert set(out_label.unique().tolist()) <= {0, 3, 7}
    assert not torch.equal(out_label, label) and not torch.equal(out_image, image)


@pytest.mark.parametrize("dims", [2, 3])
def test_label_padding_uses_the_ignore_value_outside_the_field_of_view(dims: int) -> None:
    image, label = random_batch(dims, batch=2)
    config = only(scale={"p": 1.0, "factor": [0.5, 0.5]}, label_padding=255, image_padding="zeros")
    out_image, out_label = BatchAugmenter(config, dims)(image, label)
    assert set(out_label.unique().tolist()) == {0, 3, 7, 255}
    corner = (slice(None), slice(None)) + (0,) * dims
    assert (out_label[corner] == 255).all() and (out_image[corner] == 0).all()
    border, _ = BatchAugmenter(only(scale={"p": 1.0, "factor": [0.5, 0.5]}, image_padding="border"), dims)(
        image, label
    )
    assert (border[corner] != 0).all()


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.uint8])
def test_multilabel_maps_keep_dtype_and_values(dtype: torch.dtype) -> None:
    label = (torch.rand(3, 3, 16, 16) > 0.5).to(dtype)
    image = torch.rand(3, 1, 16, 16)
    config = only(rotation={"p": 1.0}, elastic={"p": 1.0})
    _, out = BatchAugmenter(config, 2, seed=5)(image, label)
    assert out.dtype == dtype and set(out.float().unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("dims", [2, 3])
def test_same_seed_same_output_different_seed_different_output(dims: int) -> None:
    image, label = random_batch(dims, batch=4)
    data: dict = {name: {"p": 0.7} for name in TRANSFORMS if name != "rot90"}
    config = AugmentationConfig.from_dict(data)
    first = [BatchAugmenter(config, dims, seed=7)(image, label) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(first[0], first[1], strict=True))
    other = BatchAugmenter(config, dims, seed=8)(image, label)
    assert not torch.equal(other[0], first[0][0])
    augmenter = BatchAugmenter(config, dims, seed=7)
    augmenter(image, label)
    assert not torch.equal(augmenter(image, label)[0], first[0][0])  # the stream advances between calls


def test_decisions_are_per_sample_with_the_configured_probability() -> None:
    image = torch.ones(400, 1, 4, 4)
    out, _ = BatchAugmenter(only(brightness={"p": 0.5, "factor": [2.0, 3.0]}), 2, seed=11)(image, None)
    changed = (out != image).flatten(1).any(dim=1).float()
    assert abs(changed.mean().item() - 0.5) < 0.08
    assert torch.equal((out[changed.bool()] >= 2.0), torch.ones_like(out[changed.bool()], dtype=torch.bool))


def test_grid_sample_runs_once_per_tensor_and_not_at_all_without_spatial_transform(monkeypatch) -> None:
    calls = []
    original = F.grid_sample
    monkeypatch.setattr(F, "grid_sample", lambda *a, **k: calls.append(a[0].shape[0]) or original(*a, **k))
    image, label = random_batch(2, batch=8)
    BatchAugmenter(only(**{name: {"p": 1.0} for name in INTENSITY}), 2)(image, label)
    assert calls == []
    BatchAugmenter(only(rotation={"p": 0.5}, elastic={"p": 0.5}), 2, seed=1)(image, label)
    assert len(calls) == 2 and calls[0] == calls[1] < 8  # only the samples that moved are resampled


@pytest.mark.parametrize("dims", [2, 3])
def test_intensity_transforms_leave_labels_untouched(dims: int) -> None:
    image, label = random_batch(dims)
    config = only(**{name: {"p": 1.0} for name in INTENSITY})
    out_image, out_label = BatchAugmenter(config, dims)(image, label)
    assert torch.equal(out_label, label) and not torch.equal(out_image, image)
    assert out_image.shape == image.shape and torch.isfinite(out_image).all()


def test_noise_standard_deviation() -> None:
    image = torch.zeros(8, 1, 64, 64)
    out, _ = BatchAugmenter(only(noise={"p": 1.0, "std": [0.2, 0.2]}), 2)(image, None)
    assert abs(out.std().item() - 0.2) < 0.005 and abs(out.mean().item()) < 0.005
    varying, _ = BatchAugmenter(only(noise={"p": 1.0, "std": [0.05, 0.3]}), 2, seed=3)(image, None)
    per_sample = varying.flatten(1).std(dim=1)
    assert (per_sample > 0.045).all() and (per_sample < 0.31).all()
    assert per_sample.max() - per_sample.min() > 0.05  # drawn per sample


@pytest.mark.parametrize("dims", [2, 3])
def test_blur_matches_scipy_and_reduces_high_frequencies(dims: int) -> None:
    image = torch.rand(2, 1, *([SIZE[dims] + 4] * dims), dtype=torch.float64)
    out, _ = BatchAugmenter(only(blur={"p": 1.0, "sigma": [1.0, 1.0]}), dims)(image, None)
    expected = gaussian_filter(image[0, 0].numpy(), sigma=1.0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-10)

    def high_frequency_energy(x: torch.Tensor) -> float:
        return sum(x.diff(dim=d).square().sum().item() for d in range(2, dims + 2))

    assert high_frequency_energy(out) < 0.3 * high_frequency_energy(image)


def test_blur_sigma_differs_per_sample_and_axis() -> None:
    image = torch.zeros(2, 1, 21, 21)
    image[:, :, 10, 10] = 1.0
    sigma = torch.tensor([[[1.0, 1.0]], [[0.5, 2.0]]])
    out = gaussian_blur(image, sigma)
    assert torch.allclose(out[0, 0], out[0, 0].T, atol=1e-7)
    delta = np.zeros(21)
    delta[10] = 1.0
    narrow_y, wide_x = (gaussian_filter1d(delta, s, mode="nearest", truncate=3.0) for s in (0.5, 2.0))
    np.testing.assert_allclose(out[1, 0].numpy(), np.outer(narrow_y, wide_x), atol=1e-6)
    torch.testing.assert_close(out.sum(dim=(2, 3)), torch.ones(2, 1))


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_keeps_min_and_max(invert: bool) -> None:
    image = torch.rand(4, 2, 16, 16) * 5 - 1
    gamma = {"p": 0.0 if invert else 1.0, "p_invert": 1.0 if invert else 0.0, "retain_stats": False}
    out, _ = BatchAugmenter(only(gamma=gamma), 2)(image, None)
    torch.testing.assert_close(out.flatten(2).amin(2), image.flatten(2).amin(2))
    torch.testing.assert_close(out.flatten(2).amax(2), image.flatten(2).amax(2))
    assert not torch.allclose(out, image)


def test_gamma_value_and_retained_statistics() -> None:
    image = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8)
    gamma = {"p": 1.0, "p_invert": 0.0, "gamma": [2, 2], "retain_stats": False}
    squared, _ = BatchAugmenter(only(gamma=gamma), 2)(image, None)
    torch.testing.assert_close(squared, image**2)
    kept, _ = BatchAugmenter(only(gamma={"p": 1.0, "gamma": [2, 2], "retain_stats": True}), 2)(image, None)
    torch.testing.assert_close(kept.mean(), image.mean())
    torch.testing.assert_close(kept.std(), image.std())


def test_brightness_and_contrast_values() -> None:
    image = torch.rand(2, 3, 8, 8)
    brighter, _ = BatchAugmenter(only(brightness={"p": 1.0, "factor": [1.5, 1.5]}), 2)(image, None)
    torch.testing.assert_close(brighter, image * 1.5)
    config = only(contrast={"p": 1.0, "factor": [2.0, 2.0], "preserve_range": False})
    stretched, _ = BatchAugmenter(config, 2)(image, None)
    mean = image.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(stretched, (image - mean) * 2 + mean)
    clipped, _ = BatchAugmenter(only(contrast={"p": 1.0, "factor": [2.0, 2.0]}), 2)(image, None)
    assert (clipped.amax(dim=(2, 3)) <= image.amax(dim=(2, 3))).all()
    assert (clipped.amin(dim=(2, 3)) >= image.amin(dim=(2, 3))).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_low_resolution_changes_the_image_but_keeps_its_shape(dims: int) -> None:
    image = torch.rand(2, 1, *([SIZE[dims] + 6] * dims))
    out, _ = BatchAugmenter(only(low_resolution={"p": 1.0, "zoom": [0.5, 0.5]}), dims)(image, None)
    assert out.shape == image.shape and not torch.allclose(out, image)
    assert out.diff(dim=-1).abs().mean() < 0.8 * image.diff(dim=-1).abs().mean()


def test_cubic_low_resolution_in_2d_only() -> None:
    config = only(low_resolution={"p": 1.0, "upsample": "cubic"})
    out, _ = BatchAugmenter(config, 2)(torch.rand(1, 1, 16, 16), None)
    assert out.shape == (1, 1, 16, 16)
    with pytest.raises(MedsegError, match="augmentation.low_resolution.upsample"):
        BatchAugmenter(config, 3)


@pytest.mark.parametrize(
    ("data", "key", "allowed"),
    [
        ({"noise": {"p": 1.5}}, "augmentation.noise.p", r"\[0.0, 1.0\]"),
        ({"nosie": {"p": 0.5}}, "augmentation.nosie", r"did you mean 'augmentation\.noise'\?"),
        ({"gamma": {"gama": [1, 2]}}, "augmentation.gamma.gama", r"did you mean 'augmentation\.gamma\.gamma"),
        ({"gamma": {"zzz": 1}}, "augmentation.gamma.zzz", "under 'augmentation.gamma': enabled, p, p_invert"),
        ({"zzz": 1}, "augmentation.zzz", "valid keys under 'augmentation': mirror, rot90"),
        ({"image_padding": "reflect"}, "augmentation.image_padding", "zeros, border"),
        ({"low_resolution": {"upsample": "area"}}, "augmentation.low_resolution.upsample", "linear, cubic"),
        ({"scale": {"factor": [1.4, 0.7]}}, "augmentation.scale.factor", "above high"),
        ({"scale": {"factor": [0, 1]}}, "augmentation.scale.factor", "allowed interval"),
        ({"blur": {"sigma": 1.0}}, "augmentation.blur.sigma", r"range \[low, high\]"),
        ({"mirror": {"enabled": "yes"}}, "augmentation.mirror.enabled", "true or false"),
        ({"elastic": {"control_points": 1}}, "augmentation.elastic.control_points", "allowed interval"),
    ],
)
def test_config_errors_name_the_key_and_allowed_values(data: dict, key: str, allowed: str) -> None:
    with pytest.raises(MedsegError, match=key) as error:
        AugmentationConfig.from_dict(data)
    assert error.match(allowed)


def test_dimension_dependent_config_errors() -> None:
    with pytest.raises(MedsegError, match="augmentation.mirror.axes"):
        BatchAugmenter(only(mirror={"axes": [2]}), 2)
    with pytest.raises(MedsegError, match="augmentation.rotation.degrees"):
        BatchAugmenter(only(rotation={"degrees": [[0, 1], [0, 1]]}), 3)
    with pytest.raises(MedsegError, match="spatial_dims"):
        BatchAugmenter(spatial_dims=1)
    with pytest.raises(MedsegError, match="augmentation: expected a float image"):
        BatchAugmenter(spatial_dims=3)(torch.rand(1, 1, 8, 8), None)


def test_config_defaults_round_trip_and_yaml() -> None:
    config = AugmentationConfig()
    assert (config.rotation.p, config.scale.p, config.scale.factor) == (0.2, 0.2, (0.7, 1.4))
    assert not config.elastic.enabled and config.mirror.p == 0.5 and config.gamma.gamma == (0.7, 1.5)
    assert (config.noise.p, config.blur.p, config.low_resolution.p, config.gamma.p) == (0.1, 0.2, 0.25, 0.3)
    text = yaml.safe_dump(config.to_dict())
    assert AugmentationConfig.from_dict(yaml.safe_load(text)) == config
    per_axis = {"degrees": [[-5, 5], [0, 0], [0, 0]]}
    custom = AugmentationConfig.from_dict({"elastic": True, "rotation": per_axis})
    assert custom.elastic.enabled and custom.rotation.degrees == ((-5.0, 5.0), (0.0, 0.0), (0.0, 0.0))
    assert AugmentationConfig.from_dict(custom.to_dict()) == custom


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dims", [2, 3])
def test_runs_on_cuda_reproducibly(dims: int) -> None:
    image, label = (t.cuda() for t in random_batch(dims, batch=4))
    config = AugmentationConfig.from_dict({name: {"p": 0.7} for name in TRANSFORMS if name != "rot90"})
    first = BatchAugmenter(config, dims, seed=5)(image, label)
    second = BatchAugmenter(config, dims, seed=5)(image, label)
    assert first[0].is_cuda and first[1].is_cuda
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert set(first[1].unique().tolist()) <= {0, 3, 7}


def test_every_accepted_form_of_a_section() -> None:
    config = AugmentationConfig.from_dict({
        "mirror": True, "rot90": {"p": 0.3}, "noise": None, "blur": False, "elastic": {"enabled": True},
        "rotation": {"degrees": [-10, 10]}, "scale": {"factor": [1, 2]}, "low_resolution": {"zoom": [0.5, 1]},
        "label_padding": 255,
    })
    assert config.mirror == AugmentationConfig().mirror and config.noise == AugmentationConfig().noise
    assert config.rot90.p == 0.3 and not config.rot90.enabled  # a p-only mapping keeps the other defaults
    assert not config.blur.enabled and config.elastic.enabled and config.label_padding == 255
    degrees = config.rotation.degrees
    assert degrees == (-10.0, 10.0) and all(isinstance(d, float) for d in degrees)
    assert config.scale.factor == (1.0, 2.0) and config.low_resolution.zoom == (0.5, 1.0)
    assert AugmentationConfig.from_dict(None) == AugmentationConfig()


@pytest.mark.parametrize(("data", "message"), [
    ({"rotation": {"degrees": [[0, 1], [5, -5], [0, 0]]}}, r"^augmentation\.rotation\.degrees: low 5\.0 is "),
    ({"rotation": {"degrees": 30}}, r"^augmentation\.rotation\.degrees: expected a range \[low, high\] or "),
    ({"mirror": {"axes": 0}}, r"^augmentation\.mirror\.axes: expected a list"),
    ({"noise": 0.5}, r"^augmentation\.noise: expected a mapping, got 0\.5$"),
    ({"gamma": {"p_invert": -0.1}}, r"^augmentation\.gamma\.p_invert: -0\.1 is outside the allowed interval"),
])
def test_more_config_errors_name_the_full_key(data: dict, message: str) -> None:
    with pytest.raises(MedsegError, match=message):
        AugmentationConfig.from_dict(data)


def test_a_config_built_in_code_is_checked_by_the_augmenter() -> None:
    from medseg.data.augment import NoiseConfig, ScaleConfig

    with pytest.raises(MedsegError, match=r"^augmentation\.noise\.p: 2\.0 is outside the allowed interval"):
        BatchAugmenter(AugmentationConfig(noise=NoiseConfig(p=2.0)), 2)
    with pytest.raises(MedsegError, match=r"^augmentation\.scale\.factor: low 2\.0 is above high 1\.0$"):
        BatchAugmenter(AugmentationConfig(scale=ScaleConfig(factor=(2.0, 1.0))), 2)
