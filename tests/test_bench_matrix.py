"""`sdft bench --matrix` and `--gpu-report`: which cells run, what is skipped and why, the figures
each table and JSON copy carries, progress as it goes, and the time budget. The GPU report's code
path runs here on the CPU with the tiny model, so it works the first time it meets a GPU."""

from __future__ import annotations

import json

import pytest
from train_helpers import make_run

RAN_FIELDS = ("steps_per_s", "samples_per_s", "peak_memory_bytes", "memory_kind", "predicted_bytes",
              "prediction_error", "flops_per_sample", "mfu", "mfu_note", "seconds")


# ---------------------------------------------------------------- planning the cells (no torch)


def test_one_at_a_time_varies_each_axis_from_the_run_file():
    from engine.bench.speed_cells import one_at_a_time

    axes = (("memory.attention", ("sdpa", "math")), ("datasets.batch_size", (1, 4)))
    cells = one_at_a_time(axes, {"memory.attention": "sdpa", "datasets.batch_size": 4})
    assert [c.changes for c in cells] == [{}, {"memory.attention": "math"}, {"datasets.batch_size": 1}]
    assert cells[0].label == "baseline (the run file)" and cells[2].label == "batch=1"


def test_every_combination_comes_nearest_the_first_first():
    from engine.bench.speed_cells import every_combination

    cells = every_combination((("a.x", (1, 2)), ("a.y", (False, True)), ("a.z", ("p", "q"))))
    assert len(cells) == 8 and cells[0].changes == {"a.x": 1, "a.y": False, "a.z": "p"}
    distances = [sum(v != first for v, first in zip(c.changes.values(), (1, False, "p"), strict=True)) for c in cells]
    assert distances == sorted(distances) and cells[-1].changes == {"a.x": 2, "a.y": True, "a.z": "q"}


def test_cells_that_cannot_run_here_say_why():
    from engine.bench.speed_cells import Cell, cell_problem

    cpu_no_packages = dict(cuda=False, packages=frozenset())
    assert "no run-file key memory.warp_drive" in cell_problem(Cell({"memory.warp_drive": True}), **cpu_no_packages)
    assert "fp16 needs a CUDA GPU" in cell_problem(Cell({"memory.mixed_precision": "fp16"}), **cpu_no_packages)
    assert "xformers needs a CUDA GPU" in cell_problem(Cell({"memory.attention": "xformers"}), **cpu_no_packages)
    missing = cell_problem(Cell({"optimizer.type": "AdamW8bit"}), cuda=True, packages=frozenset())
    assert "needs the package bitsandbytes" in missing and "pip install bitsandbytes" in missing
    assert cell_problem(Cell({"optimizer.type": "AdamW8bit"}), cuda=True, packages=frozenset({"bitsandbytes"})) is None
    assert cell_problem(Cell({"memory.attention": "xformers"}), cuda=True, packages=frozenset({"xformers"})) is None


def test_axis_arguments_are_typed():
    from engine.bench.speed_cells import parse_axis

    assert parse_axis("memory.gradient_checkpointing=off,on") == ("memory.gradient_checkpointing", (False, True))
    assert parse_axis("datasets.batch_size=1,8") == ("datasets.batch_size", (1, 8))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_axis("memory.attention")


def test_gpu_peaks_match_the_variant_and_say_unknown_otherwise():
    from engine.bench.gpu_peaks import compute_dtype, peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.5
    assert peak_tflops("NVIDIA H100 PCIe", "bf16")[0] == 756.0
    assert peak_tflops("NVIDIA H200", "fp16")[0] == 989.5
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16")[0] == 312.0
    assert peak_tflops("NVIDIA A10", "fp16")[0] == 125.0
    assert peak_tflops("NVIDIA GeForce RTX 4090", "bf16")[0] == 165.2
    assert peak_tflops("NVIDIA A10G", "fp16") == (None, "unknown GPU (NVIDIA A10G)")
    assert peak_tflops("Tesla T4", "bf16")[0] is None
    assert compute_dtype("no") == "tf32" and compute_dtype("no", allow_tf32=False) == "fp32"
    assert compute_dtype("fp16") == "fp16" and compute_dtype("no", full_bf16=True) == "bf16"


# ---------------------------------------------------------------- timing cells (tiny model, CPU)


def test_each_cell_trains_its_own_copy_of_the_model():
    import torch

    from engine.bench.gpu_report import random_model
    from engine.bench.speed_matrix import ModelStore

    store = ModelStore(random_model("tiny"))
    first, second = (store.fresh(lambda: None, torch.device("cpu")) for _ in range(2))
    with torch.no_grad():
        next(first.unet.parameters()).add_(1.0)
    pristine, copy = next(store.model.unet.parameters()), next(second.unet.parameters())
    assert torch.equal(pristine, copy) and pristine.data_ptr() != copy.data_ptr()
    assert first.text_encoder is not second.text_encoder and first.vae is second.vae   # the frozen VAE is shared


def test_plain_bench_says_what_it_is_doing(tmp_path, tiny_sd1):
    from engine.bench.speed import run_bench

    lines: list[str] = []
    run_bench(make_run(tmp_path, tiny_sd1, steps=2), steps=1, warmup=1, progress=lines.append)
    assert any("loading" in line for line in lines) and any("timing the engine" in line for line in lines)
    assert any("bare loop" in line for line in lines)


def test_matrix_command_prints_progress_a_table_and_a_json_copy(tmp_path, tiny_sd1, capsys):
    from sdft_tui.cli import main

    config = make_run(tmp_path, tiny_sd1, steps=2)
    out = tmp_path / "matrix.json"
    # In-process (docs/testing.md): the command's exit code and output are what is checked, not its process.
    code = main(["bench", "--matrix", str(config), "--steps", "1", "--warmup", "1",
                 "--axis", "memory.attention=sdpa,math", "--axis", "memory.mixed_precision=no,fp16",
                 "--axis", "memory.not_yet_a_key=false,true", "--json-out", str(out)])
    said = capsys.readouterr()
    assert code == 0, said.err
    progress = [line for line in said.err.splitlines() if line.startswith("[")]
    assert len([line for line in progress if "training 1 warm-up + 1 timed steps" in line]) == 2
    assert any("[1/5] baseline" in line and "steps/s" in line for line in progress)
    assert "samples/s" in said.out and "peak memory" in said.out
    assert "3. mixed_precision=fp16: skipped: fp16 needs a CUDA GPU" in " ".join(said.out.split())
    assert "the planner models full-size SD U-Nets" in said.out
    report = json.loads(out.read_text())
    by_label = {c["label"]: c for c in report["cells"]}
    assert [c["status"] for c in report["cells"]] == ["ran", "ran", "skipped", "skipped", "skipped"]
    assert by_label["attention=math"]["changes"] == {"memory.attention": "math"}
    for cell in report["cells"][:2]:
        assert all(name in cell for name in RAN_FIELDS) and cell["steps_per_s"] > 0
        assert cell["memory_kind"] == "process RSS" and cell["peak_memory_bytes"] > 0
        assert cell["predicted_bytes"] is None and "full-size" in cell["prediction_note"]
    assert "no run-file key memory.not_yet_a_key" in by_label["not_yet_a_key=on"]["reason"]
    assert report["device"] == "cpu" and report["steps"] == 1 and report["load_average_start"] is not None


def test_gpu_report_runs_its_matrix_with_the_tiny_model_on_a_cpu(tmp_path):
    from engine.bench.gpu_report import ReportSize, gpu_report

    lines: list[str] = []
    report = gpu_report(tmp_path / "report", size=ReportSize("tiny", resolution=64, batch_sizes=(1,)),
                        steps=1, warmup=1, budget_s=None, progress=lines.append)
    cells = report["cells"]
    assert len(cells) == 16       # fp16/bf16 x sdpa/xformers x AdamW/AdamW8bit x checkpointing off/on
    ran = [c for c in cells if c["status"] == "ran"]
    assert ran and all(c["changes"]["memory.mixed_precision"] == "bf16" for c in ran)
    assert all(c["reason"] for c in cells if c["status"] == "skipped")
    assert all(name in c for c in ran for name in RAN_FIELDS)
    counted = [c for c in ran if not c["changes"]["memory.gradient_checkpointing"]]
    assert all(c["flops_per_sample"] > 0 and c["mfu"] is None and c["mfu_note"] == "n/a on a CPU" for c in counted)
    markdown = (tmp_path / "report" / "gpu-report.md").read_text()
    assert "| samples/s |" in markdown and "| MFU |" in markdown and "| planner predicts |" in markdown
    assert "## Not timed" in markdown and "fp16 needs a CUDA GPU" in markdown
    saved = json.loads((tmp_path / "report" / "gpu-report.json").read_text())
    assert saved["unet_parameters"] == report["unet_parameters"] and len(saved["cells"]) == 16
    assert sum("training 1 warm-up" in line for line in lines) == len(ran)


def test_the_budget_stops_cells_and_lists_them_as_not_run(tmp_path):
    from engine.bench.gpu_report import ReportSize, gpu_report

    axes = (("memory.mixed_precision", ("no", "fp16")), ("memory.gradient_checkpointing", (False, True)))
    report = gpu_report(tmp_path / "report", size=ReportSize("tiny", resolution=64, batch_sizes=(1,)),
                        steps=1, warmup=1, budget_s=0, axes=axes)
    statuses = {tuple(c["changes"].values()): (c["status"], c["reason"]) for c in report["cells"]}
    assert statuses[("no", False)] == ("not run", "past the time budget of 0 s")
    assert statuses[("no", True)][0] == "not run" and statuses[("fp16", False)][0] == "skipped"
    markdown = (tmp_path / "report" / "gpu-report.md").read_text()
    assert "No cell ran." in markdown and "past the time budget of 0 s" in markdown


def test_bench_warns_when_other_processes_keep_the_machine_busy(monkeypatch, capsys):
    import types

    import engine.busy as busy
    from engine.bench import commands as bench_commands

    busy_use = busy.OtherCpuUse(other_cores=1.6, cpus=2, window_s=0.5, load_average_1m=2.1)
    monkeypatch.setattr(busy, "measure_other_cpu_use", lambda window_s: busy_use)
    monkeypatch.setattr(busy.CpuUseWindow, "finish", lambda self: busy_use)
    monkeypatch.setattr(bench_commands, "plain_command", lambda args: 0)
    assert bench_commands.bench_command(types.SimpleNamespace(gpu_report=None, matrix=False, axis=None)) == 0
    err = capsys.readouterr().err
    assert err.count("warning: the machine was busy while measuring") == 2 and "1.6 of 2 CPUs" in err

    quiet = busy.OtherCpuUse(other_cores=0.05, cpus=2, window_s=0.5, load_average_1m=0.1)
    monkeypatch.setattr(busy, "measure_other_cpu_use", lambda window_s: quiet)
    monkeypatch.setattr(busy.CpuUseWindow, "finish", lambda self: quiet)
    bench_commands.bench_command(types.SimpleNamespace(gpu_report=None, matrix=False, axis=None))
    assert "busy" not in capsys.readouterr().err
