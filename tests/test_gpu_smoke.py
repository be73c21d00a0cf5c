"""`sdft bench --gpu-smoke`: its code path on the CPU with the tiny model, so it works the first
time it meets a GPU; its checks catch what they are there for (a run whose weights do not move)."""

from __future__ import annotations

import json
import time

import pytest

from engine.bench.gpu_smoke import check_cell, smoke_cells


def test_the_cells_are_every_precision_optimizer_and_fused_choice_that_the_run_file_takes():
    cells = smoke_cells()
    assert len(cells) == 15        # 3 precisions x 3 optimizers x fused off/on, less fp16 fused (refused)
    assert {(c.precision, c.optimizer) for c in cells if not c.fused} == {
        (p, o) for p in ("fp16", "bf16", "full_bf16") for o in ("AdamW", "AdamW8bit", "Adafactor")}
    assert not any(c.fused and c.precision == "fp16" for c in cells)
    assert cells[0].changes["memory.gradient_checkpointing"] is True


def test_checks_fail_on_non_finite_losses_still_weights_and_a_planner_miss():
    ok = check_cell([1.0, 0.9], moved=0.5, prediction_error=0.05)
    assert all(ok.values())
    assert list(check_cell([1.0, float("nan")], 0.5, 0.05).values())[0] is False
    assert list(check_cell([1.0], 0.03, 0.05).values())[1] is False      # rounded-to-nearest bf16 moves ~3 %
    assert list(check_cell([1.0], 0.5, -0.2).values())[2] is False
    assert list(check_cell([1.0], 0.5, None).values())[2] is None        # no CUDA peak: n/a, not a failure


@pytest.mark.slow
def test_gpu_smoke_runs_every_cell_with_the_tiny_model_on_a_cpu(tmp_path, capsys, monkeypatch):
    from engine.bench import commands as bench_commands
    from engine.cli import main

    # In-process (docs/testing.md): the command's exit code and output are what is checked, not its
    # process; the budget counts from now, as it would in a process started for the command.
    started = time.perf_counter()
    monkeypatch.setattr(bench_commands, "process_started", lambda: started)
    out = tmp_path / "smoke"
    code = main(["bench", "--gpu-smoke", str(out), "--report-model", "tiny", "--report-resolution", "64",
                 "--steps", "2"])
    result = capsys.readouterr()
    assert code == 0, result.err[-2000:]
    report = json.loads((out / "gpu-smoke.json").read_text())
    statuses = {c["label"]: c["status"] for c in report["cells"]}
    assert all(s == "skipped" for label, s in statuses.items() if label.startswith("fp16"))   # a CPU has no fp16
    assert [s for label, s in statuses.items() if not label.startswith("fp16")] == ["passed"] * 12
    passed = [c for c in report["cells"] if c["status"] == "passed"]
    assert all(len(c["figures"]["losses"]) == 2 and c["figures"]["moved_share"] > 0.1 for c in passed)
    markdown = (out / "gpu-smoke.md").read_text()
    assert "| full_bf16 Adafactor fused | passed | yes | yes" in markdown
    assert "[15/15] full_bf16 Adafactor fused: passed" in result.err


@pytest.mark.slow
def test_a_cell_whose_bf16_weights_round_to_nearest_fails_the_moved_check(tmp_path):
    from engine.bench.gpu_report import ReportSize, random_model, write_report_run
    from engine.bench.gpu_smoke import _smoke_toml, run_cell
    from engine.bench.speed_cells import Cell, cell_config
    from engine.bench.speed_matrix import ModelStore

    run_file = write_report_run(tmp_path, ReportSize("tiny", resolution=64), 4)
    data = _smoke_toml(run_file, steps=3, learning_rate=1e-5)
    store = ModelStore(random_model("tiny"))
    changes = {"memory.mixed_precision": "bf16", "memory.full_bf16": True}
    results = {}
    for rounding in (True, False):
        config, why = cell_config(data, Cell({**changes, "memory.stochastic_rounding": rounding}),
                                  file=str(run_file), base_dir=tmp_path)
        assert why is None, why
        figures, checks = run_cell(config, store)
        results[rounding] = (figures["moved_share"], list(checks.values())[1])
    assert results[True][1] is True and results[False][1] is False
    assert results[False][0] < 0.1 < results[True][0]


def test_gpu_slices_count_their_budget_from_the_process_start():
    from engine.bench import commands as bench_commands

    started = bench_commands.process_started()
    assert started <= time.perf_counter()
    assert bench_commands.GPU_SLICE_BUDGET_S + 30 <= 7 * 60     # the whole command fits a 7-minute slice


def test_a_budget_counted_from_an_earlier_start_leaves_every_cell_unrun(tmp_path):
    from engine.bench.gpu_report import ReportSize, gpu_report

    axes = (("memory.mixed_precision", ("no",)),)
    report = gpu_report(tmp_path / "report", size=ReportSize("tiny", resolution=64, batch_sizes=(1,)), steps=1,
                        warmup=1, budget_s=60, axes=axes, started=time.perf_counter() - 61)
    assert [c["status"] for c in report["cells"]] == ["not run"]
