"""Synthetic data: the generators' shapes, sizes, soft edges, classes and slice-wise shape change, and the
writers' files read back through the real readers, seeded, idempotent and regenerated when interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medseg.data.io import read_image, read_mask
from medseg.data.synthetic import (
    STAMP_NAME,
    lesion_label_names,
    make_lesion_volume,
    make_polyp_image,
    write_lesion_dataset,
    write_polyp_dataset,
)
from medseg.errors import MedsegError

SIZE = (64, 64)
VOLUME = (24, 32, 32)


def polyps(count: int = 4, size: tuple[int, int] = SIZE, **options: object) -> list[tuple[np.ndarray, ...]]:
    return [make_polyp_image(np.random.default_rng(seed), size, **options) for seed in range(count)]


def boundary_ring_positions(image: np.ndarray, mask: np.ndarray, core_depth: int) -> tuple[float, float]:
    """Where the one-voxel rings just inside and just outside the mask's boundary lie on the line from
    the local outside colour (0) to the inside colour (1): ``(inner, outer)``.

    The inside colour is the mean deeper than ``core_depth`` voxels, the outside colour the mean of a
    band 3-5 voxels outside, so slow background variation does not count. A hard edge gives an outer
    ring near 0; a soft (blended or partial-volume) edge gives clearly intermediate values.
    """
    def mean(region: np.ndarray) -> np.ndarray:
        return image[:, region].mean(axis=1)

    eroded = ndimage.binary_erosion(mask)
    grown = [ndimage.binary_dilation(mask, iterations=k) for k in (1, 3, 5)]
    inside, outside = mean(ndimage.binary_erosion(mask, iterations=core_depth)), mean(grown[2] & ~grown[1])
    direction = inside - outside

    def position(ring: np.ndarray) -> float:
        return float((mean(ring) - outside) @ direction / (direction @ direction))

    return position(mask & ~eroded), position(grown[0] & ~mask)


# ------------------------------------------------------------------------------------------ 2D polyps


def test_polyp_arrays_have_the_contract_shapes_dtypes_and_values() -> None:
    for rgb, mask in polyps():
        assert rgb.shape == (3, *SIZE) and rgb.dtype == np.uint8
        assert mask.shape == (1, *SIZE) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1}  # non-empty and not everything
        assert rgb.reshape(3, -1).std(axis=1).min() > 3  # textured, not flat
        background = rgb[:, mask[0] == 0].mean(axis=1)
        assert background[0] > background[1] and background[0] > background[2]  # reddish mucosa


def test_polyp_lies_inside_the_image_with_the_requested_size() -> None:
    for _, mask in polyps(6):
        area = mask.sum() / mask.size
        # mean diameter 8-30% of the side; the harmonics add at most ~1.5% area, pixels a little more
        assert 0.8 * np.pi * 0.04**2 <= area <= 1.1 * np.pi * 0.15**2
        assert not (mask[0, 0].any() or mask[0, -1].any() or mask[0, :, 0].any() or mask[0, :, -1].any())
    for _, mask in polyps(3, (128, 128), diameter_range=(0.25, 0.25)):
        equivalent_diameter = 2 * np.sqrt(mask.sum() / np.pi) / 128
        assert equivalent_diameter == pytest.approx(0.25, abs=0.01)


def test_polyp_colours_overlap_so_no_channel_threshold_separates_the_mask() -> None:
    for rgb, mask in polyps():
        inside, outside = rgb[:, mask[0] == 1], rgb[:, mask[0] == 0]
        for channel in range(3):
            assert inside[channel].min() < outside[channel].max()
            assert outside[channel].min() < inside[channel].max()


def test_polyp_edges_are_soft_and_a_hard_edge_is_detected() -> None:
    soft = [boundary_ring_positions(rgb.astype(float), mask[0] == 1, 3)
            for rgb, mask in polyps(diameter_range=(0.25, 0.3))]
    hard = [boundary_ring_positions(rgb.astype(float), mask[0] == 1, 3)
            for rgb, mask in polyps(diameter_range=(0.25, 0.3), edge_width_range=(1e-3, 1e-3))]
    inner, outer = np.mean(soft, axis=0)
    assert 0.1 < outer < inner < 1.0  # the boundary rings lie between the outside and inside colours
    assert np.mean(hard, axis=0)[1] < 0.05  # the same measure sees a step as a step


def test_polyp_generation_is_seeded() -> None:
    first, again, other = (make_polyp_image(np.random.default_rng(seed), SIZE) for seed in (7, 7, 8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


# ----------------------------------------------------------------------------------------- 3D lesions


@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_lesion_volume_shapes_dtypes_and_all_classes(num_classes: int) -> None:
    for seed in range(3):
        image, label = make_lesion_volume(np.random.default_rng(seed), VOLUME, num_classes)
        assert image.shape == (1, *VOLUME) and image.dtype == np.float32
        assert label.shape == (1, *VOLUME) and label.dtype == np.uint8
        assert np.isfinite(image).all() and image.min() >= 0
        assert np.unique(label).tolist() == list(range(num_classes))


def test_lesion_classes_have_their_own_intensities() -> None:
    for seed in range(2):
        image, label = make_lesion_volume(np.random.default_rng(seed), VOLUME, 3)
        relative = []
        for c in (1, 2):
            lesion = label[0] == c
            around = ndimage.binary_dilation(lesion, iterations=3) & (label[0] == 0)
            relative.append(image[0, lesion].mean() / image[0, around].mean())
        assert relative[0] < 0.75 and relative[1] > 1.3  # class 1 darker, class 2 brighter than around


def _centroid_travel(component: np.ndarray) -> float:
    """How far (voxels) the in-plane centroid of a 3D region moves across its slices."""
    centroids = np.array([ndimage.center_of_mass(s) for s in component if s.sum() >= 3])
    return float(np.ptp(centroids, axis=0).max()) if len(centroids) > 1 else 0.0


def test_lesion_shape_changes_from_slice_to_slice() -> None:
    travels, area_changes = [], []
    for seed in range(3):
        _, label = make_lesion_volume(np.random.default_rng(seed), VOLUME, 3)
        for c in (1, 2):
            components, count = ndimage.label(label[0] == c)
            for k in range(1, count + 1):
                lesion = components == k
                areas = lesion.sum(axis=(1, 2))
                area_changes.append(len(set(areas[areas > 0].tolist())) > 1)
                travels.append(_centroid_travel(lesion))
    z, y, x = np.ogrid[:VOLUME[0], :VOLUME[1], :VOLUME[2]]
    ellipsoid = ((z - 11.3) / 5.2) ** 2 + ((y - 15.6) / 4.1) ** 2 + ((x - 16.2) / 6.3) ** 2 <= 1
    assert all(area_changes)
    assert np.mean(travels) > 1.2  # the cross-sections move; a plain ellipsoid's do not:
    assert _centroid_travel(ellipsoid) < 0.5


def test_lesion_edges_have_partial_volume() -> None:
    image, label = make_lesion_volume(np.random.default_rng(0), (32, 48, 48), 2)
    inner, outer = boundary_ring_positions(image, label[0] == 1, 2)
    assert 0.15 < outer < inner < 1.0


def test_anisotropic_spacing_gives_thicker_slices() -> None:
    def z_to_y_extent(spacing: tuple[float, float, float]) -> float:
        ratios = []
        for seed in range(3):
            _, label = make_lesion_volume(np.random.default_rng(seed), VOLUME, 2, spacing=spacing)
            for box in ndimage.find_objects(ndimage.label(label[0] > 0)[0]):
                ratios.append((box[0].stop - box[0].start) / (box[1].stop - box[1].start))
        return float(np.mean(ratios))

    isotropic, anisotropic = z_to_y_extent((1.0, 1.0, 1.0)), z_to_y_extent((3.0, 1.0, 1.0))
    assert anisotropic < 0.6 < isotropic


def test_lesion_generation_is_seeded() -> None:
    first, again, other = (make_lesion_volume(np.random.default_rng(seed), VOLUME) for seed in (3, 3, 4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


def test_bad_parameters_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(MedsegError, match="num_classes"):
        make_lesion_volume(np.random.default_rng(0), VOLUME, 1)
    with pytest.raises(MedsegError, match="n_cases"):
        write_polyp_dataset(tmp_path, n_cases=0)
    assert not any(tmp_path.iterdir())


# -------------------------------------------------------------------------------------------- writers


def file_states(root: Path) -> dict[str, tuple[int, int]]:
    """Each file's inode and modification time: an atomic rewrite changes the inode."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_polyp_dataset_reads_back_through_the_real_readers(tmp_path: Path) -> None:
    root = write_polyp_dataset(tmp_path / "polyps", n_cases=4, size=SIZE, seed=5)
    names = [f"case_{i:03d}.png" for i in range(4)]
    assert sorted(p.name for p in (root / "images").iterdir()) == names
    assert sorted(p.name for p in (root / "masks").iterdir()) == names
    for i, name in enumerate(names):
        rgb, geometry = read_image(root / "images" / name)
        mask, _ = read_mask(root / "masks" / name)
        expected_rgb, expected_mask = make_polyp_image(np.random.default_rng((5, i)), SIZE)
        assert rgb.shape == (3, *SIZE) and geometry.shape == SIZE
        np.testing.assert_array_equal(rgb, expected_rgb)
        np.testing.assert_array_equal(mask, expected_mask)
        assert set(np.unique(np.asarray(Image.open(root / "masks" / name))).tolist()) == {0, 255}


def test_lesion_dataset_reads_back_with_spacing_and_dataset_json(tmp_path: Path) -> None:
    spacing = (2.5, 1.0, 1.0)
    root = write_lesion_dataset(tmp_path / "lesions", n_cases=2, shape=VOLUME, spacing=spacing, seed=2)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"background": 0, "lesion_a": 1, "lesion_b": 2}
    assert lesion_label_names(3) == meta["labels"]
    assert meta["channel_names"] == {"0": "MRI"} and meta["modality"] == {"0": "MRI"}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    # the Decathlon list names cases without the channel suffix (as nnU-Net v1 did)
    assert meta["training"][1] == {"image": "./imagesTr/case_001.nii.gz",
                                   "label": "./labelsTr/case_001.nii.gz"}
    for i in range(2):
        image_path = root / "imagesTr" / f"case_{i:03d}_0000.nii.gz"
        image, geometry = read_image(image_path)
        label, label_geometry = read_mask(root / "labelsTr" / f"case_{i:03d}.nii.gz")
        expected_image, expected_label = make_lesion_volume(np.random.default_rng((2, i)), VOLUME,
                                                            spacing=spacing)
        np.testing.assert_array_equal(image, expected_image)
        np.testing.assert_array_equal(label, expected_label)
        assert geometry.spacing == pytest.approx(spacing) and geometry.matches(label_geometry)
        header = nib.load(image_path).header
        assert header.get_zooms() == pytest.approx(spacing[::-1])  # NIfTI (i, j, k) = (x, y, z)
        assert np.abs(nib.load(image_path).affine[:3, 3]).max() > 1  # a real origin, not the identity


def test_same_seed_same_arrays_other_seed_other_arrays(tmp_path: Path) -> None:
    roots = [write_polyp_dataset(tmp_path / name, n_cases=2, size=SIZE, seed=seed)
             for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    first, same, other = (read_image(root / "images" / "case_001.png")[0] for root in roots)
    assert np.array_equal(first, same) and not np.array_equal(first, other)


def test_second_call_with_the_same_parameters_rewrites_nothing(tmp_path: Path) -> None:
    root = write_lesion_dataset(tmp_path, n_cases=2, shape=VOLUME, seed=0)
    before = file_states(root)
    write_lesion_dataset(tmp_path, n_cases=2, shape=VOLUME, seed=0)
    assert file_states(root) == before
    assert STAMP_NAME in before and "dataset.json" in before


def test_interrupted_generation_is_regenerated(tmp_path: Path) -> None:
    root = write_polyp_dataset(tmp_path, n_cases=3, size=SIZE)
    (root / STAMP_NAME).unlink()  # as if killed before the stamp was written
    (root / "masks" / "case_002.png").unlink()
    before = file_states(root)
    write_polyp_dataset(tmp_path, n_cases=3, size=SIZE)
    after = file_states(root)
    assert set(after) == set(before) | {STAMP_NAME, "masks/case_002.png"}
    assert all(after[name][0] != state[0] for name, state in before.items())  # every file rewritten


def test_new_parameters_regenerate_and_drop_stale_cases(tmp_path: Path) -> None:
    root = write_polyp_dataset(tmp_path, n_cases=3, size=SIZE, seed=0)
    first = read_image(root / "images" / "case_000.png")[0]
    (root / "notes.txt").write_text("kept")
    write_polyp_dataset(tmp_path, n_cases=2, size=SIZE, seed=1)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["case_000.png", "case_001.png"]
    assert not np.array_equal(read_image(root / "images" / "case_000.png")[0], first)
    assert json.loads((root / STAMP_NAME).read_text(encoding="utf-8"))["seed"] == 1
    assert (root / "notes.txt").read_text(encoding="utf-8") == "kept"
