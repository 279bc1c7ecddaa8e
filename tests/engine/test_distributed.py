"""DDP under Gloo: two CPU processes train a few steps, stay in sync, and only rank 0 writes files."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from medseg.data import write_polyp_dataset
from medseg.engine import plan as plan_module
from medseg.engine import trainer as trainer_module
from medseg.engine.config import config_from_dict
from medseg.engine.distributed import DistributedContext, all_reduce_sum, init_distributed

OFF = {name: False for name in ("mirror", "rot90", "rotation", "scale", "shear", "elastic", "noise", "blur",
                                "brightness", "contrast", "low_resolution", "gamma")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    writes: list[str] = []
    for module, name in ((trainer_module, "save_checkpoint"), (trainer_module, "_write_log"),
                         (trainer_module, "plot_progress"), (trainer_module, "save_config"),
                         (plan_module, "write_splits")):
        original = getattr(module, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            writes.append(_name)
            return _original(*args, **kwargs)

        setattr(module, name, spy)
    run = trainer_module.Trainer.run

    def run_and_dump(self, resume):
        result = run(self, resume)
        params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        torch.save(params, Path(tmp) / f"params{rank}.pt")
        (Path(tmp) / f"writes{rank}.json").write_text(json.dumps(writes))
        return result

    trainer_module.Trainer.run = run_and_dump
    config = config_from_dict({
        "run_dir": f"{tmp}/run",
        "data": {"root": f"{tmp}/data", "batch_size": 2, "num_workers": 0},
        "model": {"name": "unet", "options": {"features": 4, "depth": 2}},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 2, "device": "cpu", "seed": 0},
        "augmentation": OFF})
    trainer_module.train(config, progress=False)


def test_two_gloo_ranks_stay_in_sync(tmp_path: Path, monkeypatch) -> None:
    # the spawned processes import this module by its package name (tests.engine...)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    write_polyp_dataset(tmp_path / "data", n_cases=12, size=(32, 32))
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p0 = torch.load(tmp_path / "params0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params1.pt", weights_only=True)
    initial = plan_module.create_model("unet", in_channels=3, num_classes=1, spatial_dims=2, features=4,
                                       depth=2).state_dict()
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    assert any(not torch.equal(p0[k], initial[k]) for k in p0)  # they did train
    writes0 = json.loads((tmp_path / "writes0.json").read_text(encoding="utf-8"))
    assert json.loads((tmp_path / "writes1.json").read_text(encoding="utf-8")) == []
    assert writes0.count("save_checkpoint") >= 2 and "_write_log" in writes0 and "plot_progress" in writes0
    for name in ("best.pt", "last.pt", "log.csv", "progress.png", "config.yaml", "splits.json"):
        assert (tmp_path / "run" / name).is_file()


def test_single_process_context_is_a_no_op(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistributedContext() and ctx.is_main and not ctx.enabled
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(all_reduce_sum(values, ctx), values)
