"""Prediction at scale: sharding across ranks, skipping finished cases, overlapped workers (tiny U-Nets)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from helpers import tiny_checkpoint
from medseg.cli import main
from medseg.engine import predict as predict_module
from medseg.engine.predict import predict_paths
from medseg.engine.predict_scale import case_is_finished, run_pipelined, shard
from medseg.errors import MedsegError


def _png_folder(folder: Path, n: int, size: tuple[int, int] = (24, 20)) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(folder / f"case_{i:02d}.png")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mtimes(folder: Path) -> dict[str, int]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in files}


def test_shard_gives_case_i_to_rank_i_mod_n() -> None:
    items = list(range(7))
    parts = [shard(items, rank, 3) for rank in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard(items, 0, 1) == items
    with pytest.raises(MedsegError, match="rank 3 of 3"):
        shard(items, 3, 3)


def test_case_is_finished_needs_every_requested_output(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / ".b.png.k2j.tmp").write_bytes(b"half")  # a killed writer's temporary, not b.png
    assert case_is_finished([tmp_path / "a.png", None])
    assert not case_is_finished([tmp_path / "a.png", tmp_path / "b.png"])


def test_pipeline_stops_at_the_first_failure_like_the_serial_loop() -> None:
    finished: list[int] = []

    def read(item: int) -> int:
        if item == 5:
            raise MedsegError("case 5: unreadable")
        return item

    def finish(item: int, loaded: int, scores: int) -> Path:
        finished.append(item)
        return Path(str(scores))

    assert run_pipelined(list(range(4)), read, lambda x: x * 10, finish, 2) == [Path(str(10 * i))
                                                                                 for i in range(4)]
    finished.clear()
    with pytest.raises(MedsegError, match="case 5"):
        run_pipelined(list(range(9)), read, lambda x: x, finish, 2)
    assert finished == [0, 1, 2, 3, 4]


def test_workers_give_the_files_of_the_serial_path(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    images = _png_folder(tmp_path / "in", 7)
    serial = predict_paths([ckpt], images, tmp_path / "serial", save_probabilities=True, progress=False)
    overlapped = predict_paths([ckpt], images, tmp_path / "workers", save_probabilities=True, progress=False,
                               workers=2)
    assert [p.name for p in serial] == [p.name for p in overlapped] and len(serial) == 7
    expected = _files(tmp_path / "serial")
    assert len(expected) == 22 and _files(tmp_path / "workers") == expected  # 7 x 3 outputs and the record


def test_workers_give_the_volumes_of_the_serial_path_with_sliding_windows(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt", dims=3, inference={"mirror": False, "patch_size": [8, 8, 8]})
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        nib.save(nib.Nifti1Image(rng.normal(size=(12, 10, 9)).astype(np.float32), np.eye(4)),
                 folder / f"vol_{i}.nii.gz")
    predict_paths([ckpt], folder, tmp_path / "serial", progress=False)
    predict_paths([ckpt], folder, tmp_path / "workers", progress=False, workers=2)
    for i in range(3):
        a = nib.load(tmp_path / "serial" / f"vol_{i}.nii.gz")
        b = nib.load(tmp_path / "workers" / f"vol_{i}.nii.gz")
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)


def test_rerun_skips_finished_cases_and_redoes_the_unfinished(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    images = _png_folder(tmp_path / "in", 5)
    out = tmp_path / "out"
    predict_paths([ckpt], images, out, progress=False)
    reference = _files(out)
    (out / "case_01.png").unlink()  # killed while writing case 1: only its temporary is there
    (out / ".case_01.png.x7q2.tmp").write_bytes(reference["case_01.png"][:20])
    (out / "overlays" / "case_03.png").unlink()  # killed between the mask and the overlay of case 3
    (out / ".case_04.png.k1ll.tmp").write_bytes(b"half")  # a finished case rewritten by a killed run
    old = 1_000_000_000
    for path in out.rglob("*.png"):
        os.utime(path, ns=(old, old))
    before = _mtimes(out)
    masks = predict_paths([ckpt], images, out, progress=False, workers=1)
    assert [p.name for p in masks] == [f"case_{i:02d}.png" for i in range(5)]
    after = _mtimes(out)
    redone = {name for name in after if after[name] != before.get(name)}
    assert redone == {"case_01.png", "overlays/case_01.png", "case_03.png", "overlays/case_03.png"}
    assert not list(out.glob(".*.tmp")) and _files(out) == reference
    assert main(["predict", str(ckpt), str(images), str(out), "--overwrite", "--no-progress"]) == 0
    assert all(stamp != old for stamp in _mtimes(out).values())


def test_cli_refuses_negative_workers(tmp_path: Path, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    images = _png_folder(tmp_path / "in", 1)
    assert main(["predict", str(ckpt), str(images), str(tmp_path / "out"), "--workers", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--workers" in err
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _predict_rank(rank: int, world: int, port: int, ckpt: str, images: str, out: str, log: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    mine: list[str] = []
    finish = predict_module.finish_case

    def recording(models, read, scores, are_probabilities, outputs, *args):
        mine.append(outputs.mask.name)
        return finish(models, read, scores, are_probabilities, outputs, *args)

    predict_module.finish_case = recording
    masks = predict_paths([ckpt], images, out, progress=False, device="cpu")
    Path(log, f"rank{rank}.json").write_text(json.dumps({"wrote": mine, "masks": [p.name for p in masks]}),
                                             encoding="utf-8")


@pytest.mark.slow
def test_two_ranks_shard_the_cases_and_write_the_files_of_one_process(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # `helpers` in the children
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # and this module
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    images = _png_folder(tmp_path / "in", 5)
    predict_paths([ckpt], images, tmp_path / "single", progress=False, device="cpu")
    mp.spawn(_predict_rank, args=(2, _free_port(), str(ckpt), str(images), str(tmp_path / "ddp"),
                                  str(tmp_path)), nprocs=2, join=True)
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    names = [f"case_{i:02d}.png" for i in range(5)]
    assert logs[0]["wrote"] == names[0::2] and logs[1]["wrote"] == names[1::2]
    assert logs[0]["masks"] == logs[1]["masks"] == names
    assert _files(tmp_path / "ddp") == _files(tmp_path / "single")


def test_a_retrained_checkpoint_or_other_settings_predict_every_case_again(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    images = _png_folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    predict_paths([ckpt], images, out, progress=False)
    first = _mtimes(out)
    predict_paths([ckpt], images, out, progress=False)
    assert _mtimes(out) == first  # same checkpoint, same settings: every case skipped
    predict_paths([ckpt], images, out, progress=False, tta=True)
    masks = [k for k in first if k.endswith(".png") and "/" not in k]
    assert all(_mtimes(out)[k] != first[k] for k in masks)  # other settings: predicted again
    again = _mtimes(out)
    tiny_checkpoint(tmp_path / "m.pt", seed=1)  # "retrained": a new file under the same name
    predict_paths([ckpt], images, out, progress=False, tta=True)
    assert all(_mtimes(out)[k] != again[k] for k in masks)
