"""Learning-rate schedules (medseg.engine.schedules): factors, warm-up, options checked when loading."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.config_types import ConfigError
from medseg.engine import config as config_module
from medseg.engine import schedules as schedules_module
from medseg.engine.config import load_config
from medseg.engine.schedules import (
    SCHEDULES,
    BudgetClock,
    ScheduleConfig,
    lr_factor_function,
    on_budget,
    register_schedule,
    schedule_names,
)
from medseg.registries import Registry


def test_poly_cosine_step_and_constant_factors() -> None:
    total = 100
    poly = lr_factor_function(ScheduleConfig(name="poly", power=0.9), total)
    assert [poly(t) for t in (0, 50, 100, 150)] == pytest.approx([1.0, 0.5**0.9, 0.0, 0.0])
    cosine = lr_factor_function(ScheduleConfig(name="cosine", min_lr_factor=0.1), total)
    assert [cosine(t) for t in (0, 50, 100)] == pytest.approx([1.0, 0.55, 0.1])
    step = lr_factor_function(ScheduleConfig(name="step", step_size=2, gamma=0.5), total, steps_per_epoch=10)
    assert [step(t) for t in (0, 19, 20, 45)] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    assert lr_factor_function(ScheduleConfig(name="constant"), total)(77) == 1.0


def test_warmup_then_the_schedule_over_the_remaining_steps() -> None:
    config = ScheduleConfig(name="poly", power=1.0, warmup_epochs=2, warmup_start_factor=0.2)
    factor = lr_factor_function(config, total_steps=110, steps_per_epoch=5)  # 10 warm-up steps
    assert [factor(t) for t in (0, 5, 10, 60, 110)] == pytest.approx([0.2, 0.6, 1.0, 0.5, 0.0])


def test_multistep_factors_at_the_milestones() -> None:
    config = ScheduleConfig(name="multistep", milestones=[3, 5], gamma=0.5)
    factor = lr_factor_function(config, total_steps=80, steps_per_epoch=10)
    # epochs 1-3 (steps 0-29): 1; epochs 4-5: 0.5; then 0.25
    assert [factor(t) for t in (0, 29, 30, 49, 50, 79)] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    default_gamma = lr_factor_function(ScheduleConfig(name="multistep", milestones=[1.5]), 40, 10)
    assert [default_gamma(t) for t in (14, 15)] == pytest.approx([1.0, 0.1])  # fractional: round(1.5 x 10)


def test_multistep_milestones_are_epochs_of_the_run_with_the_warmup_overlaid() -> None:
    config = ScheduleConfig(name="multistep", milestones=[1, 3], gamma=0.5, warmup_epochs=2,
                            warmup_start_factor=0.2)
    factor = lr_factor_function(config, total_steps=50, steps_per_epoch=10)
    # the warm-up ramps over steps 0-19 (the milestone at epoch 1 falls inside it and applies after it);
    # the milestone at epoch 3 still takes effect at step 30, not at 30 + the warm-up's 20
    assert [factor(t) for t in (0, 10, 19, 20, 29, 30, 49)] == pytest.approx(
        [0.2, 0.6, 0.96, 0.5, 0.5, 0.25, 0.25])


def test_multistep_matches_torch_multistep_lr_stepped_per_epoch() -> None:
    milestones, gamma, per_epoch = [2, 5, 7], 0.3, 4
    factor = lr_factor_function(ScheduleConfig(name="multistep", milestones=milestones, gamma=gamma),
                                total_steps=10 * per_epoch, steps_per_epoch=per_epoch)
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    reference = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
    for epoch in range(10):
        rate = optimizer.param_groups[0]["lr"]
        assert [factor(epoch * per_epoch + i) for i in range(per_epoch)] == pytest.approx([rate] * per_epoch)
        optimizer.step()
        reference.step()


@pytest.mark.parametrize(("overrides", "message"), [
    (["schedule.name=multistep"], r"^schedule\.milestones: the multistep schedule needs a list of epochs"),
    (["schedule.name=multistep", "schedule.milestones=[]"], r"^schedule\.milestones: the multistep schedule"),
    (["schedule.name=multistep", "schedule.milestones=[60, 30]"],
     r"^schedule\.milestones: must increase strictly, got \[60\.0, 30\.0\]"),
    (["schedule.name=multistep", "schedule.milestones=[30, 30]"], r"^schedule\.milestones: must increase"),
    (["schedule.name=multistep", "schedule.milestones=[0, 30]"],
     r"^schedule\.milestones: every value must be > 0"),
    (["schedule.name=multistep", "schedule.milestones=[a]"],
     r"^schedule\.milestones\[0\]: expected a number"),
    (["schedule.name=multistep", "schedule.milestones=30"], r"^schedule\.milestones: expected a list"),
    (["schedule.milestones=[30]"], r"^schedule\.milestones: only the multistep schedule uses milestones"),
    (["schedule.name=multistep", "schedule.milestones=[30, 3000]", "train.epochs=100"],
     r"^schedule\.milestones: 3000 is not before the end of the run \(train\.epochs 100\), so it would never "
     r"apply; milestones are epochs, not steps$"),
])
def test_multistep_options_are_checked_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_multistep_loads_and_milestones_past_epochs_are_fine_with_iterations() -> None:
    config = load_config(None, ["schedule.name=multistep", "schedule.milestones=[30, 60]",
                                "schedule.gamma=0.2"])
    assert (config.schedule.milestones, config.schedule.gamma) == ([30.0, 60.0], 0.2)
    # with train.iterations the epochs are known only once the data is: no check against train.epochs
    load_config(None, ["schedule.name=multistep", "schedule.milestones=[300]", "train.iterations=5000"])


def test_the_factor_drives_lambda_lr_for_every_parameter_group() -> None:
    encoder, decoder = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": encoder.parameters(), "lr": 0.01},
                                 {"params": decoder.parameters()}], lr=0.1)
    factor = lr_factor_function(ScheduleConfig(name="poly"), total_steps=10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    expected = (1 - 4 / 10) ** 0.9
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01 * expected, 0.1 * expected])


@pytest.fixture
def triangle_removed_afterwards():
    """Leave the schedule registry as it was: the test registers ``triangle``."""
    yield
    SCHEDULES.remove("triangle")


def test_a_registered_schedule_becomes_a_valid_name(triangle_removed_afterwards: None) -> None:
    assert "triangle" not in schedule_names()
    with pytest.raises(ConfigError, match="'triangle' is not one of"):
        load_config(None, ["schedule.name=triangle"])

    @register_schedule("triangle")
    def triangle(config: ScheduleConfig, total_steps: int, steps_per_epoch: int):
        period = config.options["period"]
        return lambda step: 1 - abs(step % period - period / 2) / (period / 2)

    assert "triangle" in schedule_names()
    config = load_config(None, ["schedule.name=triangle", "schedule.options.period=10"])
    factor = lr_factor_function(config.schedule, 100)
    assert [factor(t) for t in (0, 5, 10)] == pytest.approx([0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="registered twice"):
        register_schedule("triangle")(triangle)
    assert math.isclose(lr_factor_function(ScheduleConfig(), 10)(0), 1.0)


def test_triangular_schedule_by_hand() -> None:
    # per epoch (M2SNet): epoch e of E gets 1 - |2(e+1)/(E+1) - 1|; E = 4: 0.4, 0.8, 0.8, 0.4
    per_epoch = lr_factor_function(ScheduleConfig(name="triangular"), total_steps=40, steps_per_epoch=10)
    assert [per_epoch(t) for t in (0, 9, 10, 25, 39, 45)] == pytest.approx([0.4, 0.4, 0.8, 0.8, 0.4, 0.4])
    per_step = lr_factor_function(ScheduleConfig(name="triangular", options={"per_epoch": False}), 4, 10)
    assert [per_step(t) for t in range(4)] == pytest.approx([0.4, 0.8, 0.8, 0.4])
    based = lr_factor_function(ScheduleConfig(name="triangular", options={"base_factor": 0.5}), 40, 10)
    assert based(0) == pytest.approx(0.5 + 0.5 * 0.4)
    # the triangle over the first half (2 epochs: 2/3 each), then linear from 0.5 to 0.5 * 0.1
    annealed = lr_factor_function(ScheduleConfig(name="triangular", options={
        "base_factor": 0.5, "ratio": 0.5, "annealing_decay": 0.1}), 40, 10)
    assert [annealed(t) for t in (0, 10, 20, 30)] == pytest.approx([5 / 6, 5 / 6, 0.275, 0.05])
    # the official recipe: 50 epochs, lr 0.05 x (1 - |2(e+1)/51 - 1|)
    official = lr_factor_function(ScheduleConfig(name="triangular"), total_steps=50 * 3, steps_per_epoch=3)
    assert [official(3 * e) for e in (0, 24, 25, 49)] == pytest.approx([2 / 51, 50 / 51, 50 / 51, 2 / 51])


@pytest.mark.parametrize(("override", "message"), [
    ("schedule.options.peak=3", r"^schedule\.options\.peak: unknown option of the triangular schedule"),
    ("schedule.options.ratio=2", r"^schedule\.options\.ratio: expected a number in \[0\.0, 1\.0\], got 2"),
    ("schedule.options.per_epoch=1", r"^schedule\.options\.per_epoch: expected true or false"),
])
def test_triangular_options_are_checked_when_loading(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["schedule.name=triangular", override])


def test_the_registry_is_a_registry_and_the_config_module_re_exports_the_schedules() -> None:
    assert isinstance(SCHEDULES, Registry) and SCHEDULES.kind == "schedule"
    assert schedule_names() == ["constant", "cosine", "multistep", "poly", "step", "triangular"]
    for name in ("ScheduleConfig", "lr_factor_function", "register_schedule", "schedule_names"):
        assert getattr(config_module, name) is getattr(schedules_module, name)
    with pytest.raises(ConfigError, match=r"^schedule\.name: 'coisne' is not one of constant, .*'cosine'"):
        lr_factor_function(ScheduleConfig(name="coisne"), 10)


def test_on_budget_follows_whichever_of_steps_and_time_ends_first(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(BudgetClock, "now", staticmethod(lambda: now[0]))
    clock = BudgetClock(100.0)
    poly = lr_factor_function(ScheduleConfig(name="poly", power=1.0), total_steps=200)
    factor = on_budget(poly, 200, clock)
    assert factor(10) == pytest.approx(poly(10))  # no time used yet: the step plan
    now[0] = 50.0
    clock.tick()
    assert clock.fraction() == pytest.approx(0.5) and not clock.exhausted()
    assert factor(10) == pytest.approx(poly(100)) == pytest.approx(0.5)  # half the time: half the schedule
    assert factor(150) == pytest.approx(poly(150))  # the steps ahead of the clock
    assert clock.exhausted(reserve=50.0)
    now[0] = 130.0
    clock.tick()
    assert clock.fraction() == 1.0 and factor(10) == pytest.approx(0.0)


def test_budget_clock_resumes_with_the_seconds_already_used(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(BudgetClock, "now", staticmethod(lambda: now[0]))
    clock = BudgetClock(60.0)
    clock.restart(used=30.0)
    now[0] += 15.0
    assert clock.tick() == pytest.approx(45.0) and clock.fraction() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="positive"):
        BudgetClock(0.0)
