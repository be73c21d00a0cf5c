"""`sdft bench --gpu-smoke OUT_DIR`: does training work on this GPU, as sdft offers it?

A random-weight SD 1.5-size model (built in memory, as for --gpu-report) trains a few dozen steps
in each precision sdft offers (fp16, bf16, full_bf16 with stochastic rounding) with AdamW,
AdamW8bit and Adafactor, the fused backward pass off and on (fp16 cannot fuse: refused by the run
file's check). Each cell passes three checks:
- every logged loss is finite;
- the weights moved: at least ``MOVED_SHARE`` of the U-Net's values differ from where they began
  (bf16 weights rounded to nearest would fail this at a fine-tune learning rate);
- the peak GPU memory is within ``PLANNER_TOLERANCE`` of the VRAM planner's prediction.
OUT_DIR gets gpu-smoke.md and gpu-smoke.json, rewritten after every cell; the exit code is 1 when
any check failed. On a CPU the same code runs with the tiny model (the tests do): the planner
check is then "n/a", it models full-size GPUs only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = {
    "fp16": {"memory.mixed_precision": "fp16"},
    "bf16": {"memory.mixed_precision": "bf16"},
    "full_bf16": {"memory.mixed_precision": "bf16", "memory.full_bf16": True},
}
OPTIMIZERS = ("AdamW", "AdamW8bit", "Adafactor")
MOVED_SHARE = 0.10
PLANNER_TOLERANCE = 0.10


@dataclass
class SmokeCell:
    precision: str
    optimizer: str
    fused: bool
    status: str = "not run"
    reason: str = ""
    figures: dict | None = None
    checks: dict | None = None    # check name -> True / False / None (n/a)

    @property
    def label(self) -> str:
        return f"{self.precision} {self.optimizer}" + (" fused" if self.fused else "")

    @property
    def changes(self) -> dict:
        return {**PRECISIONS[self.precision], "optimizer.type": self.optimizer,
                "memory.fused_backward_pass": self.fused, "memory.gradient_checkpointing": True}

    def as_dict(self) -> dict:
        return {"label": self.label, "precision": self.precision, "optimizer": self.optimizer, "fused": self.fused,
                "status": self.status, "reason": self.reason, "figures": self.figures or {},
                "checks": self.checks or {}}


def smoke_cells() -> list[SmokeCell]:
    return [SmokeCell(precision, optimizer, fused) for fused in (False, True) for precision in PRECISIONS
            for optimizer in OPTIMIZERS if not (fused and precision == "fp16")]


def moved_share(start, trained) -> float:
    """The share of ``trained``'s values that differ from ``start``'s (compared in the trained dtype)."""
    import torch

    changed = total = 0
    with torch.no_grad():
        for (_name, a), (_same, b) in zip(start.named_parameters(), trained.named_parameters(), strict=True):
            before = a.detach().to(b.device, b.dtype)
            changed += int((before != b.detach()).sum())
            total += b.numel()
    return changed / max(total, 1)


def check_cell(losses: list[float], moved: float, prediction_error: float | None) -> dict:
    return {"losses finite": bool(losses) and all(math.isfinite(v) for v in losses),
            f"weights moved (>= {MOVED_SHARE:.0%})": moved >= MOVED_SHARE,
            f"peak within {PLANNER_TOLERANCE:.0%} of the planner":
                None if prediction_error is None else abs(prediction_error) <= PLANNER_TOLERANCE}


def run_cell(config, store) -> tuple[dict, dict]:
    """Train one cell from the store's pristine model: its figures and its checks."""
    from engine.bench.speed import run_timed
    from engine.bench.speed_matrix import PeakMemory, StoreTrainer, planner_figures, release
    from engine.events import StepMetrics

    trainer = StoreTrainer(config, store=store)
    try:
        trainer.setup()
        with PeakMemory(trainer.parts.device) as memory:
            timer = run_timed(trainer, 0)
        losses = [e.loss for e in trainer.sink.of(StepMetrics)]
        unet = trainer.parts.accelerator.unwrap_model(trainer.parts.bundle.unet)
        figures = {"steps": timer.steps, "seconds": timer.seconds, "losses": losses,
                   "moved_share": moved_share(store.model.unet, unet), **memory.figures()}
        figures.update(planner_figures(config, unet, figures["peak_reserved_bytes"]))
        return figures, check_cell(losses, figures["moved_share"], figures.get("prediction_error"))
    finally:
        release(trainer)


def gpu_smoke(out_dir: str | Path, *, model: str = "sd1", resolution: int = 512, steps: int = 30,
              learning_rate: float = 1e-5, budget_s: float | None = 400.0, started: float | None = None,
              progress=None) -> dict:
    """Run every smoke cell within ``budget_s`` (counted from ``started``, default now); write
    OUT_DIR/gpu-smoke.md and .json after each; returns the report."""
    import torch

    from engine.bench.gpu_report import MODEL_LABELS, ReportSize, random_model, write_report_run
    from engine.bench.speed_cells import Cell, cell_config, cell_problem
    from engine.bench.speed_matrix import ModelStore, collect_garbage, device_name, one_line, survivors_frozen
    from engine.hardware import cuda_has_bf16, installed_packages

    started = time.perf_counter() if started is None else started
    say = progress or (lambda _text: None)
    out = Path(out_dir)
    run_file = write_report_run(out / "work", ReportSize(model=model, resolution=resolution), 4)
    data = _smoke_toml(run_file, steps, learning_rate)
    say(f"sdft bench --gpu-smoke: building a random-weight {MODEL_LABELS[model]} model (no download)...")
    store = ModelStore(random_model(model))
    cuda, packages, longest = torch.cuda.is_available(), installed_packages(), 0.0
    bf16 = not cuda or cuda_has_bf16()
    cells = smoke_cells()
    report = {"report": "sdft bench --gpu-smoke", "device": device_name(), "torch": torch.__version__,
              "model": MODEL_LABELS[model], "resolution": resolution, "steps": steps, "learning_rate": learning_rate,
              "budget_s": budget_s, "cells": []}
    with survivors_frozen():   # between cells the collector walks only what a cell left
        for number, cell in enumerate(cells, 1):
            reason = cell_problem(Cell(cell.changes), cuda, packages, bf16)
            config = None
            if reason is None:
                config, reason = cell_config(data, Cell(cell.changes), file=str(run_file), base_dir=run_file.parent)
            began = time.perf_counter()
            if reason:
                cell.status, cell.reason = "skipped", reason
            elif budget_s is not None and began - started + longest > budget_s:
                cell.status, cell.reason = "not run", f"past the time budget of {budget_s:g} s"
            else:
                say(f"[{number}/{len(cells)}] {cell.label}: training {steps} steps...")
                collect_garbage()
                try:
                    cell.figures, cell.checks = run_cell(config, store)
                    cell.status = "passed" if all(v is not False for v in cell.checks.values()) else "FAILED"
                except Exception as exc:  # noqa: BLE001 - a cell that raises is reported; the others still run
                    cell.status, cell.reason = "error", one_line(exc)
                longest = max(longest, time.perf_counter() - began)
            say(f"[{number}/{len(cells)}] {cell.label}: {cell.status}{': ' + cell.reason if cell.reason else ''}")
            report.update(cells=[c.as_dict() for c in cells], seconds=time.perf_counter() - started)
            write_smoke_outputs(out, report)
    return report


def _smoke_toml(run_file: Path, steps: int, learning_rate: float) -> dict:
    """The report's run file as TOML data, set for a smoke run: ``steps`` steps, every loss logged."""
    import tomllib

    data = tomllib.loads(run_file.read_text(encoding="utf-8"))
    data["train"].update(max_train_steps=steps)
    data["optimizer"].update(learning_rate=learning_rate)
    data["logging"] = {"every_n_steps": 1}
    return data


def smoke_failed(report: dict) -> bool:
    return any(c["status"] in ("FAILED", "error") for c in report["cells"])


def write_smoke_outputs(out: Path, report: dict) -> tuple[Path, Path]:
    from engine import atomic
    from engine.bench.speed_report import write_json

    md_path = out / "gpu-smoke.md"
    atomic.write_text(md_path, smoke_markdown(report))
    return md_path, write_json(report, out / "gpu-smoke.json")


def smoke_markdown(report: dict) -> str:
    from engine.bench.speed_report import fmt_bytes

    def mark(value) -> str:
        return "n/a" if value is None else ("yes" if value else "**no**")

    lines = ["# sdft GPU smoke run", "",
             f"- device: {report['device']}; torch {report['torch']}; random-weight {report['model']}, "
             f"{report['resolution']}x{report['resolution']}, batch 1, gradient checkpointing, {report['steps']} "
             f"steps at lr {report['learning_rate']:g}",
             "- command: `sdft bench --gpu-smoke OUT_DIR`", "",
             "| cell | result | losses finite | weights moved | peak | planner | planner error |",
             "|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        f, checks = cell["figures"], list(cell["checks"].values()) or [None, None, None]
        if not f:
            lines.append(f"| {cell['label']} | {cell['status']}: {cell['reason']} | | | | | |")
            continue
        error = f.get("prediction_error")
        lines.append(f"| {cell['label']} | {cell['status']} | {mark(checks[0])} | {mark(checks[1])} "
                     f"({f['moved_share']:.0%}) | {fmt_bytes(f.get('peak_reserved_bytes') or f.get('peak_memory_bytes'))} "
                     f"| {fmt_bytes(f.get('predicted_bytes'))} | "
                     f"{'n/a' if error is None else f'{error * 100:+.1f}%'} |")
    return "\n".join(lines) + "\n"
