"""SDXL on several processes (issue 30, memory: sharded training for cards where one copy of the
optimizer state does not fit): a tiny SDXL run sharded over 2 CPU processes (gloo, FSDP
``memory.sharding = "full"``, both text encoders training at their own rates) is the one-process
run, losses and saved weights (docs/many-gpus.md). The two processes are forked with the environment
accelerate's launcher gives them (tests/forked_sdft.py launch()); tests/test_many_processes.py
tests the launcher itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

import forked_sdft
import pytest
import torch
from safetensors.torch import load_file
from test_sdxl_train import sdxl_run
from train_helpers import make_dataset

from engine.launch import launch_plan

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_sdxl_folder):
    return tiny_sdxl_folder(1)   # the worker's tiny SDXL folder (tests/conftest.py), read only


def _run_file(folder: Path, model: Path, processes: int, sharding: str) -> Path:
    make_dataset(folder, count=8)
    path = sdxl_run(folder, model, steps=4, train_extra="train_text_encoder = true",
                    optimizer_extra="learning_rate_te1 = 1e-5\nlearning_rate_te2 = 2e-5\nmax_grad_norm = 1.0",
                    save_extra='precision = "float"\n')
    text = path.read_text().replace("batch_size = 2", f"batch_size = {4 // processes}")
    text = text.replace("shuffle_caption = true", "shuffle_caption = true\nflip_aug = true")
    path.write_text(text + f'\n[memory]\nsharding = "{sharding}"\n')
    return path


def _outcome(path: Path) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    run = path.parent / "runs" / "t"
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    return ({e["step"]: e["loss"] for e in events if e["event"] == "step"},
            load_file(str(run / "checkpoints" / "t.safetensors")))


def test_sdxl_sharded_on_two_processes_is_the_one_process_run(tmp_path, tiny_sdxl, capsys):
    from engine.cli import main

    one = _run_file(tmp_path / "one", tiny_sdxl, 1, "none")
    assert main(["train", str(one)]) == 0, capsys.readouterr()
    two = _run_file(tmp_path / "two", tiny_sdxl, 2, "full")
    plan = launch_plan([str(two)], 2, {}, None)
    ranks = forked_sdft.launch(plan.argv, env={**ENV, **plan.env}, cwd=two.parent)
    out, _ = ranks.communicate(timeout=900)
    assert ranks.returncode == 0, out[-3000:]
    (expected, a), (got, b) = _outcome(one), _outcome(two)
    assert sorted(expected) == [1, 2, 3, 4] and got.keys() == expected.keys()
    for step, loss in expected.items():   # the same batches, noise and timesteps; sums in another order
        assert got[step] == pytest.approx(loss, rel=1e-5), step
    assert a.keys() == b.keys()
    assert any(k.startswith("conditioner.embedders.1.") for k in a)    # both text encoders saved
    for key, tensor in a.items():
        torch.testing.assert_close(b[key].float(), tensor.float(), rtol=1e-4, atol=1e-5)
