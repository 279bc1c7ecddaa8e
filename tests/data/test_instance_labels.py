"""Instance label maps through the data pipeline: preprocessing, cache, augmentation and Mask R-CNN targets
keep 16-bit ids (no relabelling, no new id, no two ids merged); binarising for semantic baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medseg.data import BatchAugmenter, PreprocessedCache, Preprocessor, write_image, write_mask
from medseg.data.augment import AugmentationConfig
from medseg.data.datasets import Case
from medseg.data.geometry import Geometry
from medseg.data.instances import instance_targets_from_batch, instance_targets_from_label_map
from medseg.data.synthetic import make_nuclei_image

IDS = (7, 300, 40000, 65535)  # 8- and 16-bit ids, not consecutive


def id_map(shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Four discs (two of them touching) with the ids of ``IDS``, ``[1, H, W]`` uint16."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros(shape, np.uint16)
    discs = ((16, 16, 7), (16, 30, 7), (44, 20, 9), (40, 48, 10))
    for (cy, cx, r), identifier in zip(discs, IDS, strict=True):
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = identifier
    return label[None]


def test_preprocessing_and_the_cache_keep_16_bit_ids(tmp_path: Path) -> None:
    label = id_map()
    image = (label > 0).astype(np.float32) * 200
    for preprocessor in (Preprocessor(normalization="rgb", target_spacing=(0.7, 0.7)),
                         Preprocessor(normalization="rgb", resize_shape=(48, 80))):
        out = preprocessor(image, label, Geometry.identity((64, 64))).label
        assert set(np.unique(out).tolist()) == {0, *IDS}  # nearest: the same ids, none new
        assert all(ndimage.label(out[0] == i)[1] == 1 for i in IDS)  # each object still one piece
    images, masks = tmp_path / "images", tmp_path / "masks"
    write_image(images / "a.png", image.astype(np.uint8))
    write_mask(masks / "a.png", label)
    cache = PreprocessedCache(tmp_path / "cache", Preprocessor(normalization="rgb"))
    cache.prepare([Case("a", [images / "a.png"], masks / "a.png")], progress=False)
    _, cached = cache.load("a")
    assert cached.dtype.itemsize >= 4 or cached.dtype == np.uint16  # 65535 does not fit int16
    assert np.array_equal(cached, label)
    assert sorted(cache.info("a")["label_values"]) == [0, *IDS]


def test_binarize_makes_a_foreground_mask() -> None:
    label = id_map()
    out = Preprocessor(normalization="none", binarize=True)(label.astype(np.float32), label,
                                                            Geometry.identity((64, 64))).label
    assert out.dtype == np.uint8 and np.array_equal(out, (label > 0).astype(np.uint8))
    assert "binarize" not in Preprocessor().to_dict()  # off: earlier fingerprints (caches) stay valid
    assert Preprocessor.from_dict(Preprocessor(binarize=True).to_dict()).binarize


def test_augmentation_moves_ids_without_new_or_merged_ones() -> None:
    label = torch.from_numpy(id_map().astype(np.int32))[None].repeat(6, 1, 1, 1)  # [6, 1, 64, 64]
    image = (label > 0).float()
    spatial = AugmentationConfig.from_dict({
        "mirror": {"p": 1.0}, "rot90": {"p": 1.0}, "rotation": {"p": 1.0}, "scale": {"p": 1.0,
                                                                                     "factor": [0.8, 1.2]},
        **{name: False for name in ("noise", "blur", "brightness", "contrast", "low_resolution", "gamma")}})
    out_image, out_label = BatchAugmenter(spatial, 2, seed=3)(image, label)
    assert out_label.dtype == torch.int32
    assert not torch.equal(out_label, label)  # it did move
    for sample_image, sample in zip(out_image, out_label.numpy(), strict=True):
        assert set(np.unique(sample).tolist()) <= {0, *IDS}  # no new id
        for identifier in IDS:
            pieces = ndimage.label(sample[0] == identifier, structure=np.ones((3, 3)))[1]
            assert pieces <= 1  # not split (so not merged with a neighbour either: ids stay distinct)
        kept = [i for i in IDS if (sample == i).any()]
        assert len(kept) >= 3  # objects may leave the field of view, most stay
        foreground = sample[0] > 0
        overlap = (foreground & (sample_image[0].numpy() > 0.5)).sum() / max(foreground.sum(), 1)
        assert overlap > 0.9  # the image moved with the labels


def test_targets_per_image_drop_slivers_and_keep_the_rest() -> None:
    label = torch.from_numpy(id_map().astype(np.int32))
    patch = label[:, :, 38:]  # a crop: the disc at x 20 +- 9 loses all, the disc at x 48 keeps most
    patch[0, 0, 0] = 123  # a one-pixel sliver
    batch = torch.stack([patch, torch.zeros_like(patch)])
    targets = instance_targets_from_batch(batch, min_pixels=4)
    assert len(targets) == 2
    assert targets[0]["masks"].shape[0] == 1 and targets[1]["masks"].shape[0] == 0
    assert targets[0]["masks"][0].sum() == (patch[0] == 65535).sum()
    x1, y1, x2, y2 = targets[0]["boxes"][0].tolist()
    ys, xs = np.nonzero(patch[0].numpy() == 65535)
    assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].dtype == torch.int64
    full = instance_targets_from_label_map(patch[0], min_pixels=1)
    assert full["masks"].shape[0] == 2  # the sliver is a target without the size limit


def test_synthetic_nuclei_have_distinct_16_bit_ids_and_touching_pairs() -> None:
    rgb, label = make_nuclei_image(np.random.default_rng(0), (96, 96))
    assert rgb.shape == (3, 96, 96) and rgb.dtype == np.uint8 and label.dtype == np.uint16
    ids = np.unique(label)[1:]
    assert len(ids) >= 4 and ids.max() > 255
    assert ndimage.label(label[0] > 0)[1] < len(ids)  # some nuclei touch
