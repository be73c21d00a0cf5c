"""The state restores the global generators (engine/train/saves/state.py): a run whose optimizer draws
from torch's global generator, stopped and resumed, ends with the weights of an uninterrupted run.
A state saved on a machine with more GPUs restores onto this process's device alone."""

from __future__ import annotations

import pytest
import torch
from test_train_engine import losses, stop_at
from train_helpers import make_run, same_model_files

from engine.control import RunControl
from engine.events import FanOut, ListSink
from engine.runner import run_training

NOISY = 'type = "tests.noisy_optimizer.NoisySGD"\nmax_grad_norm = 0.0'


@pytest.mark.slow
def test_an_optimizer_drawing_from_the_global_generator_resumes_exactly(tmp_path, tiny_sd1):
    straight = ListSink()
    full = make_run(tmp_path / "a", tiny_sd1, steps=6, optimizer_extra=NOISY)
    done = run_training(full, sink=straight)
    assert done.status == "completed", done.message

    control, first = RunControl(), ListSink()
    split = make_run(tmp_path / "b", tiny_sd1, steps=6, optimizer_extra=NOISY)
    assert run_training(split, sink=FanOut([first, stop_at(control, 3)]), control=control).status == "stopped"
    torch.manual_seed(12345)          # whatever this process drew in between
    second = ListSink()
    resumed = run_training(split, sink=second, resume="latest")
    assert resumed.status == "completed"
    assert {**losses(first), **losses(second)} == losses(straight)
    assert same_model_files(done.model_path, resumed.model_path)


def test_a_state_with_one_cuda_state_per_gpu_restores_without_those_gpus(monkeypatch):
    from engine.train.saves import state

    restored = []
    saved = state.rng_states()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(s))
    tensors = {"torch": saved["torch"], "cuda": [torch.tensor([1], dtype=torch.uint8)] * 8}   # from 8 GPUs
    state._restore_rng(state._rng_to_json(saved), tensors)
    assert len(restored) == 1
