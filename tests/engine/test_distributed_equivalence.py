"""Two Gloo ranks at batch B give the per-step losses of one process at batch 2B.

Why they can: the whole-image loader gives rank ``r`` every ``N``-th case of the epoch's permutation, so the
ranks' batches ``i`` together are the single process's batch ``i`` at ``N`` times the size; Dice (per
sample) and BCE are means over samples, and DDP averages the ranks' gradients, which is the gradient of the
mean loss. Batch normalisation would break this (each rank normalises by its own half batch): the test
uses instance normalisation (SyncBatchNorm would do too).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from helpers import tiny_config
from medseg.data import write_polyp_dataset
from medseg.data.loader import epoch_order
from medseg.engine import trainer as trainer_module
from medseg.engine.config import config_from_dict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp: Path, run: str, batch_size: int) -> dict:
    config = tiny_config(tmp / run, "run", epochs=2, val_every=2)
    config["data"].update(batch_size=batch_size, root=str(tmp / "data"))
    config["model"]["options"]["norm"] = "instance"
    return config


def _train_recording(config: dict, out: Path) -> None:
    """Train with ``config`` and write the loss of every training batch to ``out`` (JSON)."""
    torch.set_num_threads(1)
    losses: list[float] = []
    batch_loss = trainer_module.Trainer.batch_loss

    def recording(self, image, label, parts):
        loss, output = batch_loss(self, image, label, parts)
        losses.append(float(loss.detach()))
        return loss, output

    trainer_module.Trainer.batch_loss = recording
    try:
        trainer_module.train(config_from_dict(config), progress=False)
    finally:
        trainer_module.Trainer.batch_loss = batch_loss
    out.write_text(json.dumps(losses), encoding="utf-8")


def _worker(rank: int, world: int, port: int, config: dict, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    _train_recording(config, Path(tmp) / f"losses{rank}.json")


@pytest.mark.parametrize("n, world, batch", [(12, 2, 2), (13, 2, 3), (20, 4, 2)])
def test_ranks_batches_together_are_the_single_process_batch(n: int, world: int, batch: int) -> None:
    single = epoch_order(n, seed=3, epoch=1)
    ranks = [epoch_order(n, seed=3, epoch=1, rank=r, world_size=world) for r in range(world)]
    steps = n // world // batch
    assert steps >= 1 and all(len(r) == n // world for r in ranks)
    for i in range(steps):
        together = sorted(int(k) for r in ranks for k in r[i * batch:(i + 1) * batch])
        assert together == sorted(single[i * world * batch:(i + 1) * world * batch].tolist())


@pytest.mark.slow
def test_two_ranks_at_batch_two_match_one_process_at_batch_four(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # `helpers` in the children
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    write_polyp_dataset(tmp_path / "data", n_cases=12, size=(32, 32))
    _train_recording(_config(tmp_path, "single", 4), tmp_path / "single.json")
    mp.spawn(_worker, args=(2, _free_port(), _config(tmp_path, "ddp", 2), str(tmp_path)), nprocs=2, join=True)
    single = json.loads((tmp_path / "single.json").read_text(encoding="utf-8"))
    ranks = [json.loads((tmp_path / f"losses{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    assert len(single) >= 4 and all(len(r) == len(single) for r in ranks)
    assert ranks[0] != ranks[1]  # the ranks saw different cases
    mean = [(a + b) / 2 for a, b in zip(*ranks, strict=True)]
    assert mean == pytest.approx(single, rel=1e-4)
    assert single[-1] != pytest.approx(single[0], rel=1e-3)  # the weights moved between the steps
