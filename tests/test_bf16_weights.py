"""bf16 weights that learn: stochastic rounding of every optimizer's write-back
(engine/train/weight_update.py, docs/precision.md).

At fine-tune learning rates an update is far below half a bf16 step of an ordinary weight, so
rounding to nearest drops it. The measure used throughout is the issue's: the bf16 weights' total
change projected on an fp32-master run's change, over the same gradients (1.0 = the same progress).
"""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch

from engine.registry.optimizers import entry_for
from engine.train.optimizers import build_optimizer
from engine.train.weight_update import (
    AllAtOnce,
    Rounded,
    pieces_of,
    rounding_seed,
    stochastic_round_,
    weight_update_for,
)

STEPS, LR = 10, 5e-6


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    low = torch.tensor(0.03, dtype=torch.bfloat16)
    high = (low.view(torch.int16) + 1).view(torch.bfloat16)     # the next bf16 value up
    assert high > low
    value = low.float() + 0.3 * (high.float() - low.float())     # 30 % of the way up
    source = value.repeat(200_000)
    target = torch.empty_like(source, dtype=torch.bfloat16)
    stochastic_round_(target, source, torch.Generator().manual_seed(0))
    assert set(target.unique().tolist()) == {low.item(), high.item()}
    share_up = (target == high).float().mean().item()
    assert abs(share_up - 0.3) < 0.01
    assert abs(target.float().mean().item() - value.item()) < 0.01 * (high - low).float().item()


def test_stochastic_rounding_keeps_values_that_bf16_holds_exactly():
    exact = torch.randn(1000).bfloat16()
    target = torch.empty_like(exact)
    stochastic_round_(target, exact.float(), torch.Generator().manual_seed(1))
    assert torch.equal(target, exact)
    negative = torch.full((100_000,), -0.0301)
    target = torch.empty(100_000, dtype=torch.bfloat16)
    stochastic_round_(target, negative, torch.Generator().manual_seed(2))
    assert abs(target.float().mean().item() + 0.0301) < 2e-6


def test_the_rounding_seed_is_a_pure_function_of_seed_step_and_weight():
    assert rounding_seed(7, 3, 5) == rounding_seed(7, 3, 5)
    assert len({rounding_seed(7, 3, 5), rounding_seed(7, 4, 5), rounding_seed(7, 3, 6), rounding_seed(8, 3, 5)}) == 4


def _weights(n: int = 1_000_000) -> torch.Tensor:
    # ~ N(0, 0.05), held exactly by bf16 so both runs start from the same weights
    return (torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.05).bfloat16().float()


def _grads(n: int, steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(n, generator=gen) * 1e-3 for _ in range(steps)]


def _change(optimizer_name: str, dtype: torch.dtype, *, rounding: bool) -> torch.Tensor:
    """The total weight change after STEPS steps of the same gradients, in ``dtype`` weights."""
    start = _weights()
    param = torch.nn.Parameter(start.clone().to(dtype))
    optimizer = build_optimizer(optimizer_name, [{"params": [param], "lr": LR}], LR, {}, "cpu")
    memory = types.SimpleNamespace(fused_backward_pass=False, stochastic_rounding=rounding)
    update = weight_update_for(memory, entry_for(optimizer_name), optimizer, [param], 0.0, None)
    for step, grad in enumerate(_grads(start.numel(), STEPS)):
        update.begin(step, seed=11)
        param.grad = grad.to(dtype)
        update.finish()
        optimizer.zero_grad(set_to_none=True)
    return param.detach().float() - start


def _projection(change: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.dot(change, reference) / torch.dot(reference, reference))


OPTIMIZERS = ["AdamW", "Adafactor", "Lion", "AdamW8bit"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bf16_weights_with_stochastic_rounding_move_as_fp32_master_weights_do(name):
    if name == "AdamW8bit" and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    reference = _change(name, torch.float32, rounding=False)
    rounded = _change(name, torch.bfloat16, rounding=True)
    assert 0.9 <= _projection(rounded, reference) <= 1.1


@pytest.mark.parametrize("name", ["AdamW", "Lion"])
def test_round_to_nearest_loses_the_updates(name):
    # the old behaviour: the optimizer writes the bf16 weights itself, and most updates vanish
    reference = _change(name, torch.float32, rounding=False)
    nearest = _change(name, torch.bfloat16, rounding=False)
    assert _projection(nearest, reference) < 0.2
    assert (nearest != 0).float().mean() < 0.1


def test_the_fp32_maths_keeps_fp32_optimizer_states_for_bf16_weights():
    param = torch.nn.Parameter(_weights(4096).bfloat16())
    optimizer = build_optimizer("AdamW", [{"params": [param], "lr": LR}], LR, {}, "cpu")
    update = Rounded(optimizer, [param], per_parameter=True)
    param.grad = torch.ones_like(param)
    update.finish()
    assert param.dtype == torch.bfloat16 and param.grad is None
    assert {v.dtype for v in optimizer.state[param].values() if v.is_floating_point() and v.dim()} == {torch.float32}


def test_pieces_keep_order_and_bound_their_size():
    params = [torch.zeros(n) for n in (5, 5, 20, 3, 3, 3)]
    pieces = pieces_of(params, 10)
    assert [[p.numel() for p in piece] for piece in pieces] == [[5, 5], [20], [3, 3, 3]]
    assert [p for piece in pieces for p in piece] == params


def test_a_skipped_fp16_step_is_flagged_on_the_device():
    # AllAtOnce compares the gradient scaler's scale around the step: it drops exactly on a skip
    class Scaler:
        def __init__(self):
            self._scale = torch.tensor(1024.0)

    param = torch.nn.Parameter(torch.zeros(4))
    scaler = Scaler()

    class Optimizer:
        param_groups = [{"params": [param]}]

        def step(self):
            scaler._scale = scaler._scale * 0.5     # what GradScaler.update does after inf gradients

    outcome = AllAtOnce(Optimizer(), [param], scaler=scaler).finish()
    assert bool(outcome.skipped)
