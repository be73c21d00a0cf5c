"""Every optimizer and scheduler of the registry builds and steps."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from engine.train.optimizers import OPTIMIZERS, SCHEDULERS, OptionalPackageMissing, build_optimizer, build_scheduler, warmup_steps


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 8)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_builds_and_steps(name):
    needs = {"AdamW8bit": "bitsandbytes", "Lion8bit": "bitsandbytes", "Prodigy": "prodigyopt"}.get(name)
    model = _model()
    before = model.weight.detach().clone()
    if needs and importlib.util.find_spec(needs) is None:
        with pytest.raises(OptionalPackageMissing, match=f"pip install {needs}"):
            build_optimizer(name, [{"params": model.parameters()}], 1e-2)
        return
    try:
        optimizer = build_optimizer(name, [{"params": model.parameters()}], 1e-2)
    except OptionalPackageMissing:
        pytest.skip(f"{name}: optional package unusable here")
    model(torch.randn(4, 8)).pow(2).mean().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)


def test_bad_optimizer_args_are_explained():
    with pytest.raises(ValueError, match="optimizer.args"):
        build_optimizer("AdamW", [{"params": _model().parameters()}], 1e-3, {"not_an_arg": 1})


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_builds_and_steps(name):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_scheduler(name, optimizer, total_steps=10, warmup=2)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    if name == "constant":
        assert rates == [1.0] * 10
    elif name != "constant":
        assert rates[0] == 0.0 and rates[2] == pytest.approx(1.0)   # warm-up over 2 steps
    if name in ("linear", "cosine", "polynomial"):
        assert rates[-1] < rates[3]


def test_warmup_ratio():
    assert warmup_steps(0.1, 200) == 20
    assert warmup_steps(5, 200) == 5


def test_lion_moves_by_sign():
    from engine.train.optimizers import Lion

    p = torch.nn.Parameter(torch.zeros(3))
    opt = Lion([p], lr=0.1)
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
    default = _rates(build_scheduler(name, optimizer, total_steps=10), optimizer, 10)
    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    changed = _rates(build_scheduler(name, optimizer, total_steps=10, args=args), optimizer, 10)
    assert check(changed) and changed != default


def test_scheduler_args_outside_the_schedule_name_the_valid_keys():
    optimizer = torch.optim.SGD(_model().parameters(), lr=1.0)
    with pytest.raises(ValueError, match="has no option 'lr_end'.*num_cycles, last_epoch"):
        build_scheduler("cosine", optimizer, total_steps=10, args={"lr_end": 0.1})
    with pytest.raises(ValueError, match="set by optimizer.lr_scheduler_power"):
        build_scheduler("polynomial", optimizer, total_steps=10, args={"power": 2.0})
    with pytest.raises(ValueError, match="do not fit the constant schedule"):
        build_scheduler("constant", optimizer, total_steps=10, args={"last_epoch": 5})   # needs initial_lr
