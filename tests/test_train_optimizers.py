"""Every LR schedule of the registry builds and steps; optimizer arguments and Lion (every optimizer
builds and trains in test_optimizers_all.py)."""

from __future__ import annotations

import pytest
import torch

from engine.train.lr_schedules import SCHEDULERS, ScheduleInputs, build_scheduler, steps_of
from engine.train.optimizers import build_optimizer


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 8)


def test_bad_optimizer_args_are_explained():
    with pytest.raises(ValueError, match="optimizer.args"):
        build_optimizer("AdamW", [{"params": _model().parameters()}], 1e-3, {"not_an_arg": 1})


@pytest.mark.parametrize("name", [s for s in SCHEDULERS if s != "adafactor"])   # Adafactor's: test_optimizers_all
def test_scheduler_builds_and_steps(name):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    extra = {"cosine_with_min_lr": {"min_lr_ratio": 0.1}, "warmup_stable_decay": {"decay": 3}}.get(name, {})
    args = {"step_rules": "1:5,0.1"} if name == "piecewise_constant" else None
    scheduler = build_scheduler(name, optimizer, ScheduleInputs(10, warmup=2, **extra), args)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    if name == "constant":
        assert rates == [1.0] * 10
    elif name == "piecewise_constant":
        assert rates[:5] == [1.0] * 5 and rates[5:] == [pytest.approx(0.1)] * 5
    else:
        assert rates[0] == 0.0 and rates[2] == pytest.approx(1.0)   # warm-up over 2 steps
    if name in ("linear", "cosine", "polynomial"):
        assert rates[-1] < rates[3]


def test_warmup_ratio():
    assert steps_of(0.1, 200) == 20
    assert steps_of(5, 200) == 5


def test_lion_moves_by_sign():
    pytest.importorskip("lion_pytorch")
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer("Lion", [{"params": [p]}], 0.1)
    p.grad = torch.tensor([2.0, -0.5, 0.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, 0.0]))


def _rates(scheduler, optimizer, steps):
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("name, args, check", [
    # polynomial decays to lr_end instead of the default 1e-7
    ("polynomial", {"lr_end": 0.5}, lambda r: r[-1] > 0.5),
    # a quarter cosine ends half-way down, the default half cosine near zero
    ("cosine", {"num_cycles": 0.25}, lambda r: r[-1] > 0.55),
    ("linear", {"f_min": 0.5}, lambda r: min(r) >= 0.5),
])
def test_scheduler_args_reach_the_schedule(name, args, check):
    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    default = _rates(build_scheduler(name, optimizer, ScheduleInputs(10)), optimizer, 10)
    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    changed = _rates(build_scheduler(name, optimizer, ScheduleInputs(10), args), optimizer, 10)
    assert check(changed) and changed != default


def test_scheduler_args_outside_the_schedule_name_the_valid_keys():
    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    with pytest.raises(ValueError, match="has no option 'lr_end'.*num_cycles, last_epoch"):
        build_scheduler("cosine", optimizer, ScheduleInputs(10), {"lr_end": 0.1})
    with pytest.raises(ValueError, match="set by optimizer.lr_scheduler_power"):
        build_scheduler("polynomial", optimizer, ScheduleInputs(10), {"power": 2.0})
    with pytest.raises(ValueError, match="do not fit the constant schedule"):
        build_scheduler("constant", optimizer, ScheduleInputs(10), {"last_epoch": 5})   # needs initial_lr


# kohya's get_scheduler_fix passes these schedules their [optimizer] options like this (num_cycles
# halved for the two transformers cosines); the learning rate at a few steps, by kohya's formulas.
def _kohya_lr(name, step, total=100, warmup=10, decay=20, cycles=1, min_ratio=0.1, timescale=None):
    import math

    if step < warmup:   # the warm-up of warmup_stable_decay starts at the floor
        ramp = step / max(1, warmup)
        return ramp * (1 - min_ratio) + min_ratio if name == "warmup_stable_decay" else ramp
    if name == "inverse_sqrt":
        t = timescale or warmup or 10_000
        return 1 / math.sqrt((step + t - warmup) / t)
    if name == "cosine_with_min_lr":
        progress = (step - warmup) / max(1, total - warmup)
        factor = 0.5 * (1 + math.cos(math.pi * (cycles / 2) * 2.0 * progress))
        return factor * (1 - min_ratio) + min_ratio
    if name == "warmup_stable_decay":
        stable = total - warmup - decay
        if step < warmup + stable:
            return 1.0
        progress = (step - warmup - stable) / max(1, decay)
        value = 0.5 * (1.0 + math.cos(math.pi * (cycles / 2) * 2.0 * progress))
        return (1.0 - min_ratio) * value + min_ratio
    raise ValueError(name)


@pytest.mark.parametrize("name", ["inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"])
def test_kohyas_added_schedules_follow_kohyas_formulas(name):
    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    given = ScheduleInputs(100, warmup=10, decay=0.2, min_lr_ratio=0.1)   # decay as a ratio: 20 steps
    rates = _rates(build_scheduler(name, optimizer, given), optimizer, 100)
    for step in (0, 5, 10, 30, 79, 80, 90, 99):
        assert rates[step] == pytest.approx(_kohya_lr(name, step), abs=1e-6), (name, step)


def test_schedules_that_need_a_key_say_which():
    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    with pytest.raises(ValueError, match="needs optimizer.lr_scheduler_min_lr_ratio"):
        build_scheduler("cosine_with_min_lr", optimizer, ScheduleInputs(100))
    with pytest.raises(ValueError, match="are more than the run's 100 steps"):
        build_scheduler("warmup_stable_decay", optimizer, ScheduleInputs(100, warmup=60, decay=60))


def test_a_schedule_class_by_torch_name_or_module_path():
    from types import SimpleNamespace

    from engine.train.lr_schedules import schedule_for

    def config(type_name, args):
        return SimpleNamespace(lr_scheduler_type=type_name, lr_scheduler_args=args)

    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    rates = _rates(schedule_for(config("StepLR", {"step_size": 2, "gamma": 0.5}), optimizer, 10), optimizer, 6)
    assert rates == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    scheduler = schedule_for(config("torch.optim.lr_scheduler.ConstantLR", {"factor": 0.5}), optimizer, 10)
    assert scheduler.get_last_lr() == [0.5]
    with pytest.raises(ValueError, match="cannot find 'NoSuchLR'"):
        schedule_for(config("NoSuchLR", {}), optimizer, 10)
    with pytest.raises(ValueError, match="do not fit StepLR"):
        schedule_for(config("StepLR", {"bogus": 1}), optimizer, 10)
