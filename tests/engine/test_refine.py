"""BPR as a pipeline (medseg.engine.refine): refine prepare -> medseg train -> medseg refine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from helpers import NO_AUGMENTATION, tiny_checkpoint
from medseg.cli import main
from medseg.data.datasets import load_dataset, read_splits
from medseg.data.geometry import DataError
from medseg.data.io import case_id, read_image, read_mask, write_mask
from medseg.data.synthetic import write_polyp_dataset
from medseg.engine.config import load_config
from medseg.engine.refine import byte_scale, prepare_patches, refine_paths
from medseg.engine.trainer import train
from medseg.errors import MedsegError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def eroded_predictions(data: Path, out: Path, iterations: int = 1) -> list[str]:
    """Coarse predictions: every ground-truth mask eroded (the coarse model under-segments)."""
    ids = []
    for mask_path in sorted((data / "masks").iterdir()):
        mask, geometry = read_mask(mask_path)
        coarse = ndimage.binary_erosion(mask[0] > 0, iterations=iterations).astype(np.uint8)
        write_mask(out / f"{case_id(mask_path)}.png", coarse[None], geometry)
        ids.append(case_id(mask_path))
    return ids


@pytest.fixture
def polyps(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    write_polyp_dataset(data, n_cases=6, size=(64, 64))
    eroded_predictions(data, tmp_path / "coarse")
    return data, tmp_path / "coarse"


def test_prepare_writes_a_paired_patch_data_set(polyps: tuple[Path, Path], tmp_path: Path) -> None:
    data, coarse = polyps
    summary = prepare_patches(coarse, data, tmp_path / "patches", patch_size=16, progress=False)
    assert summary.cases == 6 and summary.patches > 6 and summary.dropped == 0
    patches = load_dataset(tmp_path / "patches")
    assert len(patches.cases) == summary.patches
    first = patches.cases[0]
    image, _ = read_image(first.images[0])
    truth, _ = read_mask(first.label)
    assert image.shape == (4, 16, 16) and image.dtype == np.uint8 and truth.shape == (1, 16, 16)
    assert set(np.unique(image[3])) <= {0, 255} and set(np.unique(truth)) <= {0, 1}
    record = json.loads((tmp_path / "patches" / "patches.json").read_text())
    entry = next(r for r in record["patches"] if r["id"] == first.case_id)
    source, _ = read_image(next((data / "images").glob(f"{entry['case']}.*")))
    y, x = entry["start"]
    np.testing.assert_array_equal(image[:3], byte_scale(source)[:, y:y + 16, x:x + 16])
    split = read_splits(tmp_path / "patches" / "splits.json")[0]
    assert sorted(split["train"] + split["val"]) == sorted(r["id"] for r in record["patches"])
    val_cases = {r["case"] for r in record["patches"] if r["id"] in split["val"]}
    train_cases = {r["case"] for r in record["patches"] if r["id"] in split["train"]}
    assert val_cases and train_cases and not val_cases & train_cases
    with pytest.raises(DataError, match="already holds patches"):
        prepare_patches(coarse, data, tmp_path / "patches", patch_size=16, progress=False)


def test_prepare_drops_objects_far_from_the_ground_truth(polyps: tuple[Path, Path], tmp_path: Path) -> None:
    data, coarse = polyps
    for path in coarse.iterdir():  # shift every coarse mask far away: IoU 0 with its ground truth
        mask, geometry = read_mask(path)
        write_mask(path, np.roll(mask, 32, axis=(1, 2)), geometry)
    with pytest.raises(DataError, match="IoU < 0.5"):
        prepare_patches(coarse, data, tmp_path / "patches", patch_size=16, progress=False)


def test_prepare_matches_instances_to_their_best_ground_truth(tmp_path: Path) -> None:
    data = tmp_path / "nuclei"
    truth = np.zeros((40, 40), np.uint16)
    truth[5:15, 5:15], truth[20:32, 18:34] = 7, 9
    image = np.random.default_rng(0).integers(0, 255, (3, 40, 40), dtype=np.uint8)
    from medseg.data.io import write_image

    write_image(data / "images" / "a.png", image)
    write_mask(data / "masks" / "a.png", truth[None])
    coarse = np.zeros_like(truth)
    coarse[6:15, 6:15], coarse[21:31, 19:33], coarse[0:3, 36:40] = 1, 2, 3  # 3: no ground truth
    write_mask(tmp_path / "coarse" / "a.png", coarse[None])
    summary = prepare_patches(tmp_path / "coarse", data, tmp_path / "patches", instances=True, patch_size=8,
                              progress=False)
    assert summary.objects == 3 and summary.dropped == 1
    for case in load_dataset(tmp_path / "patches").cases:
        label = int(case.case_id.split("-")[1])
        start = next(r["start"] for r in json.loads((tmp_path / "patches" / "patches.json").read_text())
                     ["patches"] if r["id"] == case.case_id)
        expected = truth[start[0]:start[0] + 8, start[1]:start[1] + 8] == {1: 7, 2: 9}[label]
        np.testing.assert_array_equal(read_mask(case.label)[0][0], expected)


def test_refine_refuses_other_checkpoints_and_bad_input(polyps: tuple[Path, Path], tmp_path: Path) -> None:
    data, coarse = polyps
    unet = tiny_checkpoint(tmp_path / "unet.pt", in_channels=3)
    with pytest.raises(MedsegError, match="not a BPR refiner"):
        refine_paths(unet, data / "images", coarse, tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="the images must be a folder"):
        refine_paths(unet, data / "missing", coarse, tmp_path / "out", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no coarse prediction is named after an image"):
        refine_paths(unet, empty, coarse, tmp_path / "out", progress=False)
    assert main(["refine", str(unet), str(data / "images"), str(empty), str(tmp_path / "out")]) == 2
    assert main(["refine", "prepare", str(coarse), str(data)]) == 2


@pytest.mark.slow
def test_prepare_train_refine_end_to_end(polyps: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    data, coarse = polyps
    patches = tmp_path / "patches"
    assert main(["refine", "prepare", str(coarse), str(data), str(patches), "--patch-size", "16",
                 "--no-progress"]) == 0
    assert "patches" in capsys.readouterr().err
    overrides = [f"data.root={patches}", f"data.splits_file={patches / 'splits.json'}", "data.resize=[32,32]",
                 "data.batch_size=4", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}",
                 "model.options={config: hrnet_w18_small, width: 4, stem_width: 8, stage1_channels: 4}",
                 "train.epochs=1", "train.iterations_per_epoch=3", "train.device=cpu", "train.amp=none",
                 f"run_dir={tmp_path / 'run'}"]
    config = load_config(CONFIGS / "bpr-polyp.yaml", overrides)
    config.augmentation = type(config.augmentation).from_dict(NO_AUGMENTATION)
    result = train(config, progress=False)
    out = tmp_path / "refined"
    assert main(["refine", str(result.last_checkpoint), str(data / "images"), str(coarse), str(out),
                 "--patch-size", "16", "--device", "cpu", "--no-progress"]) == 0
    written = sorted(out.iterdir())
    assert [case_id(p) for p in written] == sorted(case_id(p) for p in coarse.iterdir())
    for path in written:
        refined, _ = read_mask(path)
        original, _ = read_mask(coarse / path.name)
        assert refined.shape == original.shape and set(np.unique(refined)) <= {0, 1}


def test_prepare_writes_cubic_patches_in_3d(tmp_path: Path) -> None:
    from medseg.data.io import write_image

    data = tmp_path / "vols"
    truth = np.zeros((20, 24, 22), np.uint8)
    truth[4:16, 5:19, 6:17] = 1
    image = np.random.default_rng(0).normal(100, 20, (1, 20, 24, 22)).astype(np.float32)
    write_image(data / "images" / "v.nii.gz", image)
    write_mask(data / "masks" / "v.nii.gz", truth[None])
    coarse = ndimage.binary_erosion(truth, iterations=1).astype(np.uint8)
    write_mask(tmp_path / "coarse" / "v.nii.gz", coarse[None])
    summary = prepare_patches(tmp_path / "coarse", data, tmp_path / "patches", patch_size=8, progress=False)
    assert summary.patches > 0
    case = load_dataset(tmp_path / "patches").cases[0]
    patch, _ = read_image(case.images[0])
    assert patch.shape == (2, 8, 8, 8) and patch.dtype == np.float32 and case.label.suffix == ".mha"
    assert 0 <= patch[0].min() and patch[0].max() <= 255 and set(np.unique(patch[1])) <= {0, 255}
    assert read_mask(case.label)[0].shape == (1, 8, 8, 8)
