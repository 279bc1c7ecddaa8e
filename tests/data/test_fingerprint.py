"""Data set fingerprint: per-case values against numpy, modality guesses, the JSON cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import medseg.data.fingerprint as fingerprint_module
from medseg.data.fingerprint import dataset_fingerprint
from medseg.data.geometry import Geometry
from medseg.data.io import write_image, write_mask
from medseg.errors import MedsegError


def _write_2d(root: Path, n: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        image = rng.integers(0, 256, (3, 20 + i, 24), dtype=np.uint8)
        mask = np.zeros((1, 20 + i, 24), np.uint8)
        mask[0, 3:9 + i, 5:15] = 1
        write_image(root / "images" / f"c{i}.png", image)
        write_mask(root / "masks" / f"c{i}.png", mask)
        pairs.append((image, mask))
    return pairs


def _write_3d(root: Path, spacing: tuple[float, ...], n: int = 3, seed: int = 0
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        shape = (6, 16 + 2 * i, 16)
        image = rng.normal(-200, 400, (1, *shape)).astype(np.float32)
        image[0, 0, 0, 0] = -1000.0  # air
        label = np.zeros((1, *shape), np.uint8)
        label[0, 1:4, 4:10, 4:12] = 1
        label[0, 2:3, 5:7, 5:7] = 2
        geometry = Geometry(spacing=spacing, origin=(0.0,) * 3, direction=tuple(np.eye(3).ravel()))
        write_image(root / "images" / f"v{i}.nii.gz", image, geometry)
        write_mask(root / "masks" / f"v{i}.nii.gz", label, geometry)
        pairs.append((image, label))
    return pairs


def _expected(image: np.ndarray, label: np.ndarray) -> dict[str, list[float]]:
    values = image[:, label[0] > 0].astype(np.float64)
    return {"mean": values.mean(1).tolist(), "std": values.std(1).tolist(),
            "low": np.percentile(values, 0.5, axis=1).tolist(),
            "high": np.percentile(values, 99.5, axis=1).tolist()}


def test_2d_fingerprint_matches_numpy(tmp_path: Path) -> None:
    pairs = _write_2d(tmp_path)
    fp = dataset_fingerprint(tmp_path, progress=False)
    assert fp.spatial_dims == 2 and fp.channels == 3 and fp.modality() == "photo"
    for case, (image, mask) in zip(fp.cases, pairs, strict=True):
        expected = _expected(image, mask)
        assert case.shape == image.shape[1:] and case.spacing == (1.0, 1.0) and case.channels == 3
        np.testing.assert_allclose(case.foreground_mean, expected["mean"], rtol=1e-9)
        np.testing.assert_allclose(case.foreground_std, expected["std"], rtol=1e-9)
        np.testing.assert_allclose(case.foreground_p00_5, expected["low"], rtol=1e-9)
        np.testing.assert_allclose(case.foreground_p99_5, expected["high"], rtol=1e-9)
        assert case.label_counts == {0: int((mask == 0).sum()), 1: int(mask.sum())}
        assert case.intensity_max == image.reshape(3, -1).max(1).astype(float).tolist()
    total = sum(m.size for _, m in pairs)
    assert fp.class_fractions[1] == pytest.approx(sum(int(m.sum()) for _, m in pairs) / total)
    pooled = np.concatenate([i[:, m[0] > 0] for i, m in pairs], axis=1).astype(np.float64)
    stats = fp.foreground_intensity()
    assert stats is not None
    np.testing.assert_allclose(stats["mean"], pooled.mean(1), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], pooled.std(1), rtol=1e-9)


def test_3d_fingerprint_spacing_labels_and_ct_guess(tmp_path: Path) -> None:
    pairs = _write_3d(tmp_path, spacing=(5.0, 1.0, 1.0))
    fp = dataset_fingerprint(tmp_path, progress=False, jobs=2)  # a process pool
    assert fp.spatial_dims == 3 and fp.modality() == "CT"
    np.testing.assert_allclose(fp.median_spacing, [5.0, 1.0, 1.0])
    assert fp.label_values == [0, 1, 2]
    for case, (image, label) in zip(fp.cases, pairs, strict=True):
        expected = _expected(image, label)
        np.testing.assert_allclose(case.foreground_mean, expected["mean"], rtol=1e-6)
        np.testing.assert_allclose(case.foreground_p99_5, expected["high"], rtol=1e-6)
        assert case.label_counts == {v: int((label == v).sum()) for v in (0, 1, 2)}
        assert case.intensity_min == [float(image.min())] and case.intensity_min[0] <= -1000


def test_non_negative_volumes_are_mr(tmp_path: Path) -> None:
    pairs = _write_3d(tmp_path, spacing=(1.0, 1.0, 1.0))
    for i, (image, _) in enumerate(pairs):  # rewrite as positive scanner units
        write_image(tmp_path / "images" / f"v{i}.nii.gz", np.abs(image) + 1)
    assert dataset_fingerprint(tmp_path, progress=False).modality() == "MR"


def test_cache_hit_reads_nothing_and_a_touched_file_is_read_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    _write_2d(data)
    cache = tmp_path / "fp.json"
    reads: list[str] = []
    original = fingerprint_module.read_case

    def counting(case, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(case.case_id)
        return original(case, *args, **kwargs)

    monkeypatch.setattr(fingerprint_module, "read_case", counting)
    first = dataset_fingerprint(data, cache=cache, progress=False)
    assert sorted(reads) == ["c0", "c1", "c2"] and cache.is_file()
    stamp = cache.stat().st_mtime_ns
    reads.clear()
    second = dataset_fingerprint(data, cache=cache, progress=False)
    assert reads == [] and cache.stat().st_mtime_ns == stamp
    assert [c.to_dict() for c in second.cases] == [c.to_dict() for c in first.cases]
    mask = data / "masks" / "c1.png"
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    dataset_fingerprint(data, cache=cache, progress=False)
    assert reads == ["c1"]


def test_unlabelled_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MedsegError):
        dataset_fingerprint(tmp_path / "missing", progress=False)
