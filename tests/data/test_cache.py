"""The preprocessed cache: building, skipping unchanged cases, rebuilding on source or config changes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medseg.data.cache import PreprocessedCache
from medseg.data.geometry import DataError, Geometry
from medseg.data.preprocess import Preprocessor

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@dataclass
class FakeCase:
    case_id: str
    images: list[Path]
    label: Path | None = None
    extra: list[str] = field(default_factory=list)


def read_npy(path: Path) -> tuple[np.ndarray, Geometry]:
    """Stand-in reader: ``.npy`` arrays ``[C, *spatial]`` with spacing 1 (picklable for worker tests)."""
    array = np.load(path)
    return array, Geometry.identity(array.shape[1:], "npy")


def make_cases(folder: Path, n: int = 3, shape: tuple[int, ...] = (12, 16)) -> list[FakeCase]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        image = rng.normal(100, 10, (1, *shape)).astype(np.float32)
        label = np.zeros((1, *shape), np.uint8)
        label[(0, *(slice(2, 6) for _ in shape))] = 1 + i % 2
        np.save(folder / f"case{i}_img.npy", image)
        np.save(folder / f"case{i}_lbl.npy", label)
        cases.append(FakeCase(f"case{i}", [folder / f"case{i}_img.npy"], folder / f"case{i}_lbl.npy"))
    return cases


def output_mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir() if p.name != "manifest.json"}


def bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_prepare_writes_arrays_locations_and_manifest(tmp_path: Path) -> None:
    cases = make_cases(tmp_path / "src")
    cache = PreprocessedCache(tmp_path / "cache", Preprocessor(normalization="zscore"), read_npy)
    assert cache.prepare(cases, progress=False) == ["case0", "case1", "case2"]
    image, label = cache.load("case1")
    assert isinstance(image, np.memmap) and image.dtype == np.float32 and image.shape == (1, 12, 16)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 2}
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1) < 1e-3
    np.testing.assert_array_equal(cache.locations("case1")[2], np.argwhere(label[0] == 2))
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text(encoding="utf-8"))
    entry = manifest["cases"]["case1"]
    assert manifest["preprocessor"] == cache.preprocessor.to_dict()
    assert entry["classes"] == [2] and entry["image_shape"] == [1, 12, 16] and entry["spacing"] == [1.0, 1.0]
    assert [s["path"] for s in entry["sources"]] == [str(cases[1].images[0]), str(cases[1].label)]
    assert entry["sources"][0]["size"] == cases[1].images[0].stat().st_size
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_second_prepare_rewrites_nothing_and_touch_rebuilds_one_case(tmp_path: Path) -> None:
    cases = make_cases(tmp_path / "src")
    pre = Preprocessor(normalization="zscore")
    cache = PreprocessedCache(tmp_path / "cache", pre, read_npy)
    cache.prepare(cases, progress=False)
    before = output_mtimes(tmp_path / "cache")
    again = PreprocessedCache(tmp_path / "cache", pre, read_npy)  # a new process: the manifest on disk
    assert again.prepare(cases, progress=False) == []
    assert output_mtimes(tmp_path / "cache") == before
    bump_mtime(cases[1].label)
    assert again.prepare(cases, progress=False) == ["case1"]
    after = output_mtimes(tmp_path / "cache")
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"case1_image.npy", "case1_label.npy", "case1_locations.npz"}
    assert PreprocessedCache(tmp_path / "cache", pre, read_npy).prepare(cases, progress=False) == []


def test_changed_content_and_changed_config_rebuild(tmp_path: Path) -> None:
    cases = make_cases(tmp_path / "src")
    cache = PreprocessedCache(tmp_path / "cache", Preprocessor(normalization="zscore"), read_npy)
    cache.prepare(cases, progress=False)
    np.save(cases[0].images[0], np.ones((1, 12, 16), np.float32) * 7)
    assert cache.prepare(cases, progress=False) == ["case0"]
    other = PreprocessedCache(tmp_path / "cache", Preprocessor(normalization="none"), read_npy)
    assert other.prepare(cases, progress=False) == ["case0", "case1", "case2"]
    np.testing.assert_array_equal(other.load("case0")[0], 7)
    half = PreprocessedCache(tmp_path / "cache", Preprocessor(normalization="none"), read_npy,
                             image_dtype="float16")
    assert half.prepare(cases, progress=False) == ["case0", "case1", "case2"]
    assert half.load("case0")[0].dtype == np.float16


def test_deleted_output_is_rebuilt(tmp_path: Path) -> None:
    cases = make_cases(tmp_path / "src")
    cache = PreprocessedCache(tmp_path / "cache", Preprocessor(), read_npy)
    cache.prepare(cases, progress=False)
    (tmp_path / "cache" / "case2_label.npy").unlink()
    assert cache.prepare(cases, progress=False) == ["case2"]


def test_content_hash_ignores_a_touch(tmp_path: Path) -> None:
    cases = make_cases(tmp_path / "src")
    cache = PreprocessedCache(tmp_path / "cache", Preprocessor(), read_npy, content_hash=True)
    cache.prepare(cases, progress=False)
    assert len(cache.info("case0")["sources"][0]["sha256"]) == 64
    bump_mtime(cases[0].images[0])
    assert cache.prepare(cases, progress=False) == []
    again = PreprocessedCache(tmp_path / "cache", Preprocessor(), read_npy, content_hash=True)
    assert again.info("case0")["sources"][0]["mtime_ns"] == cases[0].images[0].stat().st_mtime_ns


def test_bad_case_raises_a_data_error_and_keeps_finished_cases(tmp_path: Path) -> None:
    cases = make_cases(tmp_path / "src")
    np.save(cases[1].label, np.zeros((1, 5, 5), np.uint8))
    cache = PreprocessedCache(tmp_path / "cache", Preprocessor(), read_npy)
    with pytest.raises(DataError, match=r"case1_lbl.npy: size \(5, 5\) differs from the image's \(12, 16\)"):
        cache.prepare(cases, progress=False)
    assert PreprocessedCache(tmp_path / "cache", Preprocessor(), read_npy).case_ids == ["case0"]
    assert not [p for p in (tmp_path / "cache").iterdir() if "case1" in p.name]


def test_multichannel_cases_and_workers(tmp_path: Path) -> None:
    cases = make_cases(tmp_path / "src", n=2, shape=(6, 8, 10))
    for case in cases:  # a second channel file per case (Decathlon's _0001)
        second = case.images[0].with_name(case.case_id + "_img1.npy")
        np.save(second, np.load(case.images[0]) * 2)
        case.images.append(second)
    cache = PreprocessedCache(tmp_path / "cache", Preprocessor(normalization="none"), read_npy)
    assert sorted(cache.prepare(cases, progress=False, num_workers=2)) == ["case0", "case1"]
    image, label = cache.load("case1", mmap=False)
    assert image.shape == (2, 6, 8, 10) and label.shape == (1, 6, 8, 10)
    np.testing.assert_allclose(image[1], 2 * image[0])


def test_kvasir_cache_second_pass_is_stat_only(tmp_path: Path) -> None:
    root = DATA / "kvasir-seg"
    if not root.is_dir():
        pytest.skip("../shared/data is absent")
    from medseg.data.datasets import load_dataset

    cases = load_dataset(root).cases[:4]
    pre = Preprocessor(normalization="rgb", resize_shape=(64, 64))
    cache = PreprocessedCache(tmp_path / "cache", pre)
    assert len(cache.prepare(cases, progress=False)) == 4
    image, label = cache.load(cases[0].case_id)
    assert image.shape == (3, 64, 64) and label.shape == (1, 64, 64) and set(np.unique(label)) <= {0, 1}
    assert cache.info(cases[0].case_id)["classes"] == [1]
    before = output_mtimes(tmp_path / "cache")
    assert PreprocessedCache(tmp_path / "cache", pre).prepare(cases, progress=False) == []
    assert output_mtimes(tmp_path / "cache") == before


def test_hippocampus_cache_with_resampling(tmp_path: Path) -> None:
    root = DATA / "msd-task04-hippocampus"
    if not root.is_dir():
        pytest.skip("../shared/data is absent")
    from medseg.data.datasets import load_dataset

    cases = load_dataset(root).cases[:2]
    pre = Preprocessor(normalization="zscore", norm_stats={"nonzero_only": True}, crop_nonzero=True,
                       target_spacing=(1.5, 1.5, 1.5), image_order=1)
    cache = PreprocessedCache(tmp_path / "cache", pre)
    cache.prepare(cases, progress=False)
    for case in cases:
        info = cache.info(case.case_id)
        image, label = cache.load(case.case_id)
        assert info["spacing"] == [1.5, 1.5, 1.5] and info["classes"] == [1, 2]
        expected = [round((stop - start) / 1.5) for start, stop in info["crop_box"]]
        assert list(image.shape[1:]) == expected == list(label.shape[1:])
        assert set(np.unique(label)) == {0, 1, 2}
