"""A diverged run stops (engine/train/divergence.py): the first non-finite loss, gradient or weight
ends the run as failed (exit 3) with the step and the likely cause, keeps the last good state, and
saves no model with NaN weights; events.jsonl stays strict JSON; --check warns about learning rates
outside the optimizer's usual range."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import make_run

from engine.events import ListSink, ModelSaved, RunFinished
from engine.preflight.checks import check_run_file
from engine.runner import run_training
from engine.train.divergence import SKIPPED_IN_A_ROW, Diverged, DivergenceWatch


def _run(tmp_path, model, lr: str, steps: int = 6, save: str = "") -> tuple:
    path = make_run(tmp_path, model, steps=steps, save_extra=save, optimizer_extra="max_grad_norm = 0.0")
    path.write_text(path.read_text().replace("learning_rate = 1e-4", f"learning_rate = {lr}"))
    sink = ListSink()
    return run_training(path, sink=sink), sink, path


def test_a_learning_rate_of_1e308_stops_the_run_at_its_first_nan_and_saves_nothing_after(tmp_path, tiny_sd1):
    result, sink, path = _run(tmp_path, tiny_sd1, "1e308", save="every_n_steps = 1\nstate = true\n")
    assert result.status == "failed"
    assert "training diverged" in result.message and "above AdamW's usual range" in result.message
    assert "Nothing was saved from that step on" in result.message
    saved = [e for e in sink.of(ModelSaved) if e.what == "model"]
    for event in saved:      # whatever was saved before it is finite
        assert all(torch.isfinite(t.float()).all() for t in load_file(event.path).values())
    finished = sink.of(RunFinished)[0]
    assert finished.status == "failed" and finished.step < 6
    events = (tmp_path / "runs" / "t" / "events.jsonl").read_text().splitlines()
    for line in events:      # strict JSON: no bare NaN or Infinity tokens
        json.loads(line, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))


def test_the_cli_exits_3_and_names_the_last_good_state(tmp_path, tiny_sd1, capsys):
    path = make_run(tmp_path, tiny_sd1, steps=6, save_extra="every_n_steps = 2\nstate = true\n")
    path.write_text(path.read_text().replace("learning_rate = 1e-4", "learning_rate = 1e-4\nlr_scheduler = \"linear\""))
    # good for two steps (a state at step 2), then the rate jumps: the run diverges after it
    path.write_text(path.read_text().replace('lr_scheduler = "linear"', 'lr_scheduler_type = "torch.optim.lr_scheduler.MultiStepLR"\nlr_scheduler_args = { milestones = [2], gamma = 1e300 }'))
    from engine.cli import main  # `sdft train RUN.toml`, in this process: its exit code and output

    code = main(["train", str(path)])
    printed = capsys.readouterr()
    assert code == 3, printed.out + printed.err
    output = " ".join((printed.out + printed.err).split())
    assert "training diverged" in output and "The last good state is step 2" in output and "--allow-changed" in output


def test_the_watch_notes_on_the_device_and_reads_only_when_checked():
    bundle = type("Bundle", (), {"trained_params": [torch.nn.Parameter(torch.ones(3))], "lr_scheduler": None})()
    cfg = _config()
    watch = DivergenceWatch(cfg, "no", bundle, torch.device("cpu"))
    watch.note(1, torch.tensor(0.5), torch.tensor(1.0))
    watch.check(1)
    watch.note(2, torch.tensor(float("nan")), None)
    watch.note(3, torch.tensor(0.5), torch.tensor(float("inf")))
    with pytest.raises(Diverged, match="at step 2") as caught:
        watch.check(4)
    assert caught.value.first_step == 2
    with pytest.raises(Diverged):     # once tripped, every later check says so
        watch.check(5)


def test_weights_that_overflowed_are_caught_before_anything_uses_them():
    param = torch.nn.Parameter(torch.tensor([1.0, float("inf")]))
    bundle = type("Bundle", (), {"trained_params": [param], "lr_scheduler": None})()
    watch = DivergenceWatch(_config(), "no", bundle, torch.device("cpu"))
    watch.check(3, weights=False)
    with pytest.raises(Diverged, match="trained weights hold NaN or infinite values by step 3"):
        watch.check(3)


def test_under_fp16_only_a_long_run_of_skipped_steps_is_divergence():
    schedule = type("Schedule", (), {"skipped_in_a_row": SKIPPED_IN_A_ROW - 1})()
    bundle = type("Bundle", (), {"trained_params": [torch.nn.Parameter(torch.ones(2))], "lr_scheduler": schedule})()
    watch = DivergenceWatch(_config(), "fp16", bundle, torch.device("cpu"), scaler=object())
    watch.note(1, torch.tensor(float("inf")), None)      # the scaler's business
    watch.check(1)
    schedule.skipped_in_a_row = SKIPPED_IN_A_ROW
    with pytest.raises(Diverged, match="fp16's gradient scaler skipped the last") as caught:
        watch.check(30)
    assert "bf16" in str(caught.value)


def _config():
    from engine.config.schema import RunConfig

    return RunConfig()


def test_check_warns_about_learning_rates_outside_the_usual_range(tmp_path, tiny_sd1):
    path = make_run(tmp_path, tiny_sd1)
    path.write_text(path.read_text().replace("learning_rate = 1e-4", "learning_rate = 0.5"))
    _config_, problems = check_run_file(path)
    warned = [p for p in problems if p.key == "optimizer.learning_rate" and p.severity == "warning"]
    assert warned and "above AdamW's usual range" in warned[0].message
    path.write_text(path.read_text().replace("learning_rate = 0.5", 'learning_rate = 1e-4\ntype = "Lion"'))
    _config_, problems = check_run_file(path)
    assert not [p for p in problems if p.key == "optimizer.learning_rate"]    # 1e-4 is within Lion's range
    path.write_text(path.read_text().replace("learning_rate = 1e-4", "learning_rate = 1e-9"))
    _config_, problems = check_run_file(path)
    assert any("below Lion's usual range" in p.message for p in problems if p.key == "optimizer.learning_rate")


def test_events_jsonl_writes_non_finite_numbers_as_null(tmp_path):
    from engine.events import JsonlSink, StepMetrics

    sink = JsonlSink(tmp_path / "events.jsonl")
    sink.emit(StepMetrics(step=1, total_steps=2, epoch=1, loss=float("nan"), loss_avg=float("inf"), lr=1e-5,
                          grad_norm=None, it_per_s=1.0, samples_per_s=2.0, eta_s=1.0, elapsed_s=1.0))
    sink.close()
    data = json.loads((tmp_path / "events.jsonl").read_text())
    assert data["loss"] is None and data["loss_avg"] is None and data["lr"] == 1e-5
