"""Training data loaders over the preprocessed cache: random patches or whole images, seeded per epoch.

Patch mode (nnU-Net's data loader): every batch draws ``batch_size`` cases at random (with replacement)
and one patch from each with :class:`~medseg.data.sampling.PatchSampler`; an epoch is a fixed number of
batches. Whole-image mode (fixed-size 2D models): an epoch is a seeded shuffle of the cases.

The randomness of batch ``i`` of epoch ``e`` comes from ``numpy.random.default_rng([seed, rank, e, i])``
only, so the stream is the same for any number of workers and an epoch can be replayed (exact resume) with
:meth:`SeededLoader.set_epoch`. The work per sample is slicing a memory-mapped ``.npy`` into a preallocated
batch array; augmentation happens afterwards on the training device (:mod:`medseg.data.augment`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from medseg.data.cache import PreprocessedCache
from medseg.data.sampling import PatchSampler
from medseg.data.slices import SliceSampler
from medseg.errors import MedsegError

Batch = tuple[torch.Tensor, torch.Tensor]


def _labelled_ids(cache: PreprocessedCache, case_ids: Sequence[str]) -> list[str]:
    ids = list(case_ids)
    if not ids:
        raise MedsegError("training loader: no cases")
    for case_id in ids:
        if not cache.info(case_id)["label"]:
            raise MedsegError(f"training loader: case {case_id!r} has no label")
    return ids


class EpochBatches(IterableDataset):
    """Batches numbered within an epoch; batch ``i`` comes from ``default_rng([seed, rank, epoch, i])`` and
    worker ``w`` of ``W`` makes batches ``w, w + W, ...`` (the loader interleaves them back in order)."""

    def __init__(self, cache: PreprocessedCache, case_ids: Sequence[str], batch_size: int, seed: int,
                 rank: int) -> None:
        if batch_size < 1:
            raise MedsegError(f"training loader: batch size {batch_size} must be positive")
        self.cache = cache
        self.case_ids = _labelled_ids(cache, case_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, self.epoch if epoch is None else epoch, index])

    def batch(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch`` (default: the current one) as numpy arrays."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for index in range(worker, len(self), workers):
            image, label = self.batch(index)
            yield torch.from_numpy(image), torch.from_numpy(label)


class PatchDataset(EpochBatches):
    """Batches ``(image [B, C, *patch] float32, label [B, L, *patch])`` of random patches from the cache.

    Args:
        cache: a prepared :class:`~medseg.data.cache.PreprocessedCache`.
        case_ids: the training cases.
        sampler: draws the patches (patch size, foreground share, padding); a
            :class:`~medseg.data.slices.SliceSampler` draws 2D patches of slice windows (2.5D).
        batch_size: patches per batch.
        batches_per_epoch: the epoch length (nnU-Net: 250 iterations).
        seed: the one seed of the stream; ``rank`` separates the streams of distributed processes.
    """

    def __init__(self, cache: PreprocessedCache, case_ids: Sequence[str],
                 sampler: PatchSampler | SliceSampler, batch_size: int, batches_per_epoch: int, seed: int = 0,
                 rank: int = 0) -> None:
        super().__init__(cache, case_ids, batch_size, seed, rank)
        if batches_per_epoch < 1:
            raise MedsegError(f"training loader: batches per epoch {batches_per_epoch} must be positive")
        self.sampler = sampler
        self.batches_per_epoch = batches_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batch(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng(index, epoch)
        cases = []
        for k in rng.integers(len(self.case_ids), size=self.batch_size):
            image, label = self.cache.load(self.case_ids[k])
            cases.append((image, label, self.cache.locations(self.case_ids[k])))
        return self.sampler.sample_batch(cases, rng)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """A permutation of ``range(n)`` drawn from ``(seed, epoch)``; process ``rank`` of ``world_size`` gets
    every ``world_size``-th entry of it (the same count, ``n // world_size``, on every rank)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[rank::world_size][:n // world_size]


class WholeImageDataset(EpochBatches):
    """Batches of whole cached cases ``(image [B, C, *spatial] float32, label [B, L, *spatial])`` for
    fixed-size models: each epoch is a seeded shuffle of the cases (split between ranks), last partial
    batch dropped when there is more than one batch."""

    def __init__(self, cache: PreprocessedCache, case_ids: Sequence[str], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cache, case_ids, batch_size, seed, rank)
        self.world_size = world_size
        shapes = {tuple(cache.info(case_id)["image_shape"]) for case_id in self.case_ids}
        if len(shapes) > 1:
            raise MedsegError(f"whole-image batches need one image shape, the cache has {len(shapes)} "
                              "(set preprocessing.resize_shape, or train on patches)")
        self.image_shape = shapes.pop()

    def __len__(self) -> int:
        return max(1, len(self.case_ids) // self.world_size // self.batch_size)

    def batch(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        order = epoch_order(len(self.case_ids), self.seed, self.epoch if epoch is None else epoch, self.rank,
                            self.world_size)
        chosen = [self.case_ids[k] for k in order[index * self.batch_size:(index + 1) * self.batch_size]]
        images = np.empty((len(chosen), *self.image_shape), np.float32)
        labels = []
        for i, case_id in enumerate(chosen):
            image, label = self.cache.load(case_id)
            images[i] = image
            labels.append(label)
        return images, np.stack(labels)


def seed_worker(worker_id: int) -> None:
    """Seed numpy's and Python's global generators in a worker from the seed torch gave it (which comes
    from the loader's seeded generator), for any code that uses them."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class SeededLoader(DataLoader):
    """A DataLoader whose epochs are numbered: each ``iter()`` runs the next epoch (0, 1, ...);
    :meth:`set_epoch` chooses the next one (to resume). The epoch reaches the workers because they are
    started anew for every epoch (no persistent workers)."""

    def __init__(self, dataset: EpochBatches, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, persistent_workers=False, **kwargs)
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        self.dataset.set_epoch(self.next_epoch)
        self.next_epoch += 1
        return super().__iter__()


def build_train_loader(cache: PreprocessedCache, case_ids: Sequence[str], patch_size: Sequence[int] | None,
                       batch_size: int, foreground_fraction: float = 0.33, seed: int = 0,
                       num_workers: int = 0, *, batches_per_epoch: int = 250, pin_memory: bool | None = None,
                       image_pad_value: float = 0.0, label_pad_value: int = 0, rank: int = 0,
                       world_size: int = 1, prefetch_factor: int = 2, slices: int | None = None,
                       slice_axes: Sequence[int] = (0,)) -> SeededLoader:
    """The training loader: ``(image [B, C, *patch] float32, label [B, L, *patch] integer)`` batches.

    ``patch_size`` ``None`` gives whole-image mode (one seeded pass over the cases per epoch, split between
    the ``world_size`` ranks; equal shapes needed; ``batches_per_epoch`` unused). In patch mode each rank
    draws its own stream. Memory is pinned when CUDA is available (unless ``pin_memory`` says otherwise);
    worker RNGs are seeded from ``seed``; the batches depend only on ``seed``, ``rank`` and the epoch.
    ``slices`` k (2.5D, :mod:`medseg.data.slices`): 2D patches of ``patch_size`` from windows of ``2k + 1``
    slices across one of ``slice_axes`` (``[B, C * (2k + 1), *patch]``); needs a 2D ``patch_size``.
    """
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin, "worker_init_fn": seed_worker,
                               "generator": torch.Generator().manual_seed(seed)}
    if num_workers > 0:
        options["prefetch_factor"] = prefetch_factor
    if slices is not None:
        if patch_size is None:
            raise MedsegError("training loader: 2.5D slices need a 2D patch size")
        sampler: PatchSampler | SliceSampler = SliceSampler(
            patch_size, slices, slice_axes, foreground_fraction, seed, image_pad_value=image_pad_value,
            label_pad_value=label_pad_value)
    elif patch_size is None:
        return SeededLoader(WholeImageDataset(cache, case_ids, batch_size, seed, rank, world_size), **options)
    else:
        sampler = PatchSampler(patch_size, foreground_fraction, seed, image_pad_value=image_pad_value,
                               label_pad_value=label_pad_value)
    return SeededLoader(PatchDataset(cache, case_ids, sampler, batch_size, batches_per_epoch, seed, rank),
                        **options)
