"""``medseg plan``: the nnU-Net rules (spacing, pooling, patch and batch under memory), the YAML preset, and
a plan that ``medseg train`` runs as written."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import medseg.engine.autoplan as autoplan
from medseg.cli import main
from medseg.data.fingerprint import CaseFingerprint, DatasetFingerprint
from medseg.data.synthetic import write_polyp_dataset
from medseg.engine.autoplan import (
    MemoryModel,
    _yaml,
    measure_memory,
    plan_dataset,
    pool_kernels,
    target_spacing,
    validation_seconds,
    write_plan,
)
from medseg.engine.benchmark import measure_peak_memory
from medseg.engine.config import config_from_dict, load_config
from medseg.errors import MedsegError
from medseg.models.registry import create_model


def _case(i: int, shape: tuple[int, ...], spacing: tuple[float, ...], channels: int = 1,
          dtype: str = "float32", labels: dict[int, int] | None = None) -> CaseFingerprint:
    voxels = math.prod(shape)
    counts = labels or {0: voxels - voxels // 10, 1: voxels // 10}
    return CaseFingerprint(f"c{i}", spacing, shape, channels, dtype, [0.0] * channels, [255.0] * channels,
                           counts.get(1, 0), [100.0] * channels, [10.0] * channels, [80.0] * channels,
                           [120.0] * channels, counts)


def _fingerprint(shapes: list[tuple[int, ...]], spacings: list[tuple[float, ...]],
                 **kwargs) -> DatasetFingerprint:
    cases = [_case(i, shape, spacing, **kwargs) for i, (shape, spacing) in enumerate(zip(shapes, spacings,
                                                                                         strict=True))]
    return DatasetFingerprint(root="data", layout="paired", cases=cases)


@pytest.fixture
def fast_measurements(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """No real memory measurement or step timing: a fixed linear memory model and 0.5 s per step."""
    seen: dict[str, object] = {}

    def memory(config, channels, classes, multiples, device):  # type: ignore[no-untyped-def]
        seen["options"] = config.model.options
        return MemoryModel(fixed=50e6, per_voxel=2000.0)

    monkeypatch.setattr(autoplan, "measure_memory", memory)
    monkeypatch.setattr(autoplan, "time_steps", lambda *args, **kwargs: 0.5)
    return seen


def test_pooling_skips_the_thick_axis_until_its_spacing_is_matched() -> None:
    # spacings (5, 1, 1) -> (5, 2, 2) -> (5, 4, 4): axis 0 waits; then every axis until a size is below 8
    assert pool_kernels([16, 64, 64], [5.0, 1.0, 1.0], 5) == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert pool_kernels([8, 64, 64], [5.0, 1.0, 1.0], 5) == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert pool_kernels([40, 56, 40], [1.0, 1.0, 1.0], 5) == [(2, 2, 2)] * 3
    assert pool_kernels([512, 512], [1.0, 1.0], 6) == [(2, 2)] * 6  # capped at 6 steps
    assert pool_kernels([4, 4], [1.0, 1.0], 6) == []


def test_anisotropic_target_spacing_is_the_tenth_percentile_of_the_thick_axis() -> None:
    thick = [3.0, 4.0, 5.0, 5.0, 5.0, 6.0, 7.0]
    fp = _fingerprint([(12, 48, 48)] * 7, [(t, 1.0, 1.0) for t in thick])
    spacing, axis = target_spacing(fp)
    assert axis == 0
    np.testing.assert_allclose(spacing, [np.percentile(thick, 10), 1.0, 1.0])
    iso = _fingerprint([(32, 32, 32)] * 3, [(1.0, 1.2, 1.0), (1.0, 1.0, 1.0), (1.0, 0.8, 1.0)])
    spacing, axis = target_spacing(iso)
    assert axis is None and spacing.tolist() == [1.0, 1.0, 1.0]


def test_anisotropic_volumes_plan_a_3d_unet_with_anisotropic_pooling(fast_measurements) -> None:
    fp = _fingerprint([(20, 64, 64)] * 6, [(5.0, 1.0, 1.0), (5.5, 1.0, 1.0), (6.0, 1.0, 1.0)] * 2)
    plan = plan_dataset(fp, memory_gb=4, minutes=10, device="cpu")
    expected = float(np.percentile([5.0, 5.5, 6.0] * 2, 10))
    assert plan.value("data.spacing") == pytest.approx([expected, 1.0, 1.0])
    assert plan.value("model.spatial_dims") == 3 and plan.value("model.name") == "unet"
    kernels = plan.value("model.options")["pool_kernels"]
    assert kernels[0] == [1, 2, 2] and kernels[1] == [1, 2, 2]  # the thin axis is not pooled first
    patch = plan.value("data.patch_size")
    multiples = [math.prod(k[a] for k in kernels) for a in range(3)]
    assert all(p % m == 0 for p, m in zip(patch, multiples, strict=True))
    assert plan.value("data.normalization") == "zscore"  # float volumes, no negative values: MR
    assert "anisotropic" in plan.yaml_text() and "enough to pool more than once" in plan.yaml_text()
    assert "slices" not in plan.to_dict()["data"]


def test_smaller_memory_budget_gives_a_smaller_patch_or_batch(fast_measurements) -> None:
    fp = _fingerprint([(384, 448)] * 400, [(1.0, 1.0)] * 400, channels=3, dtype="uint8")
    large = plan_dataset(fp, memory_gb=4, minutes=600, device="cpu")  # time does not bind the batch
    small = plan_dataset(fp, memory_gb=1, minutes=600, device="cpu")
    tiny = plan_dataset(fp, memory_gb=0.3, minutes=600, device="cpu")
    memory = MemoryModel(fixed=50e6, per_voxel=2000.0)
    sizes = []
    for plan, budget in ((large, 4), (small, 1), (tiny, 0.3)):
        patch, batch = plan.value("data.patch_size"), plan.value("data.batch_size")
        assert memory.bytes(patch, batch) <= budget * 2**30
        sizes.append((math.prod(patch), batch))
    assert sizes[0][0] * sizes[0][1] > sizes[1][0] * sizes[1][1] > sizes[2][0] * sizes[2][1]
    assert sizes[2][0] < sizes[1][0]  # the patch itself shrank
    assert sizes[0][1] == (4 * 2**30 - 50e6) // (2000 * sizes[0][0])  # the memory bound
    short = plan_dataset(fp, memory_gb=4, minutes=1, device="cpu")  # 0.25 s a sample: 1.9 batches in time
    assert short.value("data.batch_size") == 2 and "bound by time" in short.yaml_text()
    assert large.value("data.normalization") == "rgb" and large.value("data.spacing") is None
    with pytest.raises(MedsegError, match="memory-gb"):
        plan_dataset(fp, memory_gb=0.01, minutes=10, device="cpu")


def test_epochs_follow_the_timed_steps_and_the_validation_estimate(fast_measurements) -> None:
    fp = _fingerprint([(64, 64)] * 6, [(1.0, 1.0)] * 6)
    plan = plan_dataset(fp, memory_gb=4, minutes=10, device="cpu")  # 0.5 s a step
    batch = plan.value("data.batch_size")
    validation = 1 * 1 * 0.5 / batch / 3  # one validation case, one window, a third of a sample's step
    steps = int((600 - 10 * validation) / 0.5)
    assert plan.value("train.iterations_per_epoch") == steps // 10 and plan.value("train.epochs") == 10
    assert plan.value("train.val_every") == 1 and plan.value("train.max_minutes") == 10.0
    long = plan_dataset(fp, memory_gb=4, minutes=600, device="cpu")
    assert long.value("train.iterations_per_epoch") == 250 and long.value("train.epochs") == 287
    assert long.value("train.val_every") == 28
    big = _fingerprint([(100, 100)] * 10, [(1.0, 1.0)] * 10)
    assert validation_seconds(big, np.ones(2), [50, 50], 2, 0.6, 2) == pytest.approx(2 * 9 * 0.6 / 2 / 3)
    volumes = _fingerprint([(10, 100, 100)] * 5, [(5.0, 1.0, 1.0)] * 5)  # 2.5D: 10 whole slices a volume
    assert validation_seconds(volumes, np.array([5.0, 1.0, 1.0]), [100, 100], 2, 0.6, 2, axis=0) == \
        pytest.approx(2 * 10 * 0.6 / 2 / 3)


def test_instance_label_maps_are_planned_as_binary_foreground(fast_measurements) -> None:
    labels = {v: 10 for v in range(30)}
    fp = _fingerprint([(64, 64)] * 6, [(1.0, 1.0)] * 6, channels=3, dtype="uint8", labels=labels)
    plan = plan_dataset(fp, memory_gb=4, minutes=10, device="cpu")
    assert plan.value("data.label_mode") == "binary" and plan.value("data.binarize_labels") is True


def test_written_yaml_round_trips_and_validates(tmp_path: Path, fast_measurements) -> None:
    fp = _fingerprint([(12, 64, 64)] * 6, [(5.0, 1.0, 1.0)] * 6,
                      labels={0: 40000, 1: 5000, 2: 4152})
    plan = plan_dataset(fp, memory_gb=2, minutes=5, device="cpu", mode="3d")  # 12 thick slices: auto is 2.5D
    path = write_plan(plan, tmp_path / "plan.yaml")
    text = path.read_text()
    data = yaml.safe_load(text)
    assert data == plan.to_dict()
    config = load_config(path)
    assert config.data.label_mode == "multiclass" and config.data.num_classes == 3
    assert list(config.data.patch_size) == plan.value("data.patch_size")
    assert config.model.options["pool_kernels"] == plan.value("model.options")["pool_kernels"]
    lines = text.splitlines()
    values = [i for i, line in enumerate(lines) if line.startswith("  ") and not line.strip().startswith("#")]
    assert values and all(lines[i - 1].strip().startswith("# ") for i in values)  # a reason above each


@pytest.mark.parametrize("value", [3e-5, 0.01, 12.0, 1e10, "../data/x", "yes", "1.5", "a b", None, True,
                                   [1, [2, 3]], {"k": "null", "n": 0.9}])
def test_yaml_values_read_back_unchanged(value: object) -> None:
    assert yaml.safe_load(f"key: {_yaml(value)}") == {"key": value}


@pytest.mark.slow  # three profiled passes: about 12 s here
def test_memory_model_extrapolates_the_measured_peak() -> None:
    config = config_from_dict({"model": {"name": "unet", "spatial_dims": 2, "options": {
        "features": [8, 16, 32], "norm": "instance", "deep_supervision": True}},
        "loss": {"name": "dice_ce", "deep_supervision": True}, "data": {"label_mode": "binary"}})
    device = torch.device("cpu")
    memory = measure_memory(config, 1, 1, [4, 4], device)
    model = create_model("unet", in_channels=1, num_classes=1, spatial_dims=2,
                         **config.model.options).train()
    loss_fn = autoplan._loss_fn(config)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 1, 32, 32))
    peak = measure_peak_memory(lambda: loss_fn(model(x), y).backward()) + 2 * weights
    assert memory.bytes([32, 32], 2) == pytest.approx(peak, rel=0.3)


@pytest.mark.slow
def test_plan_then_train_it_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_polyp_dataset(tmp_path / "polyps", n_cases=6, size=(48, 48))
    assert main(["plan", "polyps", "--minutes", "0.02", "--memory-gb", "1", "--jobs", "0", "--device", "cpu",
                 "--out", "plan.yaml", "--no-progress"]) == 0
    config = load_config("plan.yaml")
    assert config.data.root == "polyps" and config.data.normalization == "rgb" and config.name == "plan"
    assert Path("runs/fingerprints/polyps.json").is_file()
    assert main(["train", "plan.yaml", "--no-progress"]) == 0
    assert Path(f"runs/{config.name}/last.pt").is_file()


def test_plan_of_a_missing_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert main(["plan", str(tmp_path / "missing"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and err[0].startswith("medseg: error:")
    assert not list(tmp_path.iterdir())


def test_images_too_small_to_pool_are_refused(fast_measurements) -> None:
    with pytest.raises(MedsegError, match="too small"):
        plan_dataset(_fingerprint([(6, 6)] * 3, [(1.0, 1.0)] * 3), memory_gb=1, minutes=1, device="cpu")


def test_plan_of_an_anisotropic_synthetic_volume_set(tmp_path: Path, fast_measurements) -> None:
    """Volumes written with spacing 5 x 1 x 1 (array order; 1x1x5 in x, y, z), read by the fingerprint."""
    from medseg.data.fingerprint import dataset_fingerprint
    from medseg.data.synthetic import write_lesion_dataset

    write_lesion_dataset(tmp_path / "lesions", n_cases=5, shape=(8, 48, 48), spacing=(5.0, 1.0, 1.0))
    fp = dataset_fingerprint(tmp_path / "lesions", progress=False)
    plan = plan_dataset(fp, memory_gb=2, minutes=5, device="cpu", mode="3d")  # 8 thick slices: auto is 2.5D
    assert plan.value("data.layout") == "decathlon" and plan.value("data.spacing") is None  # already there
    kernels = plan.value("model.options")["pool_kernels"]
    assert kernels[:2] == [[1, 2, 2], [1, 2, 2]] and plan.value("model.spatial_dims") == 3
    assert plan.value("data.patch_size")[0] == 8 and "axis 0 is anisotropic" in plan.yaml_text()


def test_few_thick_slices_plan_2p5d_across_the_thick_axis(tmp_path: Path, fast_measurements) -> None:
    """10 slices of 64 x 64 at 5 x 1 x 1 mm (array order): axis 0 cannot be pooled twice, so 2.5D, axial."""
    from medseg.data.fingerprint import dataset_fingerprint
    from medseg.data.synthetic import write_lesion_dataset

    write_lesion_dataset(tmp_path / "thick", n_cases=5, shape=(10, 64, 64), spacing=(5.0, 1.0, 1.0))
    fp = dataset_fingerprint(tmp_path / "thick", progress=False)
    plan = plan_dataset(fp, memory_gb=2, minutes=5, device="cpu")
    assert plan.value("data.slices") == 2 and plan.value("data.slice_axis") == "axial"
    assert plan.value("data.patch_size") == [64, 64] and plan.value("model.spatial_dims") == 2
    assert plan.value("model.in_channels") == 5 and plan.value("inference.mode") == "auto"
    assert "pool_kernels" not in plan.value("model.options")  # in-plane 1 x 1 mm: isotropic pooling
    assert len(fast_measurements["options"]["features"]) == 5  # 4 in-plane down-sampling steps of 64
    config = load_config(write_plan(plan, tmp_path / "plan.yaml"))
    assert config.data.slices == 2 and config.model.in_channels == 5 and config.spatial_dims == 2
    assert config.data.spacing is None and "too few to pool more than once" in plan.yaml_text()


def test_2p5d_slice_axis_follows_the_thick_array_axis(fast_measurements) -> None:
    for spacing, name in (((1.0, 4.0, 1.0), "coronal"), ((1.0, 1.0, 6.0), "sagittal")):
        shape = tuple(8 if s > 1 else 48 for s in spacing)
        plan = plan_dataset(_fingerprint([shape] * 5, [spacing] * 5), memory_gb=2, minutes=5, device="cpu")
        assert plan.value("data.slice_axis") == name and plan.value("data.patch_size") == [48, 48]
        assert plan.value("data.spacing") is None or len(plan.value("data.spacing")) == 3
        plan.config()


def test_mode_forces_2d_2p5d_or_3d(fast_measurements) -> None:
    fp = _fingerprint([(20, 64, 64)] * 6, [(5.0, 1.0, 1.0)] * 6)  # auto: 3D (20 slices pool twice)
    forced = plan_dataset(fp, memory_gb=2, minutes=5, device="cpu", mode="2.5d")
    assert forced.value("data.slices") == 2 and forced.value("data.slice_axis") == "axial"
    assert forced.value("model.spatial_dims") == 2 and len(forced.value("data.patch_size")) == 2
    assert "--mode 2.5d" in forced.yaml_text()
    flat = plan_dataset(fp, memory_gb=2, minutes=5, device="cpu", mode="2d")  # slice by slice
    assert flat.value("data.slices") == 0 and flat.value("model.in_channels") == 1
    iso = _fingerprint([(40, 40, 40)] * 5, [(1.0, 1.0, 1.0)] * 5)
    assert plan_dataset(iso, memory_gb=2, minutes=5, device="cpu", mode="2.5d").value("data.slice_axis") == \
        "axial"
    few = _fingerprint([(10, 64, 64)] * 6, [(5.0, 1.0, 1.0)] * 6)  # auto: 2.5D
    assert plan_dataset(few, memory_gb=2, minutes=5, device="cpu", mode="3d").value("model.spatial_dims") == 3
    photos = _fingerprint([(64, 64)] * 6, [(1.0, 1.0)] * 6)
    for mode in ("2.5d", "3d"):
        with pytest.raises(MedsegError, match=f"--mode {mode} needs 3D volumes"):
            plan_dataset(photos, memory_gb=2, minutes=5, device="cpu", mode=mode)
    two = plan_dataset(photos, memory_gb=2, minutes=5, device="cpu", mode="2d")
    assert two.value("model.spatial_dims") == 2 and "slices" not in two.to_dict()["data"]


def test_mode_3d_on_2d_images_is_a_one_line_cli_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    write_polyp_dataset(tmp_path / "polyps", n_cases=3, size=(32, 32))
    assert main(["plan", "polyps", "--mode", "3d", "--jobs", "0", "--device", "cpu", "--out", "plan.yaml",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medseg: error:") and "--mode 3d needs 3D volumes" in err[0]
    assert not Path("plan.yaml").exists()


@pytest.mark.slow
def test_plan_2p5d_then_train_it_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg.data.synthetic import write_lesion_dataset

    monkeypatch.chdir(tmp_path)
    write_lesion_dataset(tmp_path / "vols", n_cases=5, shape=(12, 32, 32), spacing=(5.0, 1.0, 1.0))
    assert main(["plan", "vols", "--mode", "2.5d", "--minutes", "0.02", "--memory-gb", "1", "--jobs", "0",
                 "--device", "cpu", "--out", "plan.yaml", "--no-progress"]) == 0
    config = load_config("plan.yaml")
    assert config.data.slices == 2 and config.model.spatial_dims == 2 and config.model.in_channels == 5
    assert main(["train", "plan.yaml", "--no-progress"]) == 0
    assert Path(f"runs/{config.name}/last.pt").is_file()
