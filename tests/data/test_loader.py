"""The training loader: batch shapes and dtypes, foreground share, seeded determinism (also across worker
counts and epochs), whole-image epochs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medseg.data.cache import PreprocessedCache
from medseg.data.geometry import Geometry
from medseg.data.loader import build_train_loader, epoch_order
from medseg.data.preprocess import Preprocessor
from medseg.errors import MedsegError


def read_npy(path: Path) -> tuple[np.ndarray, Geometry]:
    array = np.load(path)
    return array, Geometry.identity(array.shape[1:])


def prepared_cache(tmp_path: Path, shapes: list[tuple[int, ...]], channels: int = 2,
                   preprocessor: Preprocessor | None = None) -> PreprocessedCache:
    """A cache of cases with random images and a small cube of class ``1 + i % 3`` in case ``i``."""
    rng = np.random.default_rng(0)
    cases = []
    for i, shape in enumerate(shapes):
        image_path, label_path = tmp_path / f"c{i}_image.npy", tmp_path / f"c{i}_label.npy"
        np.save(image_path, rng.uniform(1, 2, (channels, *shape)).astype(np.float32))
        label = np.zeros((1, *shape), np.uint8)
        label[(0, *(slice(n // 3, n // 3 + 3) for n in shape))] = 1 + i % 3
        np.save(label_path, label)
        cases.append(SimpleNamespace(case_id=f"c{i}", images=[image_path], label=label_path))
    preprocessor = preprocessor or Preprocessor(normalization="none")
    cache = PreprocessedCache(tmp_path / "cache", preprocessor, read_npy)
    cache.prepare(cases, progress=False)
    return cache


def collect(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(image.clone(), label.clone()) for image, label in loader]


@pytest.mark.parametrize(("shapes", "patch"), [
    ([(40, 50), (30, 20), (64, 64)], (32, 32)),
    ([(20, 24, 28), (10, 30, 30)], (16, 16, 16)),
])
def test_patch_batches_have_the_contract_shapes_and_dtypes(tmp_path: Path, shapes: list, patch: tuple
                                                           ) -> None:
    cache = prepared_cache(tmp_path, shapes)
    loader = build_train_loader(cache, cache.case_ids, patch, batch_size=3, seed=0, batches_per_epoch=4)
    batches = collect(loader)
    assert len(loader) == 4 and len(batches) == 4
    for image, label in batches:
        assert image.shape == (3, 2, *patch) and image.dtype == torch.float32
        assert label.shape == (3, 1, *patch) and label.dtype == torch.uint8
        assert torch.any(label[-1] > 0)  # the last of three is foreground-centred


def test_same_seed_same_batches_for_any_worker_count(tmp_path: Path) -> None:
    cache = prepared_cache(tmp_path, [(40, 50), (30, 20), (64, 64)])

    def epochs(seed: int, workers: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        loader = build_train_loader(cache, cache.case_ids, (24, 24), batch_size=2, seed=seed,
                                    num_workers=workers, batches_per_epoch=5)
        return [collect(loader), collect(loader)]

    first, again, workers, other = epochs(3, 0), epochs(3, 0), epochs(3, 2), epochs(4, 0)
    for a, b, c in zip(sum(first, []), sum(again, []), sum(workers, []), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[0], c[0])
    assert not torch.equal(first[0][0][0], first[1][0][0])  # epochs differ
    assert not torch.equal(first[0][0][0], other[0][0][0])  # seeds differ


def test_set_epoch_replays_an_epoch(tmp_path: Path) -> None:
    cache = prepared_cache(tmp_path, [(40, 50), (30, 20)])
    loader = build_train_loader(cache, cache.case_ids, (16, 16), batch_size=2, seed=1, batches_per_epoch=3)
    collect(loader)
    second = collect(loader)
    loader.set_epoch(1)
    for a, b in zip(second, collect(loader), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_patches_come_from_the_cached_images(tmp_path: Path) -> None:
    cache = prepared_cache(tmp_path, [(12, 14)], channels=1)
    image, _ = cache.load("c0")
    values = set(np.asarray(image).ravel().tolist())
    loader = build_train_loader(cache, ["c0"], (8, 8), batch_size=2, seed=0, batches_per_epoch=2)
    for batch, _ in loader:
        assert set(batch.numpy().ravel().tolist()) <= values


def test_multilabel_regions_give_region_channels(tmp_path: Path) -> None:
    pre = Preprocessor(normalization="zscore", label_mapping={"any": [1, 2, 3], "two": [2]})
    cache = prepared_cache(tmp_path, [(20, 20, 20), (18, 22, 20)], preprocessor=pre)
    image, label = next(iter(build_train_loader(cache, cache.case_ids, (12, 12, 12), batch_size=2,
                                                batches_per_epoch=1)))
    assert image.shape == (2, 2, 12, 12, 12) and label.shape == (2, 2, 12, 12, 12)
    assert set(torch.unique(label).tolist()) <= {0, 1}


def test_whole_image_epochs_visit_every_case_once_in_a_seeded_order(tmp_path: Path) -> None:
    pre = Preprocessor(normalization="none", resize_shape=(16, 16))
    cache = prepared_cache(tmp_path, [(20, 30), (25, 25), (16, 40), (30, 30), (18, 18)], preprocessor=pre)
    loader = build_train_loader(cache, cache.case_ids, None, batch_size=2, seed=5)
    batches = collect(loader)
    assert len(batches) == 2 and batches[0][0].shape == (2, 2, 16, 16) and batches[0][1].dtype == torch.uint8
    means = {round(float(cache.load(cid)[0].mean()), 5): cid for cid in cache.case_ids}
    seen = [means[round(float(img.mean()), 5)] for image, _ in batches for img in image]
    assert len(set(seen)) == 4  # drop_last: 4 of 5 cases, each once
    assert seen == [cache.case_ids[k] for k in epoch_order(5, seed=5, epoch=0)[:4]]
    assert sorted(epoch_order(5, seed=5, epoch=0)) == [0, 1, 2, 3, 4]
    assert list(epoch_order(5, seed=5, epoch=1)) != list(epoch_order(5, seed=5, epoch=0))
    assert [means[round(float(img.mean()), 5)] for image, _ in collect(loader) for img in image] != seen


def test_epoch_order_splits_between_ranks() -> None:
    parts = [set(epoch_order(7, seed=0, epoch=2, rank=rank, world_size=2).tolist()) for rank in range(2)]
    assert len(parts[0]) == len(parts[1]) == 3 and not parts[0] & parts[1]


def test_unlabelled_cases_and_mixed_shapes_are_refused(tmp_path: Path) -> None:
    cache = prepared_cache(tmp_path, [(20, 30), (25, 25)])
    with pytest.raises(MedsegError, match="one image shape"):
        build_train_loader(cache, cache.case_ids, None, batch_size=2)
    cache.cases["c1"] = {**cache.cases["c1"], "label": None}
    with pytest.raises(MedsegError, match="'c1' has no label"):
        build_train_loader(cache, cache.case_ids, (8, 8), batch_size=2)
