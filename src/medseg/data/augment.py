"""Batched data augmentation on the training device, one code path for 2D and 3D.

The transforms and their default probabilities and ranges are nnU-Net's training pipeline (Isensee et al.,
"nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation", Nature Methods
2021; ``nnUNetTrainer.get_training_transforms``), rewritten for batches ``image [B, C, *spatial]`` and
``label [B, L, *spatial]`` on whatever device they are on:

- mirroring and 90° rotations are exact permutations (``torch.flip`` / ``torch.rot90``);
- rotation, scaling, shear and the elastic displacement are composed into one sampling grid per batch and
  applied with one ``grid_sample`` for the image (bilinear/trilinear) and one for the label (nearest, so
  label values never leave their original set); samples without a spatial transform are not resampled;
- the intensity transforms (Gaussian noise, Gaussian blur, multiplicative brightness, contrast,
  low-resolution simulation, gamma) act on the image only.

Every transform is decided per sample with its probability ``p``; its parameters are drawn per sample (and
per channel where nnU-Net does). Randomness comes from the augmenter's own generators, so two augmenters
with the same seed give identical outputs on the same device.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from medseg.config_types import Range, bounded, check_config, config_to_dict, dataclass_from_dict
from medseg.errors import MedsegError

logger = logging.getLogger(__name__)

ImageAndLabel = tuple[torch.Tensor, torch.Tensor | None]


# --------------------------------------------------------------------------------------------- config
#
# The sections are read by the shared converter (medseg.config_types): ranges are ``Range`` values (a list
# [low, high] with low <= high), the bounds of a field give its allowed interval, string choices are
# ``Literal`` types, and ``name: true`` / ``name: false`` enables or disables a transform with its defaults.


def _probability(default: float) -> Any:
    return bounded(default, ge=0.0, le=1.0)


@dataclass(frozen=True)
class TransformConfig:
    """Common switches of a random transform: ``enabled`` and the per-sample probability ``p``; in a
    config ``true`` or ``false`` alone stands for ``{enabled: ...}`` (the other settings at defaults)."""

    enabled: bool = True
    p: float = _probability(0.2)

    @classmethod
    def config_shorthand(cls, value: Any) -> Any:
        """``true`` / ``false`` -> ``{enabled: value}``; other values unchanged (the converter's hook)."""
        return {"enabled": value} if isinstance(value, bool) else value


@dataclass(frozen=True)
class MirrorConfig(TransformConfig):
    """Flip each spatial axis (``axes`` in array order, None: all) with probability ``p`` per sample."""

    p: float = _probability(0.5)
    axes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Rot90Config(TransformConfig):
    """Rotate by a random multiple of 90° in a random plane of two equally long spatial axes (not in
    nnU-Net's defaults, hence off)."""

    enabled: bool = False
    p: float = _probability(0.5)


@dataclass(frozen=True)
class RotationConfig(TransformConfig):
    """Rotation by angles (degrees) drawn per sample: ``degrees`` is one range for every rotation axis or
    one range per rotation axis (3D: about array axes 0, 1, 2; 2D: one). None: nnU-Net's default for
    the dimensionality, ±180° in 2D and ±30° about each axis in 3D."""

    degrees: Range | tuple[Range, ...] | None = bounded(None, ge=-360.0, le=360.0)


@dataclass(frozen=True)
class ScaleConfig(TransformConfig):
    """Zoom of the content by ``factor`` (> 1 enlarges), one factor for all axes or one per axis."""

    factor: Range = bounded(Range(0.7, 1.4), ge=0.05, le=20.0)
    per_axis: bool = False


@dataclass(frozen=True)
class ShearConfig(TransformConfig):
    """Shear with a coefficient per pair of axes drawn from ``factor`` (not in nnU-Net's defaults)."""

    enabled: bool = False
    factor: Range = bounded(Range(-0.1, 0.1), ge=-1.0, le=1.0)


@dataclass(frozen=True)
class ElasticConfig(TransformConfig):
    """Smooth random displacement: noise on a ``control_points``-per-axis grid, upsampled linearly and
    scaled so that its largest displacement is ``magnitude`` (drawn per sample) of the patch extent."""

    enabled: bool = False
    magnitude: Range = bounded(Range(0.0, 0.05), ge=0.0, le=0.5)
    control_points: int = bounded(5, ge=2, le=64)


@dataclass(frozen=True)
class NoiseConfig(TransformConfig):
    """Additive Gaussian noise whose standard deviation is drawn per sample from ``std`` (nnU-Net names the
    interval ``noise_variance`` but uses the drawn value as the standard deviation)."""

    p: float = _probability(0.1)
    std: Range = bounded(Range(0.0, 0.1), ge=0.0)


@dataclass(frozen=True)
class BlurConfig(TransformConfig):
    """Gaussian blur (separable), ``sigma`` in voxels drawn per sample, channel and axis."""

    sigma: Range = bounded(Range(0.5, 1.0), ge=0.0, le=20.0)


@dataclass(frozen=True)
class BrightnessConfig(TransformConfig):
    """Multiplication of the intensities by a factor drawn per sample and channel."""

    p: float = _probability(0.15)
    factor: Range = bounded(Range(0.75, 1.25), ge=0.0)


@dataclass(frozen=True)
class ContrastConfig(TransformConfig):
    """Scaling of the intensities around their mean by a factor per sample and channel (nnU-Net: half the
    draws below 1, half above); ``preserve_range`` clips to the original minimum and maximum."""

    p: float = _probability(0.15)
    factor: Range = bounded(Range(0.75, 1.25), ge=0.0)
    preserve_range: bool = True


@dataclass(frozen=True)
class LowResolutionConfig(TransformConfig):
    """Downsampling by ``zoom`` (nearest) and upsampling back (linear, or cubic in 2D)."""

    p: float = _probability(0.25)
    zoom: Range = bounded(Range(0.5, 1.0), ge=0.05, le=1.0)
    upsample: Literal["linear", "cubic"] = "linear"


@dataclass(frozen=True)
class GammaConfig(TransformConfig):
    """Gamma correction on intensities rescaled to [0, 1] (then back to the original minimum and maximum).

    As in nnU-Net, two independent passes: first on the inverted image with probability ``p_invert``, then
    on the image with probability ``p``; ``retain_stats`` restores the mean and standard deviation.
    """

    p: float = _probability(0.3)
    p_invert: float = _probability(0.1)
    gamma: Range = bounded(Range(0.7, 1.5), ge=0.01, le=100.0)
    retain_stats: bool = True


@dataclass(frozen=True)
class AugmentationConfig:
    """All augmentation settings; defaults follow nnU-Net's 2D/3D training pipeline.

    ``image_padding`` fills the image outside the field of view after a spatial transform ("zeros" or
    "border"); ``label_padding`` is the label value used there (0, or an ignore value).
    """

    mirror: MirrorConfig = field(default_factory=MirrorConfig)
    rot90: Rot90Config = field(default_factory=Rot90Config)
    rotation: RotationConfig = field(default_factory=RotationConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    shear: ShearConfig = field(default_factory=ShearConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    brightness: BrightnessConfig = field(default_factory=BrightnessConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    low_resolution: LowResolutionConfig = field(default_factory=LowResolutionConfig)
    gamma: GammaConfig = field(default_factory=GammaConfig)
    image_padding: Literal["zeros", "border"] = "zeros"
    label_padding: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, key: str = "augmentation") -> AugmentationConfig:
        """Build from a (YAML) mapping; missing keys keep their defaults, ``name: false`` disables a
        transform. Raises :class:`~medseg.config_types.ConfigError` naming the key and the allowed values."""
        return dataclass_from_dict(cls, data, key)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (lists, not tuples) that ``yaml.safe_dump`` writes and ``from_dict`` reads."""
        return config_to_dict(self)

    @classmethod
    def disabled(cls) -> AugmentationConfig:
        """Every transform switched off (the augmenter returns its inputs unchanged)."""
        transforms = [f.name for f in dataclasses.fields(cls) if f.type.endswith("Config")]
        return cls.from_dict({name: False for name in transforms})


# ------------------------------------------------------------------------------------------ helpers


def _broadcast(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[n]`` or ``[n, C]`` values shaped to broadcast against an ``ndim``-dimensional batch."""
    return values.reshape(*values.shape, *([1] * (ndim - values.ndim)))


def _apply_to_samples(
    x: torch.Tensor, chosen: torch.Tensor, transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``x`` with its chosen samples replaced by ``transform(x[chosen], indices)`` (indices on the CPU, to
    pick the samples' parameters): in place when only some samples are chosen, the transform's output
    when all are; nothing is computed when none is."""
    indices = chosen.nonzero().flatten()
    if indices.numel() == len(x):
        return transform(x, indices).to(x.dtype)
    if indices.numel() > 0:
        on_device = indices.to(x.device)
        x.index_copy_(0, on_device, transform(x.index_select(0, on_device), indices).to(x.dtype))
    return x


def _spatial_stats(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per sample and channel: mean, std, minimum, maximum, each ``[n, C, 1, ...]``."""
    flat = x.flatten(2)
    std, mean = torch.std_mean(flat, dim=2)
    low, high = flat.aminmax(dim=2)
    return tuple(_broadcast(v, x.ndim) for v in (mean, std, low, high))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``x [n, C, *spatial]`` with ``sigma [n, C, spatial_dims]`` (voxels),
    a different kernel per sample, channel and axis; borders replicated; kernel radius 3 sigma."""
    n, channels, *spatial = x.shape
    dims = len(spatial)
    radius = max(1, math.ceil(3.0 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    sigma = sigma.to(device=x.device, dtype=x.dtype).clamp_min(1e-3).reshape(n * channels, dims)
    conv = F.conv2d if dims == 2 else F.conv3d
    out = x.reshape(1, n * channels, *spatial)
    for axis in range(dims):
        weights = torch.exp(-0.5 * (offsets / sigma[:, axis : axis + 1]) ** 2)
        weights = weights / weights.sum(dim=1, keepdim=True)
        kernel_shape = [n * channels, 1] + [1] * dims
        kernel_shape[2 + axis] = offsets.numel()
        padding = [0] * (2 * dims)
        padding[2 * (dims - 1 - axis)] = padding[2 * (dims - 1 - axis) + 1] = radius
        out = conv(F.pad(out, padding, mode="replicate"), weights.reshape(kernel_shape), groups=n * channels)
    return out.reshape(x.shape)


def _rotation_planes(spatial_dims: int) -> list[tuple[int, int]]:
    """The plane of the rotation about each array axis (3D: about 0, 1, 2; 2D: the only plane)."""
    return [(0, 1)] if spatial_dims == 2 else [(1, 2), (0, 2), (0, 1)]


def _rotation_matrices(radians: torch.Tensor) -> torch.Tensor:
    """``[B, d, d]`` rotations composed from angles ``[B, n_axes]`` about each axis (float64)."""
    batch, n_axes = radians.shape
    dims = 2 if n_axes == 1 else 3
    result = torch.eye(dims, dtype=torch.float64).repeat(batch, 1, 1)
    for angle, (a, b) in zip(radians.unbind(1), _rotation_planes(dims), strict=True):
        rotation = torch.eye(dims, dtype=torch.float64).repeat(batch, 1, 1)
        rotation[:, a, a] = rotation[:, b, b] = torch.cos(angle)
        rotation[:, a, b] = -torch.sin(angle)
        rotation[:, b, a] = torch.sin(angle)
        result = rotation @ result
    return result


def _normalised_theta(sampling: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``affine_grid``'s ``theta [B, d, d+1]`` for a voxel-space sampling matrix about the patch centre
    (array axis order), with ``align_corners=False``: ``n_in = D^-1 A D n_out``, ``D = diag(N / 2)``, and
    the axes reversed into the grid's (x, y[, z]) order."""
    half = torch.tensor(shape, dtype=torch.float64) / 2
    theta = sampling * half[None, None, :] / half[None, :, None]
    theta = theta.flip(1, 2)
    return torch.cat([theta, torch.zeros(*theta.shape[:2], 1, dtype=theta.dtype)], dim=2)


def _resample_label(label: torch.Tensor, grid: torch.Tensor, fill: int) -> torch.Tensor:
    """Nearest-neighbour resampling of a label batch (integer, bool or float maps); outside the field of
    view the value is ``fill``. Integer values are exact in float32 up to 2^24."""
    shifted = label.to(grid.dtype) - fill
    out = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False) + fill
    if label.dtype == torch.bool:
        return out > 0.5
    if label.dtype.is_floating_point:
        return out.to(label.dtype)
    return out.round().to(label.dtype)


# ---------------------------------------------------------------------------------------- augmenter


class BatchAugmenter:
    """nnU-Net's training augmentation for batches on any device, 2D or 3D.

    Args:
        config: the settings (default: nnU-Net's).
        spatial_dims: 2 or 3.
        seed: seeds the augmenter's own generators (per-sample parameters on the CPU, noise fields on the
            data's device), so equal seeds give equal outputs.

    ``augmenter(image, label)`` takes ``image [B, C, *spatial]`` (float) and ``label [B, L, *spatial]``
    (integer class map with L = 1, or bool/float multilabel maps; or None) and returns new tensors of the
    same shapes, dtypes and device; the inputs are not modified.
    """

    def __init__(
        self, config: AugmentationConfig | None = None, spatial_dims: int = 2, seed: int = 0
    ) -> None:
        if spatial_dims not in (2, 3):
            raise MedsegError(f"spatial_dims: {spatial_dims!r} is not one of 2, 3")
        self.config = config if config is not None else AugmentationConfig()
        self.spatial_dims = spatial_dims
        self.seed = seed
        check_config(self.config, "augmentation")
        self._check_dimensionality()
        self._generator = torch.Generator().manual_seed(seed)
        self._field_generators: dict[torch.device, torch.Generator] = {}

    def _check_dimensionality(self) -> None:
        config, dims = self.config, self.spatial_dims
        axes = config.mirror.axes
        if axes is not None and any(a not in range(dims) for a in axes):
            raise MedsegError(f"augmentation.mirror.axes: {list(axes)} must be spatial axes in 0..{dims - 1}")
        degrees = config.rotation.degrees
        n_axes = len(_rotation_planes(dims))
        if degrees is not None and isinstance(degrees[0], tuple) and len(degrees) != n_axes:
            raise MedsegError(
                f"augmentation.rotation.degrees: {len(degrees)} ranges given; allowed: one range, "
                f"or {n_axes} (one per rotation axis) in {dims}D"
            )
        if config.low_resolution.upsample == "cubic" and dims == 3:
            raise MedsegError(
                "augmentation.low_resolution.upsample: 'cubic' exists only in 2D; allowed in 3D: linear"
            )

    # ---------------------------------------------------------------------------------- randomness

    def _uniform(self, bounds: Range, *shape: int) -> torch.Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(shape, generator=self._generator, dtype=torch.float64)

    def _around_one(self, bounds: Range, *shape: int) -> torch.Tensor:
        """nnU-Net's contrast/gamma draw: half from [low, 1], half from [1, high] when the range spans 1."""
        low, high = bounds
        below = self._uniform((low, min(1.0, high)), *shape)
        above = self._uniform((max(1.0, low), high), *shape)
        pick_below = torch.rand(shape, generator=self._generator) < 0.5
        return torch.where(pick_below if low < 1.0 < high else torch.full(shape, low < 1.0), below, above)

    def _chosen(self, config: TransformConfig, batch: int, p: float | None = None) -> torch.Tensor:
        """Per-sample decision ``[B]`` (bool, CPU) of an enabled transform."""
        if not config.enabled:
            return torch.zeros(batch, dtype=torch.bool)
        return torch.rand(batch, generator=self._generator) < (config.p if p is None else p)

    def _field_generator(self, device: torch.device) -> torch.Generator:
        """The generator of large random fields, living on the data's device."""
        if device not in self._field_generators:
            self._field_generators[device] = torch.Generator(device=device).manual_seed(self.seed + 1)
        return self._field_generators[device]

    def _randn_like(self, x: torch.Tensor, *shape: int) -> torch.Tensor:
        generator = self._field_generator(x.device)
        return torch.randn(shape or x.shape, generator=generator, device=x.device, dtype=x.dtype)

    # ---------------------------------------------------------------------------------- call

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> ImageAndLabel:
        """Augment a batch: exact flips and 90° rotations, one resampling for the spatial transforms, then
        the intensity transforms in nnU-Net's order (noise, blur, brightness, contrast, low resolution,
        inverted gamma, gamma)."""
        self._check_inputs(image, label)
        image = image.clone()
        label = None if label is None else label.clone()
        image, label = self._mirror(image, label)
        image, label = self._rot90(image, label)
        image, label = self._spatial(image, label)
        image = self._noise(image)
        image = self._blur(image)
        image = self._brightness(image)
        image = self._contrast(image)
        image = self._low_resolution(image)
        image = self._gamma(image, invert=True)
        image = self._gamma(image, invert=False)
        return image, label

    def _check_inputs(self, image: torch.Tensor, label: torch.Tensor | None) -> None:
        if image.ndim != self.spatial_dims + 2 or not image.is_floating_point():
            raise MedsegError(
                f"augmentation: expected a float image [B, C, *spatial] with {self.spatial_dims} spatial "
                f"axes, got {tuple(image.shape)} {image.dtype}"
            )
        if label is None:
            return
        same_layout = label.ndim == image.ndim and label.shape[0] == image.shape[0]
        if not same_layout or label.shape[2:] != image.shape[2:] or label.device != image.device:
            raise MedsegError(
                f"augmentation: label {tuple(label.shape)} on {label.device} does not match image "
                f"{tuple(image.shape)} on {image.device}"
            )

    # ---------------------------------------------------------------------------------- spatial

    def _mirror(self, image: torch.Tensor, label: torch.Tensor | None) -> ImageAndLabel:
        """Flips of the chosen axes, each decided per sample (one ``flip`` per sample and tensor)."""
        config, batch = self.config.mirror, image.shape[0]
        axes = config.axes if config.axes is not None else range(self.spatial_dims)
        if not config.enabled or not axes:
            return image, label
        chosen = torch.stack([self._chosen(config, batch) for _ in axes], dim=1).tolist()
        flips = [[a + 1 for a, c in zip(axes, row, strict=True) if c] for row in chosen]
        return self._permute_samples(image, label, [(lambda t, d=d: t.flip(d)) if d else None for d in flips])

    def _rot90(self, image: torch.Tensor, label: torch.Tensor | None) -> ImageAndLabel:
        """Rotation by k x 90° (k = 1..3) in a plane of two equally long spatial axes, per sample."""
        config, batch, shape = self.config.rot90, image.shape[0], image.shape[2:]
        if not config.enabled:
            return image, label
        planes = [(a, b) for a in range(len(shape)) for b in range(a + 1, len(shape)) if shape[a] == shape[b]]
        if not planes:
            raise MedsegError(f"augmentation.rot90: needs two spatial axes of equal size, got {tuple(shape)}")
        chosen = self._chosen(config, batch).tolist()
        turns = torch.randint(1, 4, (batch,), generator=self._generator).tolist()
        plane = torch.randint(0, len(planes), (batch,), generator=self._generator).tolist()
        rotations = [
            (lambda t, k=k, a=planes[q][0] + 1, b=planes[q][1] + 1: t.rot90(k, (a, b))) if c else None
            for c, k, q in zip(chosen, turns, plane, strict=True)
        ]
        return self._permute_samples(image, label, rotations)

    @staticmethod
    def _permute_samples(
        image: torch.Tensor,
        label: torch.Tensor | None,
        permutations: list[Callable[[torch.Tensor], torch.Tensor | None] | None],
    ) -> ImageAndLabel:
        """Apply each sample's exact permutation (or None) to that sample of the image and the label."""
        for i, permute in enumerate(permutations):
            for x in (image, label):
                moved = None if permute is None or x is None else permute(x[i])
                if moved is not None:
                    x[i] = moved
        return image, label

    def _rotation_degrees(self) -> list[Range]:
        n_axes = len(_rotation_planes(self.spatial_dims))
        degrees = self.config.rotation.degrees
        if degrees is None:
            degrees = (-180.0, 180.0) if self.spatial_dims == 2 else (-30.0, 30.0)
        return list(degrees) if isinstance(degrees[0], tuple) else [degrees] * n_axes

    def _sampling_matrices(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample voxel-space sampling matrices ``[B, d, d]`` (output -> input: the inverse of the
        content's rotation @ shear @ zoom) and the mask of samples that got any of them."""
        config, dims = self.config, self.spatial_dims
        rotate = self._chosen(config.rotation, batch)
        radians = torch.stack([self._uniform(r, batch) for r in self._rotation_degrees()], dim=1).deg2rad()
        scale = self._chosen(config.scale, batch)
        zoom_axes = dims if config.scale.per_axis else 1
        zoom = self._uniform(config.scale.factor, batch, zoom_axes).expand(batch, dims)
        shear = self._chosen(config.shear, batch)
        coefficients = self._uniform(config.shear.factor, batch, dims, dims).triu(diagonal=1)
        forward = (
            _rotation_matrices(radians * rotate[:, None])
            @ (torch.eye(dims, dtype=torch.float64) + coefficients * shear[:, None, None])
            @ torch.diag_embed(torch.where(scale[:, None], zoom, 1.0))
        )
        return torch.linalg.inv(forward), rotate | scale | shear

    def _elastic_displacement(self, n: int, shape: tuple[int, ...], reference: torch.Tensor) -> torch.Tensor:
        """Grid offsets ``[n, *shape, d]`` (normalised units) for ``n`` samples: coarse noise upsampled
        linearly, scaled to a peak of ``magnitude`` of the extent (2 in normalised units). The noise
        components are i.i.d., so their order needs no reversal into the grid's axis order."""
        config, dims = self.config.elastic, self.spatial_dims
        magnitude = self._uniform(config.magnitude, n).to(reference.device, torch.float32)
        coarse = self._randn_like(reference.float(), n, dims, *([config.control_points] * dims))
        mode = "bilinear" if dims == 2 else "trilinear"
        offsets = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)
        peak = offsets.flatten(2).abs().amax(dim=2).clamp_min(1e-6)
        offsets = offsets * _broadcast(2.0 * magnitude[:, None] / peak, dims + 2)
        return offsets.movedim(1, -1)

    def _spatial(self, image: torch.Tensor, label: torch.Tensor | None) -> ImageAndLabel:
        """Rotation, scaling, shear and elastic deformation in one grid and one ``grid_sample`` per tensor,
        only for the samples that got any of them."""
        batch, shape = image.shape[0], tuple(image.shape[2:])
        sampling, affine = self._sampling_matrices(batch)
        elastic = self._chosen(self.config.elastic, batch)
        moved = affine | elastic
        if not moved.any():
            return image, label
        indices = moved.nonzero().flatten()
        theta = _normalised_theta(sampling[indices], shape).to(image.device, torch.float32)
        grid = F.affine_grid(theta, [len(indices), 1, *shape], align_corners=False)
        n_elastic = int(elastic.sum())
        grid = _apply_to_samples(
            grid, elastic[indices], lambda g, _: g + self._elastic_displacement(n_elastic, shape, image)
        )
        padding, fill = self.config.image_padding, self.config.label_padding

        def resample_image(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            grid_ = grid.to(x.dtype)
            return F.grid_sample(x, grid_, mode="bilinear", padding_mode=padding, align_corners=False)

        image = _apply_to_samples(image, moved, resample_image)
        if label is not None:
            label = _apply_to_samples(label, moved, lambda y, _: _resample_label(y, grid, fill))
        return image, label

    # ---------------------------------------------------------------------------------- intensity

    def _noise(self, image: torch.Tensor) -> torch.Tensor:
        config, batch = self.config.noise, image.shape[0]
        chosen, std = self._chosen(config, batch), self._uniform(config.std, batch)

        def add_noise(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            return x + self._randn_like(x) * _broadcast(std[indices], x.ndim).to(x.device, x.dtype)

        return _apply_to_samples(image, chosen, add_noise)

    def _blur(self, image: torch.Tensor) -> torch.Tensor:
        config, (batch, channels) = self.config.blur, image.shape[:2]
        chosen = self._chosen(config, batch)
        sigma = self._uniform(config.sigma, batch, channels, self.spatial_dims)
        return _apply_to_samples(image, chosen, lambda x, indices: gaussian_blur(x, sigma[indices]))

    def _brightness(self, image: torch.Tensor) -> torch.Tensor:
        config, (batch, channels) = self.config.brightness, image.shape[:2]
        chosen, factor = self._chosen(config, batch), self._uniform(config.factor, batch, channels)

        def multiply(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            return x * _broadcast(factor[indices], x.ndim).to(x.device, x.dtype)

        return _apply_to_samples(image, chosen, multiply)

    def _contrast(self, image: torch.Tensor) -> torch.Tensor:
        config, (batch, channels) = self.config.contrast, image.shape[:2]
        chosen, factor = self._chosen(config, batch), self._around_one(config.factor, batch, channels)

        def stretch(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            mean, _, low, high = _spatial_stats(x)
            out = (x - mean) * _broadcast(factor[indices], x.ndim).to(x.device, x.dtype) + mean
            return torch.clamp(out, low, high) if config.preserve_range else out

        return _apply_to_samples(image, chosen, stretch)

    def _low_resolution(self, image: torch.Tensor) -> torch.Tensor:
        config, batch, shape = self.config.low_resolution, image.shape[0], image.shape[2:]
        chosen, zoom = self._chosen(config, batch), self._uniform(config.zoom, batch)
        linear = {2: "bilinear", 3: "trilinear"}[self.spatial_dims]
        mode = "bicubic" if config.upsample == "cubic" else linear

        def simulate(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            out = []
            for sample, z in zip(x.split(1), zoom[indices].tolist(), strict=True):
                small = [max(1, round(n * z)) for n in shape]
                coarse = F.interpolate(sample, size=small, mode="nearest-exact")
                out.append(F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=False))
            return torch.cat(out)

        return _apply_to_samples(image, chosen, simulate)

    def _gamma(self, image: torch.Tensor, invert: bool) -> torch.Tensor:
        config, (batch, channels) = self.config.gamma, image.shape[:2]
        chosen = self._chosen(config, batch, config.p_invert if invert else config.p)
        gamma = self._around_one(config.gamma, batch, channels)
        sign = -1.0 if invert else 1.0

        def correct(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            x = sign * x
            mean, std, low, high = _spatial_stats(x)
            extent = (high - low).clamp_min(1e-7)
            out = ((x - low) / extent).clamp(0, 1) ** _broadcast(gamma[indices], x.ndim).to(x.device, x.dtype)
            out = out * extent + low
            if config.retain_stats:
                new_mean, new_std, _, _ = _spatial_stats(out)
                out = (out - new_mean) / new_std.clamp_min(1e-7) * std + mean
            return sign * out

        return _apply_to_samples(image, chosen, correct)
