"""The nuclei task of benchmarks/bpr.py end to end on tiny synthetic nuclei: both coarse models trained and
predicted, BPR patches from their (and the simulated) coarse training predictions, one refiner, the
held-out images refined and evaluated before and after."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import bpr  # noqa: E402

from medseg.data import write_nuclei_dataset  # noqa: E402
from medseg.data.io import read_mask, write_mask  # noqa: E402

TINY = ["--task", "nuclei", "--nuclei-test", "3", "--nuclei-val", "2", "--nuclei-patch-images", "4",
        "--maskrcnn-minutes", "0.01", "--unet-watershed-minutes", "0.01", "--nuclei-coarse-patch", "64",
        "--nuclei-iterations", "1", "--nuclei-bpr-minutes", "0.01", "--nuclei-bpr-iterations", "2",
        "--input-size", "32", "--nuclei-patch-size", "16"]


def test_matched_hd95_of_shifted_instances():
    gt = np.zeros((40, 40), np.uint16)
    gt[5:15, 5:15] = 3
    gt[20:30, 20:30] = 7
    pred = np.zeros_like(gt)
    pred[5:15, 6:16] = 1      # shifted by one pixel: IoU 9/11, matched, HD95 1
    pred[30:35, 0:5] = 2      # overlaps nothing: not matched
    assert bpr.matched_hd95(pred, gt) == [pytest.approx(1.0)]


def test_score_filtered_drops_low_scoring_detections(tmp_path):
    labels = np.zeros((1, 20, 20), np.uint16)
    labels[0, 2:6, 2:6], labels[0, 10:15, 10:15] = 1, 2
    write_mask(tmp_path / "in" / "a.png", labels)
    (tmp_path / "in" / "a_instances.json").write_text(json.dumps({"scores": {"1": 0.9, "2": 0.1}}))
    bpr.score_filtered(tmp_path / "in", tmp_path / "out", 0.3)
    kept = read_mask(tmp_path / "out" / "a.png")[0][0]
    assert sorted(np.unique(kept).tolist()) == [0, 1] and (kept == 1).sum() == 16
    assert bpr.instance_scores(tmp_path / "out", "a") == {1: 0.9}


@pytest.mark.slow
def test_nuclei_task_end_to_end(tmp_path):
    data = write_nuclei_dataset(tmp_path / "data", n_cases=12, size=(64, 64))
    results = tmp_path / "bpr.md"
    argv = [*TINY, "--out", str(tmp_path / "out"), "--nuclei-data", str(data), "--results", str(results),
            "--nuclei-sources", "maskrcnn", "unet+watershed", "simulated"]
    assert bpr.main(argv) == 0
    out = tmp_path / "out" / "nuclei"
    test_masks = sorted((out / "test" / "masks").iterdir())
    assert len(test_masks) == 3
    for source in ("maskrcnn", "unet-watershed", "simulated"):
        for folder in (out / "coarse" / source / "test", out / "refined" / source):
            for mask in test_masks:
                assert read_mask(folder / mask.name)[0][0].shape == (64, 64)
    # the simulated coarse instances always give patches; no source image on both sides of the split
    assert any((out / "patches-by-source" / "simulated" / "images").iterdir())
    split = json.loads((out / "patches" / "splits.json").read_text())[0]
    assert split["train"] and split["val"]
    image = {n: n.split("_", 1)[1].rsplit("-", 2)[0] for n in split["train"] + split["val"]}
    assert not {image[n] for n in split["train"]} & {image[n] for n in split["val"]}
    rows = {}
    for line in results.read_text().splitlines():
        if line.startswith("| ") and ": " in line:
            name, *cells = [c.strip() for c in line.strip("|").split("|")]
            rows[name] = [float(c) for c in cells]
    assert sorted(rows) == sorted(f"{s}: {k}" for s in ("maskrcnn", "unet+watershed", "simulated")
                                  for k in ("coarse", "BPR-refined"))
    for values in rows.values():
        assert len(values) == 7 and all(0.0 <= v <= 1.0 for v in values[:5])
    simulated = rows["simulated: coarse"]
    assert simulated[0] > 0.1 and simulated[6] > 0 and np.isfinite(simulated[5])

    # a second run reuses both trained coarse models and their predictions, redoing patches and refiner
    checkpoint = next(c for c in (out / "maskrcnn" / "best.pt", out / "maskrcnn" / "last.pt") if c.is_file())
    stamp = checkpoint.stat().st_mtime_ns
    assert bpr.main([*argv, "--reuse"]) == 0
    assert checkpoint.stat().st_mtime_ns == stamp
    assert "reused from an earlier run" in results.read_text()
