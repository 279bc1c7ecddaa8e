"""Checkpoints: round trip, exact resume, RNG restore, corrupt files, atomic writes under crashes and
SIGKILL, run directories."""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import write_safetensors
from medseg import __version__, create_model
from medseg.data import Preprocessor
from medseg.engine.checkpoint import (
    CheckpointError,
    build_model_from_checkpoint,
    capture_rng_state,
    checkpoint_paths,
    epoch_checkpoint_path,
    load_checkpoint,
    load_initial_weights,
    load_model_weights,
    make_checkpoint,
    restore_rng_state,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from medseg.engine.config import (
    InferenceConfig,
    ScheduleConfig,
    config_to_dict,
    load_config,
    lr_factor_function,
)
from medseg.engine.rundir import prepare_run_dir, remove_stale_temporaries
from medseg.errors import MedsegError

MODEL = {"name": "unet", "in_channels": 1, "num_classes": 2, "spatial_dims": 2,
         "options": {"features": 4, "depth": 2, "dropout": 0.3}}


def tiny_model(seed: int = 0, **changes: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    record = {**MODEL, **changes}
    return create_model(record.pop("name"), **record.pop("options"), **record)


def checkpoint_of(model: torch.nn.Module, training: dict | None = None) -> dict:
    record = dict(MODEL)
    preprocessing = Preprocessor(normalization="zscore", resize_shape=(16, 16)).to_dict()
    return make_checkpoint(model, name=record["name"], in_channels=1, num_classes=2, spatial_dims=2,
                           options=record["options"], label_mode="multiclass", class_names=["bg", "fg"],
                           preprocessing=preprocessing,
                           inference=config_to_dict(InferenceConfig()),
                           config=config_to_dict(load_config(None)), training=training)


# --------------------------------------------------------------------------------- RNG


def draw() -> tuple:
    return (torch.rand(5), np.random.rand(5), np.random.randn(3), [random.random() for _ in range(5)],
            random.gauss(0, 1))


def test_rng_restore_is_exact_for_torch_numpy_and_random() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in the state
    np.random.randn(1)
    generator = torch.Generator().manual_seed(9)
    state = capture_rng_state({"augmenter": generator})
    first, first_generated = draw(), torch.rand(4, generator=generator)
    draw()  # move every stream on
    torch.rand(3, generator=generator)
    restore_rng_state(state, {"augmenter": generator})
    second, second_generated = draw(), torch.rand(4, generator=generator)
    assert torch.equal(first[0], second[0]) and torch.equal(first_generated, second_generated)
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[2], second[2])
    assert first[3] == second[3] and first[4] == second[4]


def test_rng_state_survives_a_weights_only_file(tmp_path: Path) -> None:
    state = capture_rng_state()
    expected = draw()
    path = save_checkpoint(tmp_path / "rng.pt", {"format": 1, "model": {}, "rng": state})
    draw()
    restore_rng_state(load_checkpoint(path)["rng"])
    again = draw()
    assert torch.equal(expected[0], again[0]) and expected[3] == again[3]
    np.testing.assert_array_equal(expected[1], again[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_rng_state_is_restored_from_a_file_loaded_onto_the_gpu(tmp_path: Path) -> None:
    torch.cuda.manual_seed_all(4)
    torch.rand(1, device="cuda")
    path = save_checkpoint(tmp_path / "rng.pt", {"format": 1, "model": {}, "rng": capture_rng_state()})
    expected = torch.rand(8, device="cuda")
    restore_rng_state(load_checkpoint(path, map_location="cuda")["rng"])
    assert torch.equal(torch.rand(8, device="cuda"), expected)


# --------------------------------------------------------------------------------- round trip and resume


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path: Path) -> None:
    model = tiny_model().eval()
    path = save_checkpoint(tmp_path / "best.pt", checkpoint_of(model))
    ckpt = load_checkpoint(path)
    assert ckpt["medseg_version"] == __version__ and ckpt["model"] == MODEL
    assert ckpt["label_mode"] == "multiclass" and ckpt["class_names"] == ["bg", "fg"]
    assert Preprocessor.from_dict(ckpt["preprocessing"]).resize_shape == (16, 16)
    assert ckpt["inference"]["step"] == 0.5 and ckpt["config"]["train"]["epochs"] == 100
    rebuilt = build_model_from_checkpoint(path)
    assert not rebuilt.training
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def train_steps(model, optimizer, scheduler, steps: int) -> list[float]:
    """Steps whose data, dropout and 'augmentation' come from torch, numpy and random's global RNGs."""
    losses = []
    model.train()
    for _ in range(steps):
        x = torch.randn(2, 1, 16, 16) + float(np.random.normal())
        if random.random() < 0.5:
            x = x.flip(-1)
        target = (x[:, 0] > 0).long()
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def make_optimizer(model: torch.nn.Module, name: str):
    groups = [{"params": model.encoder.parameters(), "lr": 0.003},
              {"params": [p for n, p in model.named_parameters() if not n.startswith("encoder.")]}]
    if name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    else:
        optimizer = torch.optim.AdamW(groups, lr=0.01, weight_decay=1e-4)
    factor = lr_factor_function(ScheduleConfig(name="poly", warmup_iterations=2), total_steps=8)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_resume_continues_bit_identically(tmp_path: Path, optimizer_name: str) -> None:
    def seed_everything() -> None:
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)

    seed_everything()
    model = tiny_model()
    optimizer, scheduler = make_optimizer(model, optimizer_name)
    reference_losses = train_steps(model, optimizer, scheduler, 6)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    seed_everything()
    model = tiny_model()
    optimizer, scheduler = make_optimizer(model, optimizer_name)
    losses = train_steps(model, optimizer, scheduler, 3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    training = training_state(epoch=3, global_step=3, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                              best_score=0.5, epochs_without_improvement=1, extra={"note": "x"})
    path = save_checkpoint(checkpoint_paths(tmp_path).last, checkpoint_of(model, training))

    def resumed_run(restore_rng: bool) -> tuple[torch.nn.Module, list[float]]:
        torch.manual_seed(123)  # a fresh process: other weights, other random streams
        np.random.seed(123)
        random.seed(123)
        model = tiny_model(seed=7)
        optimizer, scheduler = make_optimizer(model, optimizer_name)
        ckpt = load_checkpoint(path)
        load_model_weights(model, ckpt, path)
        scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
        state = restore_training_state(ckpt, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                       source=path)
        assert scaler.get_scale() == 1024.0
        assert state.epoch == 3 and state.global_step == 3 and state.best_score == 0.5
        assert state.epochs_without_improvement == 1 and state.extra == {"note": "x"}
        if not restore_rng:
            torch.manual_seed(5)
        return model, train_steps(model, optimizer, scheduler, 3)

    model, more_losses = resumed_run(restore_rng=True)
    assert losses + more_losses == reference_losses
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    # the comparison can fail: without the RNG states the continuation differs
    model, _ = resumed_run(restore_rng=False)
    assert not all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------- bad files


def test_truncated_and_foreign_files_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", checkpoint_of(tiny_model()))
    data = path.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 2], "empty.pt": b"", "text.pt": b"not a checkpoint\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        message = rf"^checkpoint \S*{name} cannot be read \(truncated"
        with pytest.raises(CheckpointError, match=message) as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)
    torch.save(tiny_model().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare\.pt is not a medseg checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")
    torch.save({"format": 1, "model": {}, "object": InferenceConfig()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"pickled\.pt holds objects other than tensors"):
        load_checkpoint(tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_non_plain_content_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"state\.training\.rng: ndarray is not plain data"):
        save_checkpoint(tmp_path / "x.pt", {"training": {"rng": np.zeros(3)}})
    with pytest.raises(CheckpointError, match=r"state\.paths: CheckpointPaths is not plain data"):
        save_checkpoint(tmp_path / "x.pt", {"paths": checkpoint_paths(tmp_path)})
    assert list(tmp_path.iterdir()) == []


def test_weights_of_another_model_are_a_clear_error(tmp_path: Path) -> None:
    ckpt = checkpoint_of(tiny_model())
    ckpt["model"]["options"] = {**MODEL["options"], "features": 8}  # the record says otherwise
    path = save_checkpoint(tmp_path / "other.pt", ckpt)
    message = r"^checkpoint \S*other\.pt was saved from model 'unet' .*do not fit UNet: size mismatch"
    with pytest.raises(CheckpointError, match=message) as info:
        build_model_from_checkpoint(path)
    assert "\n" not in str(info.value)
    vnet = create_model("vnet", in_channels=1, num_classes=2, spatial_dims=2)
    with pytest.raises(MedsegError, match=r"saved from model 'unet'.*do not fit VNet"):
        load_model_weights(vnet, load_checkpoint(path), path)
    ckpt["model"]["name"] = "nonexistent"
    with pytest.raises(CheckpointError, match=r"unknown model 'nonexistent'"):
        build_model_from_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"holds no training state"):
        restore_training_state(ckpt)


# --------------------------------------------------------------------------------- fine-tuning


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Any = None) -> bool:
    return all(torch.equal(a[k], b[k]) for k in (keys if keys is not None else a))


def test_initial_weights_from_a_checkpoint_and_plain_files(tmp_path: Path) -> None:
    source = tiny_model(0).state_dict()
    files = {
        "best.pt": save_checkpoint(tmp_path / "best.pt", checkpoint_of(tiny_model(0))),
        "bare.pth": tmp_path / "bare.pth",
        "wrapped.pt": tmp_path / "wrapped.pt",
        "compiled.pt": tmp_path / "compiled.pt",
        "weights.safetensors": write_safetensors(tmp_path / "weights.safetensors", source),
    }
    torch.save(source, files["bare.pth"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, files["wrapped.pt"])
    torch.save({f"_orig_mod.{k}": v for k, v in source.items()}, files["compiled.pt"])
    for name, path in files.items():
        target = tiny_model(1)
        assert not same_weights(target.state_dict(), source)
        report = load_initial_weights(target, path)
        assert report.loaded == len(source) and report.skipped == [], name
        assert same_weights(target.state_dict(), source), name  # safetensors: counters cast back to int64


def test_initial_weights_for_another_class_count_need_the_skip_option(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best.pt", checkpoint_of(tiny_model(0)))
    source = tiny_model(0).state_dict()
    target = tiny_model(1, num_classes=3)
    own = {k: v.clone() for k, v in target.state_dict().items()}
    message = (r"^checkpoint \S*best\.pt \(saved from model 'unet', in_channels 1, num_classes 2, 2D\): its "
               r"weights do not fit UNet: 2 shape mismatches \(file vs model: head\.0\.weight \(2, 4, 1, 1\) "
               r"vs \(3, 4, 1, 1\), head\.0\.bias \(2,\) vs \(3,\)\); model\.init_skip_mismatched true")
    with pytest.raises(CheckpointError, match=message) as info:
        load_initial_weights(target, path)
    assert "\n" not in str(info.value)
    assert same_weights(target.state_dict(), own)  # nothing loaded on failure
    report = load_initial_weights(target, path, skip_mismatched=True)
    assert report.skipped == ["head.0.weight (2, 4, 1, 1) vs (3, 4, 1, 1)", "head.0.bias (2,) vs (3,)"]
    state = target.state_dict()
    body = [k for k in source if not k.startswith("head.")]
    assert report.loaded == len(body) and same_weights(state, source, body)
    assert same_weights(state, own, ["head.0.weight", "head.0.bias"])  # the head keeps its own start


def test_initial_weights_of_another_architecture_fail_even_when_skipping(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(tiny_model(0).state_dict(), path)
    deeper = tiny_model(1, options={**MODEL["options"], "depth": 3})
    with pytest.raises(CheckpointError, match=r"^checkpoint \S*bare\.pt: its weights do not fit UNet: .*"
                                              r"22 missing keys \(encoder\.levels\.3\.") as info:
        load_initial_weights(deeper, path, skip_mismatched=True)
    assert "\n" not in str(info.value) and "init_skip_mismatched" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"^checkpoint \S*absent\.pt not found"):
        load_initial_weights(tiny_model(), tmp_path / "absent.pt")
    (tmp_path / "broken.pt").write_bytes(b"no weights")
    with pytest.raises(CheckpointError, match=r"^checkpoint \S*broken\.pt cannot be read"):
        load_initial_weights(tiny_model(), tmp_path / "broken.pt")
    save_checkpoint(tmp_path / "odd.pt", {**checkpoint_of(tiny_model()), "state_dict": {"w": [1.0]}})
    with pytest.raises(CheckpointError, match=r"^checkpoint \S*odd\.pt has no state_dict of tensors$"):
        load_initial_weights(tiny_model(), tmp_path / "odd.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: expected a mapping of tensor names to tensors"):
        load_initial_weights(tiny_model(), tmp_path / "list.pt")


def test_epoch_checkpoints_are_named_by_the_epoch(tmp_path: Path) -> None:
    assert epoch_checkpoint_path(tmp_path, 10) == tmp_path / "epoch_0010.pt"
    assert epoch_checkpoint_path(tmp_path, 12345).name == "epoch_12345.pt"


# --------------------------------------------------------------------------------- atomic writes


def test_atomic_save_leaves_no_temporary_and_survives_a_failed_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": 1, "model": {}, "step": 1, "w": torch.ones(10)})
    save_checkpoint(path, {"format": 1, "model": {}, "step": 2, "w": torch.ones(10)})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]

    def crash(*args, **kwargs) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"format": 1, "model": {}, "step": 3, "w": torch.zeros(10)})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _save_in_a_loop(path: str, ready: int) -> None:
    """Child process: save ever newer checkpoints (a 1 MB payload filled with the step) until killed."""
    step = 0
    while True:
        save_checkpoint(path, {"format": 1, "model": {}, "step": step,
                               "payload": torch.full((256, 1024), float(step))})
        if step == 0:
            os.write(ready, b"1")
        step += 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_random_moments_never_leaves_a_corrupt_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    context = multiprocessing.get_context("fork")
    rng = random.Random(0)
    steps = []
    for _ in range(5):
        read_end, write_end = os.pipe()
        process = context.Process(target=_save_in_a_loop, args=(str(path), write_end), daemon=True)
        process.start()
        os.close(write_end)
        assert select.select([read_end], [], [], 30)[0], "the writer did not start"
        os.close(read_end)
        time.sleep(rng.uniform(0.02, 0.3))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        assert process.exitcode == -signal.SIGKILL
        state = load_checkpoint(path)
        assert torch.equal(state["payload"], torch.full((256, 1024), float(state["step"])))
        steps.append(state["step"])
    assert max(steps) > 0  # the kills came while writes were going on
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --------------------------------------------------------------------------------- run directories


def test_run_directories_refuse_overwriting_and_need_last_pt_to_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(MedsegError, match=r"cannot resume: \S*last\.pt not found"):
        prepare_run_dir(run, resume=True)
    paths = prepare_run_dir(run)
    assert paths.root.is_dir() and (paths.last, paths.best) == checkpoint_paths(run)
    assert paths.config.name == "config.yaml" and paths.log.name == "log.csv"
    save_checkpoint(paths.last, {"format": 1, "model": {}})
    (run / ".last.pt.abc.tmp").write_bytes(b"partial")
    with pytest.raises(MedsegError, match="already holds a run"):
        prepare_run_dir(run)
    assert prepare_run_dir(run, resume=True) == paths
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]
