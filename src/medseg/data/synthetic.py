"""Synthetic segmentation data, the embedded default for the demo and the tests.

Three generators and their writers:

- :func:`make_polyp_image`: a colonoscopy-like RGB frame (smooth reddish mucosa with fine texture,
  vessel-like lines and a vignette) holding one polyp-like blob with its own colour, shading and texture,
  blended in with a soft edge, plus optional specular highlights. The blob is star-convex: its radius is
  a few low-order Fourier harmonics of the polar angle. The mask is the blob's binary region.
- :func:`make_lesion_volume`: an MRI-like volume (smooth bias field, an organ-like ellipsoid, noise) with
  one to three lesion ellipsoids whose radii, centre and in-plane orientation change smoothly from slice
  to slice; each lesion has a class ``1..num_classes-1`` with its own intensity. Edges carry partial-volume
  blur; shapes are drawn in millimetres, so an anisotropic ``spacing`` gives thicker slices.

- :func:`make_nuclei_image`: a fluorescence-like RGB image of bright round nuclei (discs, some touching)
  on a dark background with an instance label map: 0 background, one random 16-bit id per nucleus (ids
  not consecutive, most above 255), for instance segmentation.

:func:`write_polyp_dataset`, :func:`write_nuclei_dataset` and :func:`write_lesion_dataset` store
them in real formats (PNG pairs; NIfTI
in the Decathlon / nnU-Net layout with a ``dataset.json``) through :func:`medseg.data.io.write_image`, so
synthetic data go through the same readers as real data. Case ``i`` is drawn from the seed sequence
``(seed, i)``: the same seed gives the same arrays, whatever the number of cases. A ``synthetic.json``
stamp with the parameters, written last, makes a second call with the same parameters a no-op and an
interrupted generation (no stamp) start again.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from medseg.data.geometry import Geometry
from medseg.data.io import write_image, write_mask
from medseg.errors import MedsegError
from medseg.fileio import write_text_atomically

logger = logging.getLogger(__name__)

STAMP_NAME = "synthetic.json"
GENERATOR_VERSION = 1  # bump when the generators change, so stamped folders are regenerated
_PROGRESS_MIN_CASES = 16


# ---------------------------------------------------------------------------------------------- helpers


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]
                  ) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _check_at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise MedsegError(f"{name} must be at least {minimum}, got {value}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# ------------------------------------------------------------------------------------------ 2D polyps


def _star_radius(theta: np.ndarray, r0: float, amplitudes: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Radius ``r0 * (1 + sum_k a_k cos(k theta + phi_k))`` for harmonics ``k = 2, 3, ...``."""
    orders = np.arange(2, 2 + len(amplitudes)).reshape(-1, *([1] * theta.ndim))
    modulation = (amplitudes.reshape(orders.shape) * np.cos(orders * theta + phases.reshape(orders.shape)))
    return r0 * (1.0 + modulation.sum(axis=0))


def _polyp_geometry(rng: np.random.Generator, size: tuple[int, int], diameter_range: tuple[float, float],
                    margin: float) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Draw a star-convex blob: centre ``(y, x)``, mean radius, harmonic amplitudes and phases.

    The mean diameter is a fraction ``diameter_range`` of the shorter image side; the centre keeps the
    whole blob (plus ``margin`` pixels of soft edge) inside the image where the image is large enough.
    """
    side = min(size)
    r0 = 0.5 * side * rng.uniform(*diameter_range)
    amplitudes = rng.uniform(0.0, 0.25, size=3) / np.arange(2, 5)
    phases = rng.uniform(0.0, 2 * np.pi, size=3)
    reach = r0 * (1.0 + amplitudes.sum()) + margin
    low = np.minimum(reach, 0.5 * (np.array(size) - 1))
    centre = rng.uniform(low, np.array(size) - 1 - low)
    return centre, r0, amplitudes, phases


def _mucosa_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Reddish-pink mucosa ``[3, H, W]`` (0-255 floats): low-frequency colour, fine texture, vessels."""
    side = min(size)
    red = rng.uniform(165, 215)
    base = np.array([red, red * rng.uniform(0.38, 0.52), red * rng.uniform(0.30, 0.45)])
    brightness = rng.uniform(10, 20) * _smooth_field(rng, size, side / 6)
    hue = rng.uniform(4, 10) * _smooth_field(rng, size, side / 8)
    texture = rng.uniform(3, 7) * _smooth_field(rng, size, 0.8)
    image = base[:, None, None] + brightness + texture + np.stack([hue, -hue, -0.5 * hue])
    vessels = np.exp(-(_smooth_field(rng, size, side / 24) / 0.15) ** 2) * rng.uniform(0.0, 0.3)
    return image * (1.0 - vessels * np.array([0.3, 0.8, 0.7])[:, None, None])


def _polyp_surface(rng: np.random.Generator, size: tuple[int, int], centre: np.ndarray, r0: float,
                   background_mean: np.ndarray) -> np.ndarray:
    """The polyp's own appearance ``[3, H, W]``: shifted colour, dome shading and its own texture."""
    paler = np.array([0.0, rng.uniform(18, 40), rng.uniform(5, 25)])
    colour = background_mean * rng.uniform(1.0, 1.3) + paler
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    light = rng.uniform(0, 2 * np.pi)
    along_light = ((yy - centre[0]) * np.sin(light) + (xx - centre[1]) * np.cos(light)) / r0
    rim = np.hypot(yy - centre[0], xx - centre[1]) / r0
    shading = 1.0 + rng.uniform(0.08, 0.2) * along_light - rng.uniform(0.05, 0.15) * np.minimum(rim, 1.5) ** 2
    texture = rng.uniform(5, 12) * _smooth_field(rng, size, rng.uniform(0.8, 2.0))
    return colour[:, None, None] * shading + texture


def _vignette(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Endoscope illumination fall-off ``[H, W]``: 1 near a jittered centre, darker towards the corners."""
    centre = np.array(size) * rng.uniform(0.4, 0.6, size=2)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    r = np.hypot((yy - centre[0]) / size[0], (xx - centre[1]) / size[1]) / np.sqrt(0.5)
    return 1.0 - rng.uniform(0.25, 0.5) * r**2


def _specular_highlights(rng: np.random.Generator, size: tuple[int, int], alpha: np.ndarray) -> np.ndarray:
    """Weights ``[H, W]`` in [0, 1] of a few small white reflections, mostly on the polyp (or none)."""
    spots = np.zeros(size)
    if rng.random() < 0.3:
        return spots
    on_polyp = np.argwhere(alpha > 0.9)
    for _ in range(rng.integers(1, 6)):
        if len(on_polyp) and rng.random() < 0.75:
            y, x = on_polyp[rng.integers(len(on_polyp))]
        else:
            y, x = rng.integers(0, size[0]), rng.integers(0, size[1])
        spots[y, x] = 1.0
    sigma = max(0.6, min(size) * rng.uniform(0.002, 0.008))
    spots = ndimage.gaussian_filter(spots, sigma)
    return np.clip(spots / (spots.max() + 1e-12) * 1.4, 0.0, 1.0) * rng.uniform(0.6, 1.0)


def make_polyp_image(rng: np.random.Generator, size: tuple[int, int] = (256, 256), *,
                     diameter_range: tuple[float, float] = (0.08, 0.30),
                     edge_width_range: tuple[float, float] = (0.8, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    """One polyp-like RGB frame and its mask.

    Args:
        rng: the random generator (the only source of randomness).
        size: ``(H, W)``.
        diameter_range: the blob's mean diameter as a fraction of the shorter side.
        edge_width_range: the width (pixels) of the soft edge: the blob is alpha-blended with
            ``sigmoid((r(theta) - distance) / width)``, so the boundary is a ramp, not a step.

    Returns:
        ``(rgb, mask)``: ``uint8 [3, H, W]`` and ``uint8 [1, H, W]`` in {0, 1}.
    """
    size = (int(size[0]), int(size[1]))
    edge_width = rng.uniform(*edge_width_range)
    centre, r0, amplitudes, phases = _polyp_geometry(rng, size, diameter_range, margin=2 * edge_width)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    dy, dx = yy - centre[0], xx - centre[1]
    radial_margin = _star_radius(np.arctan2(dy, dx), r0, amplitudes, phases) - np.hypot(dy, dx)
    alpha = _sigmoid(radial_margin / max(edge_width, 1e-6))
    background = _mucosa_background(rng, size)
    polyp = _polyp_surface(rng, size, centre, r0, background.mean(axis=(1, 2)))
    image = background * (1.0 - alpha) + polyp * alpha
    shine = _specular_highlights(rng, size, alpha)
    image = image * (1.0 - shine) + np.array([255.0, 252.0, 245.0])[:, None, None] * shine
    image = image * _vignette(rng, size) + rng.normal(0.0, rng.uniform(1.5, 4.0), image.shape)
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return rgb, (radial_margin >= 0)[None].astype(np.uint8)


# ----------------------------------------------------------------------------------------- 3D lesions


def _ellipsoid_margin(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) to an axis-aligned ellipsoid's surface."""
    q = np.sqrt(sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(len(radii))))
    return (1.0 - q) * radii.min()


def _deformed_lesion_margin(rng: np.random.Generator, grid: np.ndarray, centre: np.ndarray,
                            radii: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to an ellipsoid whose cross-section changes along the slice axis.

    With ``t`` the normalised slice position in ``[-1, 1]``, the in-plane radii are scaled by
    ``1 + a sin(pi f t + phi)``, the in-plane centre moves linearly with ``t`` and the in-plane axes
    turn by ``twist * t``, so the shape is not an ellipsoid but stays smooth.
    """
    t = (grid[0] - centre[0]) / radii[0]
    frequency, phase = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi)
    scale = 1.0 + rng.uniform(0.15, 0.3) * np.sin(np.pi * frequency * t + phase)
    heading = rng.uniform(0, 2 * np.pi)
    shift = rng.uniform(0.2, 0.5) * np.array([np.sin(heading), np.cos(heading)]) * radii[1:]
    angle = rng.uniform(0, np.pi) + rng.uniform(-0.6, 0.6) * t
    dy, dx = grid[1] - centre[1] - shift[0] * t, grid[2] - centre[2] - shift[1] * t
    u = (dy * np.cos(angle) + dx * np.sin(angle)) / (radii[1] * scale)
    v = (-dy * np.sin(angle) + dx * np.cos(angle)) / (radii[2] * scale)
    return (1.0 - np.sqrt(t**2 + u**2 + v**2)) * radii.min()


def _lesion_centres(rng: np.random.Generator, organ_centre: np.ndarray, organ_radii: np.ndarray,
                    lesion_radii: list[np.ndarray], tries: int = 30) -> list[np.ndarray]:
    """Centres inside the organ, each the candidate farthest (relative to the radii) from those before."""
    centres: list[np.ndarray] = []
    for radii in lesion_radii:
        direction = rng.normal(size=(tries, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        candidates = organ_centre + 0.6 * organ_radii * rng.random((tries, 1)) ** (1 / 3) * direction
        if centres:
            gap = np.min([np.linalg.norm(candidates - c, axis=1) / (radii.max() + r.max())
                          for c, r in zip(centres, lesion_radii, strict=False)], axis=0)
            centres.append(candidates[np.argmax(gap)])
        else:
            centres.append(candidates[0])
    return centres


def _class_levels(rng: np.random.Generator, num_foreground: int) -> np.ndarray:
    """Lesion intensity per foreground class, relative to the organ (hypo- to hyperintense, jittered)."""
    levels = np.linspace(0.4, 1.9, num_foreground) if num_foreground > 1 else np.array([1.7])
    return levels * rng.uniform(0.9, 1.1, size=num_foreground)


def make_lesion_volume(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 64, 64),
                       num_classes: int = 3, *, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One MRI-like volume with lesions of classes ``1..num_classes-1``.

    Draws ``max(num_classes - 1, u)`` lesions with ``u`` uniform in 1..3: one per class, so that every
    class is present, and the rest of a random class (painted first, so that they never hide a required
    one). Shapes are drawn in millimetres on the grid of ``spacing`` (array order ``(z, y, x)``).

    Returns:
        ``(image, label)``: ``float32 [1, D, H, W]`` (non-negative) and ``uint8 [1, D, H, W]``.
    """
    _check_at_least("num_classes", num_classes, 2)
    shape = tuple(int(s) for s in shape)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if len(shape) != 3 or len(spacing_arr) != 3:
        raise MedsegError(f"a lesion volume needs a 3D shape and spacing, got {shape} and {tuple(spacing)}")
    axes = [np.arange(n) * s for n, s in zip(shape, spacing_arr, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    extent = np.array(shape) * spacing_arr
    smooth_voxels = tuple(0.2 * extent.min() / spacing_arr)

    organ_centre = extent * (0.5 + rng.uniform(-0.05, 0.05, size=3))
    organ_radii = extent * rng.uniform(0.3, 0.42, size=3)
    organ_level = rng.uniform(180, 240)
    image = 60.0 + 12.0 * _smooth_field(rng, shape, smooth_voxels)
    organ = _sigmoid(_ellipsoid_margin(grid, organ_centre, organ_radii))  # a soft edge about 1 mm wide
    image = image * (1.0 - organ) + organ_level * (1.0 + 0.06 * _smooth_field(rng, shape, 2.0)) * organ

    num_foreground = num_classes - 1
    count = max(num_foreground, int(rng.integers(1, 4)))
    extra = [int(c) for c in rng.integers(1, num_classes, size=count - num_foreground)]
    classes = extra + list(range(1, num_classes))  # the one-per-class lesions are painted last
    levels = _class_levels(rng, num_foreground) * organ_level
    radii = [extent.min() * rng.uniform(0.09, 0.2, size=3) for _ in range(count)]
    label = np.zeros(shape, dtype=np.uint8)
    centres = _lesion_centres(rng, organ_centre, organ_radii, radii)
    for cls, centre, r in zip(classes, centres, radii, strict=True):
        margin = _deformed_lesion_margin(rng, grid, centre, r)
        label[margin >= 0] = cls
        occupancy = _sigmoid(margin / (0.35 * spacing_arr.min()))
        texture = 1.0 + 0.05 * _smooth_field(rng, shape, 1.5)
        image = image * (1.0 - occupancy) + levels[cls - 1] * texture * occupancy

    image = image * (1.0 + 0.1 * _smooth_field(rng, shape, smooth_voxels))  # MRI bias field
    image = ndimage.gaussian_filter(image, 0.5)  # point-spread function: partial-volume edges
    image = image + rng.normal(0.0, organ_level * rng.uniform(0.03, 0.07), shape)
    return np.clip(image, 0.0, None).astype(np.float32)[None], label[None]


# -------------------------------------------------------------------------------------------- writers


def _case_names(n_cases: int) -> list[str]:
    width = max(3, len(str(n_cases - 1)))
    return [f"case_{i:0{width}d}" for i in range(n_cases)]


def _case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng((seed, index))


def _stamp_matches(root: Path, params: dict[str, Any], expected: Iterable[Path]) -> bool:
    """Whether ``root`` holds a complete data set generated with ``params``."""
    try:
        stamp = json.loads((root / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == params and all(p.is_file() for p in expected)


def _remove_stale_cases(folder: Path, pattern: str, keep: set[Path]) -> None:
    """Delete generated case files (names matching ``pattern``) that the new data set does not have."""
    if folder.is_dir():
        for path in folder.iterdir():
            if re.fullmatch(pattern, path.name) and path not in keep:
                path.unlink()


def _prepare(root: Path, params: dict[str, Any], expected: list[Path], pattern: str) -> bool:
    """Return False when ``root`` is up to date; else drop its stamp and stale cases and return True."""
    if _stamp_matches(root, params, expected):
        logger.info("%s: synthetic data set up to date, not regenerated", root)
        return False
    (root / STAMP_NAME).unlink(missing_ok=True)  # an interrupted run must not look complete
    for folder in {p.parent for p in expected}:
        _remove_stale_cases(folder, pattern, set(expected))
    logger.info("%s: writing %d synthetic cases", root, params["n_cases"])
    return True


def _progress(n_cases: int, description: str) -> Iterable[int]:
    """Case indices, with a progress bar (on a terminal) when there are many."""
    return tqdm(range(n_cases), desc=description, unit="case", leave=False,
                disable=True if n_cases < _PROGRESS_MIN_CASES else None)


def write_polyp_dataset(root: str | Path, n_cases: int = 200, size: tuple[int, int] = (256, 256),
                        seed: int = 0) -> Path:
    """Write polyp-like pairs ``root/images/case_XXX.png`` (RGB) and ``root/masks/case_XXX.png`` (0/255).

    Skipped when ``root`` already holds the same data set (its ``synthetic.json`` stamp); otherwise
    generated case files (``case_*``) that the new data set does not have are removed. Returns ``root``.
    """
    def pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rgb, mask = make_polyp_image(rng, tuple(size))
        return rgb, mask * np.uint8(255)

    return _write_2d_pairs(root, "polyp", n_cases, size, seed, pair)


def make_nuclei_image(rng: np.random.Generator, size: tuple[int, int] = (96, 96), *,
                      n_nuclei: tuple[int, int] = (4, 10), radius_range: tuple[float, float] = (5.0, 9.0)
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One nuclei-like RGB image ``[3, H, W]`` uint8 and its instance label map ``[1, H, W]`` uint16.

    Discs are placed at random, each touching or nearly touching another with probability 1/2 and
    otherwise apart (no overlap beyond one pixel); each gets a distinct random id in 1..65535.
    """
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    wanted = int(rng.integers(n_nuclei[0], n_nuclei[1] + 1))
    discs: list[tuple[float, float, float]] = []
    for _ in range(50 * wanted):
        if len(discs) == wanted:
            break
        r = float(rng.uniform(*radius_range))
        if discs and rng.random() < 0.5:  # touching a previous disc
            cy, cx, r0 = discs[int(rng.integers(len(discs)))]
            angle = rng.uniform(0, 2 * np.pi)
            y, x = cy + (r0 + r) * np.sin(angle), cx + (r0 + r) * np.cos(angle)
        else:
            y, x = rng.uniform(r, height - r), rng.uniform(r, width - r)
        inside = r <= y <= height - r and r <= x <= width - r
        if inside and all(np.hypot(y - cy, x - cx) >= r + r0 - 1.0 for cy, cx, r0 in discs):
            discs.append((y, x, r))
    ids = np.sort(rng.choice(np.arange(1, 65536), size=len(discs), replace=False)).astype(np.uint16)
    label = np.zeros(size, dtype=np.uint16)
    brightness = np.zeros(size)
    for (cy, cx, r), identifier in zip(discs, ids, strict=True):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        label[disc] = identifier
        brightness[disc] = rng.uniform(0.6, 1.0) * (1.0 - 0.4 * ((yy[disc] - cy) ** 2 + (xx[disc] - cx) ** 2)
                                                    / (r * r))
    texture = 0.08 * _smooth_field(rng, size, 2.0) + 0.04 * rng.standard_normal(size)
    grey = ndimage.gaussian_filter(brightness, 0.8) + 0.1 + texture
    tint = np.array([0.55, 0.7, 1.0])[:, None, None]
    rgb = np.clip(255.0 * grey[None] * tint, 0, 255).astype(np.uint8)
    return rgb, label[None]


def write_nuclei_dataset(root: str | Path, n_cases: int = 40, size: tuple[int, int] = (96, 96),
                         seed: int = 0) -> Path:
    """Write nuclei-like pairs ``root/images/case_XXX.png`` (RGB) and ``root/masks/case_XXX.png``
    (16-bit instance label maps, DSB 2018 style); stamped and skipped as :func:`write_polyp_dataset`."""
    return _write_2d_pairs(root, "nuclei", n_cases, size, seed,
                           lambda rng: make_nuclei_image(rng, tuple(size)))


def _write_2d_pairs(root: str | Path, kind: str, n_cases: int, size: tuple[int, int], seed: int,
                    make: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write ``root/images/case_XXX.png`` and ``root/masks/case_XXX.png`` from ``make(rng)`` -> (RGB image,
    mask as written), unless ``root`` already holds the same data set (its stamp); stale generated case
    files are removed first."""
    _check_at_least("n_cases", n_cases, 1)
    root = Path(root)
    names = _case_names(n_cases)
    params = {"kind": kind, "version": GENERATOR_VERSION, "n_cases": n_cases,
              "size": [int(s) for s in size], "seed": int(seed)}
    images = [root / "images" / f"{n}.png" for n in names]
    masks = [root / "masks" / f"{n}.png" for n in names]
    if _prepare(root, params, images + masks, r"case_\d+\.png"):
        for i in _progress(n_cases, f"synthetic {kind}"):
            rgb, mask = make(_case_rng(seed, i))
            write_image(images[i], rgb)
            write_mask(masks[i], mask)
        write_text_atomically(root / STAMP_NAME, json.dumps(params, indent=1) + "\n")
    return root


def lesion_label_names(num_classes: int) -> dict[str, int]:
    """nnU-Net v2 ``labels``: ``{"background": 0, "lesion_a": 1, "lesion_b": 2, ...}``."""
    def name(c: int) -> str:
        return f"lesion_{chr(ord('a') + c - 1)}" if c <= 26 else f"lesion_{c}"
    return {"background": 0, **{name(c): c for c in range(1, num_classes)}}


def _dataset_json(names: list[str], num_classes: int) -> dict[str, Any]:
    """nnU-Net v2 fields plus the Decathlon's ``modality`` and ``training`` list (nnU-Net v1 style:
    the listed image names carry no channel suffix, the files in ``imagesTr`` do)."""
    return {
        "name": "SyntheticLesions",
        "description": "Synthetic lesion-like MRI volumes generated by medseg.data.synthetic",
        "tensorImageSize": "3D",
        "channel_names": {"0": "MRI"},
        "modality": {"0": "MRI"},
        "labels": lesion_label_names(num_classes),
        "numTraining": len(names),
        "numTest": 0,
        "file_ending": ".nii.gz",
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": [],
    }


def lesion_geometry(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Geometry:
    """The synthetic volumes' geometry: ``spacing`` (array order), identity direction and an origin near
    the volume's centre, so that the NIfTI affine (derived by the writer) is not the identity."""
    spacing_xyz = np.asarray(spacing, dtype=np.float64)[::-1]
    origin_xyz = -0.5 * (np.array(shape[::-1]) - 1) * spacing_xyz + np.array([4.0, -6.0, 10.0])
    return Geometry(spacing=tuple(float(s) for s in spacing), origin=tuple(origin_xyz.tolist()),
                    direction=tuple(np.eye(3).ravel().tolist()), source_format="nifti",
                    shape=tuple(int(s) for s in shape))


def write_lesion_dataset(root: str | Path, n_cases: int = 40, shape: tuple[int, int, int] = (48, 64, 64),
                         spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), num_classes: int = 3,
                         seed: int = 0) -> Path:
    """Write lesion volumes in the Decathlon / nnU-Net layout: ``imagesTr/case_XXX_0000.nii.gz``,
    ``labelsTr/case_XXX.nii.gz`` and ``dataset.json``, with the spacing (array order) in the affine.

    Skipped or cleaned up as :func:`write_polyp_dataset` does; returns ``root``.
    """
    _check_at_least("n_cases", n_cases, 1)
    _check_at_least("num_classes", num_classes, 2)
    root = Path(root)
    names = _case_names(n_cases)
    params = {"kind": "lesion", "version": GENERATOR_VERSION, "n_cases": n_cases,
              "shape": [int(s) for s in shape], "spacing": [float(s) for s in spacing],
              "num_classes": int(num_classes), "seed": int(seed)}
    images = [root / "imagesTr" / f"{n}_0000.nii.gz" for n in names]
    labels = [root / "labelsTr" / f"{n}.nii.gz" for n in names]
    if _prepare(root, params, images + labels + [root / "dataset.json"], r"case_\d+(_\d{4})?\.nii\.gz"):
        geometry = lesion_geometry(tuple(shape), tuple(spacing))
        for i in _progress(n_cases, "synthetic lesions"):
            image, label = make_lesion_volume(_case_rng(seed, i), tuple(shape), num_classes, spacing=spacing)
            write_image(images[i], image, geometry)
            write_mask(labels[i], label, geometry)
        dataset_json = json.dumps(_dataset_json(names, num_classes), indent=1) + "\n"
        write_text_atomically(root / "dataset.json", dataset_json)
        write_text_atomically(root / STAMP_NAME, json.dumps(params, indent=1) + "\n")
    return root
