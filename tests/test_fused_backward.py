"""memory.fused_backward_pass (kohya's --fused_backward_pass): each weight stepped inside
backward, its gradient freed at once (engine/train/weight_update.py). The same arithmetic as the
usual step, so the losses and weights equal the unfused run's bit for bit."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_train_engine import losses, stop_at
from train_helpers import make_run, same_model_files

from engine.config.problems import ConfigError
from engine.config.run_toml import load_run_file
from engine.control import RunControl
from engine.events import FanOut, ListSink
from engine.runner import run_training
from engine.train.optimizers import build_optimizer
from engine.train.weight_update import FusedBackward


def _train(folder, model, memory: str, optimizer: str, steps: int = 3, **kwargs):
    path = make_run(folder, model, steps=steps,
                    optimizer_extra=f'type = "{optimizer}"\nmax_grad_norm = 0.0')
    path.write_text(path.read_text() + "\n[memory]\n" + memory)
    sink = ListSink()
    result = run_training(path, sink=kwargs.pop("sink", sink), **kwargs)
    return result, sink, path


BF16 = 'mixed_precision = "bf16"\nfull_bf16 = true\n'
CASES = [("", "AdamW"), ("", "Adafactor"), ("", "Lion"), ("", "AdamW8bit"), (BF16, "AdamW")]


@pytest.mark.parametrize("memory, optimizer", CASES, ids=["AdamW", "Adafactor", "Lion", "AdamW8bit", "bf16-AdamW"])
def test_fused_backward_gives_the_unfused_runs_losses_and_weights(tmp_path, tiny_sd1, memory, optimizer):
    # bf16 weights: the fused pass rounds each weight as the unfused step does
    if optimizer == "AdamW8bit" and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    # 2 steps: a step from a fresh optimizer state and one from the state it left (6 below, for bf16)
    plain, plain_sink, _ = _train(tmp_path / "plain", tiny_sd1, memory, optimizer, steps=2)
    fused, fused_sink, _ = _train(tmp_path / "fused", tiny_sd1, memory + "fused_backward_pass = true\n", optimizer,
                                  steps=2)
    assert plain.status == fused.status == "completed", fused.message
    assert losses(fused_sink) == losses(plain_sink)
    assert same_model_files(plain.model_path, fused.model_path)


@pytest.mark.slow
def test_a_fused_bf16_run_stopped_and_resumed_equals_a_straight_one(tmp_path, tiny_sd1):
    memory = 'mixed_precision = "bf16"\nfull_bf16 = true\nfused_backward_pass = true\n'
    straight, straight_sink, _ = _train(tmp_path / "a", tiny_sd1, memory, "AdamW", steps=6)
    control, first = RunControl(), ListSink()
    stopped, _sink, path = _train(tmp_path / "b", tiny_sd1, memory, "AdamW", steps=6,
                                  sink=FanOut([first, stop_at(control, 3)]), control=control)
    assert stopped.status == "stopped" and stopped.global_step == 3
    second = ListSink()
    resumed = run_training(path, sink=second, resume="latest")
    assert resumed.status == "completed"
    assert {**losses(first), **losses(second)} == losses(straight_sink)
    assert same_model_files(straight.model_path, resumed.model_path)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 1))


def test_gradients_never_all_exist_at_once():
    model = _model()
    params = list(model.parameters())
    optimizer = build_optimizer("AdamW", [{"params": params, "lr": 1e-3}], 1e-3, {}, "cpu")
    alive = []
    for p in params:   # registered first, so it runs before the step's hook: gradients alive as each lands
        p.register_post_accumulate_grad_hook(lambda _p: alive.append(sum(q.grad is not None for q in params)))
    update = FusedBackward(optimizer, params)
    update.begin(0, seed=1)
    model(torch.randn(4, 8)).pow(2).mean().backward()
    assert max(alive) == 1 and all(p.grad is None for p in params)
    assert all(optimizer.state[p] for p in params)       # every weight was stepped
    assert update.finish().grad_norm > 0
    update.close()


def test_clipping_is_per_weight_as_kohya_does():
    model = _model()
    params = list(model.parameters())
    seen = {}
    optimizer = build_optimizer("torch.optim.SGD", [{"params": params, "lr": 0.0}], 0.0, {}, "cpu")
    original = optimizer.step

    def step(*args, **kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                seen[id(p)] = float(p.grad.norm())
        return original(*args, **kwargs)

    optimizer.step = step
    update = FusedBackward(optimizer, params, max_grad_norm=1e-3)
    update.begin(0, seed=1)
    (model(torch.randn(4, 8)) * 1000).pow(2).mean().backward()
    assert len(seen) == len(params) and max(seen.values()) <= 1e-3 * 1.001
    update.close()


@pytest.mark.parametrize("extra, words", [
    ("[train]\ngradient_accumulation_steps = 2\n", "cannot accumulate gradients"),
    ('[memory]\nmixed_precision = "fp16"\n', "cannot run with fp16"),
    ('[optimizer]\ntype = "DAdaptAdam"\n', "looks across all weights"),
])
def test_what_a_fused_backward_pass_cannot_do_is_refused_with_the_reason(tmp_path, tiny_sd1, extra, words):
    path = make_run(tmp_path, tiny_sd1)
    text = path.read_text()
    section, _, body = extra.partition("\n")
    text = text.replace(f"{section}\n", f"{section}\n{body}", 1) if section in text else text + "\n" + extra
    if "[memory]" not in text:
        text += "\n[memory]\n"
    text = text.replace("[memory]\n", "[memory]\nfused_backward_pass = true\n", 1)
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_run_file(path)
    problem = next(p for p in caught.value.problems if p.key == "memory.fused_backward_pass")
    assert words in problem.message and problem.hint
