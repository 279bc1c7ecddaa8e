"""The peer benchmarks' parts (benchmarks/peer_common.py, issue 23): the plain loop, its samplers, the shared
held-out evaluation and a tiny end-to-end run; skipped without MONAI (an optional benchmark dependency)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("monai")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import peer_common as pc  # noqa: E402
import peer_polyp  # noqa: E402

from medseg.data import load_dataset, write_polyp_dataset  # noqa: E402
from medseg.data.cases import read_case  # noqa: E402
from medseg.data.preprocess import Preprocessor  # noqa: E402


def test_plain_loop_reduces_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    model = pc.peer_model(peer_polyp.TASK)
    image = torch.randn(2, 3, 32, 32)
    label = (image[:, :1] > 0.5).float()
    losses = pc.plain_loop(model, lambda: (image, label), pc.peer_loss("binary"), seconds=600.0, lr=1e-3,
                           max_steps=15, progress=False)
    assert len(losses) == 15
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_plain_loop_stops_at_its_time_budget():
    model = torch.nn.Conv2d(1, 1, 1)
    batch = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    losses = pc.plain_loop(model, lambda: batch, torch.nn.MSELoss(), seconds=0.0, lr=1e-3, progress=False)
    assert losses == []


def test_flips_move_image_and_label_together():
    generator = torch.Generator().manual_seed(0)
    image = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    seen = set()
    for _ in range(20):
        flipped, label = pc.random_flips(image, image.clone(), generator)
        assert torch.equal(flipped, label)
        seen.add(flipped[0, 0, 0, 0].item())
    assert len(seen) > 1  # some draws flip, some do not


def test_image_sampler_visits_every_image_once_per_epoch():
    images = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    sample = pc.image_sampler(images, images.clone(), batch_size=2, seed=0)
    batches = [sample()[0] for _ in range(3)]
    firsts = sorted(int(batch[i, 0, 0, 0]) for batch in batches for i in range(2))
    assert firsts == list(range(6))


def test_patch_sampler_pads_small_volumes_to_the_patch():
    volumes = [(np.ones((1, 3, 8, 8), np.float32), np.full((1, 3, 8, 8), 2, np.uint8))]
    image, label = pc.patch_sampler(volumes, (4, 8, 8), batch_size=3, seed=0)()
    assert image.shape == (3, 1, 4, 8, 8) and label.shape == (3, 1, 4, 8, 8) and label.dtype == torch.long
    assert set(label.unique().tolist()) <= {0, 2}


class AllForeground(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, *x.shape[2:]), 10.0)


def test_heldout_dice_is_computed_at_the_source_resolution(tmp_path):
    root = write_polyp_dataset(tmp_path / "polyps", n_cases=2, size=(40, 56), seed=0)
    cases = load_dataset(root).cases
    preprocessor = Preprocessor(normalization="rgb", resize_shape=(32, 32))
    scores = pc.heldout_dice(AllForeground(), cases, preprocessor, peer_polyp.TASK, None, progress=False)
    expected = []
    for case in cases:
        label = read_case(case)[1][0] == 1
        expected.append(2 * label.sum() / (label.sum() + label.size))  # the whole source image predicted
    assert scores[1] == pytest.approx(float(np.mean(expected)))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--equal-steps", "--set", "train.max_minutes=null"]],
                         ids=["equal-time", "equal-steps"])
def test_tiny_polyp_comparison_writes_both_rows(tmp_path, mode):
    root = write_polyp_dataset(tmp_path / "polyps", n_cases=10, size=(40, 40), seed=0)
    argv = ["--minutes", "0.05", "--size", "32", "--batch-size", "2", "--val-cases", "2", "--test-cases", "2",
            "--data", str(root), "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results"),
            *mode]
    parser = pc.build_parser(peer_polyp.TASK, "test", {"size": [32], "batch_size": 2, "val_cases": 2,
                                                        "test_cases": 2})
    assert pc.main(peer_polyp.TASK, parser, {1: "polyp"}, argv) == 0
    report = next((tmp_path / "results").glob("peer-polyp-*.md")).read_text(encoding="utf-8")
    assert "peer: MONAI BasicUNet" in report and "medseg unet, best.pt" in report
    assert ("equal steps" if mode else "equal time") in report
    peer = pc.SideResult.from_json(json.loads((tmp_path / "out" / "peer.json").read_text()))
    assert peer.steps >= 1 and 0.0 <= peer.dice[1] <= 1.0
    training = pc.load_checkpoint(tmp_path / "out" / "medseg" / "last.pt")["training"]
    if mode:  # medseg made exactly the peer's number of steps (its time cap lifted)
        assert training["global_step"] == peer.steps
    else:  # the time budget, not the 10,000 planned epochs, ended medseg's run
        assert 1 <= training["global_step"] < pc.EQUAL_TIME_EPOCHS
        assert training["extra"]["budget_seconds_used"] >= 0.05 * 60 * 0.5
