"""SIGKILL in the middle of ``medseg train`` and ``medseg predict`` (real processes, CPU, one thread).

Training: ``--resume`` after the kill ends with the very weights of a run that was never interrupted.
Prediction: the kill leaves only complete, readable outputs; running the command again writes every case
and no temporary file survives it (predict rewrites all cases; it has no skip-existing mode).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import cli_command, sigkill_when, single_thread_env, tiny_checkpoint, tiny_config
from medseg.data.io import read_image, read_mask
from medseg.engine.checkpoint import load_checkpoint
from medseg.engine.predict_scale import RUN_RECORD

N_IMAGES = 12


def run(*args: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cli_command(*args), env=single_thread_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def epoch_of(last: Path) -> int:
    """The completed epochs recorded in ``last``, 0 while there is none (it is written atomically)."""
    return load_checkpoint(last)["training"]["epoch"] if last.is_file() else 0


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    epochs = 4
    configs = {}
    for run_name in ("full", "killed"):
        configs[run_name] = tmp_path / f"{run_name}.yaml"
        configs[run_name].write_text(yaml.safe_dump(tiny_config(tmp_path, run_name, epochs=epochs,
                                                                val_every=2)))
    run("train", configs["full"], "--no-progress")
    last = tmp_path / "killed" / "last.pt"
    sigkill_when(cli_command("train", configs["killed"], "--no-progress"), lambda: epoch_of(last) >= 1)
    assert 1 <= epoch_of(last) < epochs  # killed mid-run, its last checkpoint intact
    run("train", configs["killed"], "--resume", "--no-progress")
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    resumed = load_checkpoint(last)
    assert resumed["training"]["epoch"] == full["training"]["epoch"] == epochs
    assert resumed["state_dict"].keys() == full["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for name in ("full", "killed"):
        assert [p.name for p in (tmp_path / name).glob(".*.tmp")] == []


def hidden(folder: Path) -> list[Path]:
    """Hidden leftovers: temporaries and staging folders (not a prediction folder's run record)."""
    return sorted(p for p in folder.rglob(".*") if p.name != RUN_RECORD)


@pytest.mark.slow
def test_sigkill_during_predict_leaves_complete_files_and_a_rerun_finishes(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "model.pt", inference={"mirror": True})
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (160, 160), dtype=np.uint8)).save(images / f"case_{i:02d}.png")
    out = tmp_path / "out"
    command = cli_command("predict", checkpoint, images, out, "--probabilities", "--no-progress")

    def some_written() -> bool:
        return out.is_dir() and len(list(out.glob("case_*_probabilities.npz"))) >= 2

    sigkill_when(command, some_written)
    masks = sorted(out.glob("case_??.png"))
    assert 2 <= len(masks) < N_IMAGES
    for path in [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]:
        if path.suffix == ".npz":
            with np.load(path) as data:
                assert data["probabilities"].shape == (1, 160, 160)
        else:
            assert read_image(path)[0].shape[1:] == (160, 160), path  # masks and overlays decode whole
    # what a kill during a write leaves: a hidden temporary file and a staging folder
    (out / f".{masks[0].name}.k1ll3d.tmp").write_bytes(b"\x89PNG half")
    (out / f".{masks[1].name}.st4g3d.tmp").mkdir()
    (out / f".{masks[1].name}.st4g3d.tmp" / masks[1].name).write_bytes(b"\x89PNG half")

    run("predict", checkpoint, images, out, "--probabilities", "--no-progress")
    assert sorted(p.name for p in out.glob("case_??.png")) == [f"case_{i:02d}.png" for i in range(N_IMAGES)]
    assert len(list(out.glob("case_*_probabilities.npz"))) == N_IMAGES
    assert len(list((out / "overlays").glob("case_??.png"))) == N_IMAGES
    for path in out.glob("case_??.png"):
        assert read_mask(path)[0].shape == (1, 160, 160)
    assert hidden(out) == []
