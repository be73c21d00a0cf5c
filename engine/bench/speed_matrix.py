"""`sdft bench --matrix`: time a run file under each speed and memory option, one cell at a time.

Each cell is the run file with a few keys changed (engine.bench.speed_cells), trained by the real
Trainer for ``warmup + steps`` steps and timed by a step hook, as plain `sdft bench` times it. The
model is built or loaded once and each cell trains a fresh copy of it, so cells differ only in
what they change. Per cell: steps/s, samples/s, peak memory (CUDA: torch's peak allocated and
reserved bytes; CPU: the process's peak resident memory), the VRAM planner's prediction and its
error (CUDA, full-size SD U-Nets: the planner models those only), FLOPs per sample and the model
FLOP utilisation (engine.bench.gpu_peaks). A cell that cannot run here is skipped with the reason,
one that raises is listed as failed with the error, and with a time budget the cells that would
end past it are listed as not run.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from engine.bench import speed_cells
from engine.bench.speed import flops_per_sample, for_timing, run_timed
from engine.bench.speed_cells import Cell
from engine.control import RunControl
from engine.events import ListSink
from engine.train.trainer import Trainer


class ModelStore:
    """One base model kept pristine on the CPU; every cell trains a copy of its U-Net and text
    encoder (training, dtype casts, compiling and attention kernels change modules in place). The
    frozen VAE is shared: it only encodes the latent cache."""

    def __init__(self, model=None):
        self.model = model

    def fresh(self, load: Callable[[], object], device: torch.device):
        if self.model is None:
            self.model = load()
        m = self.model
        return dataclasses.replace(m, unet=copy_module(m.unet, device), report=list(m.report),
                                   text_encoder=copy_module(m.text_encoder, device))


def copy_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A deep copy of ``module`` whose weights are copied straight to ``device`` (no second CPU
    copy of a 3.4 GB U-Net on the way to the GPU)."""
    memo = {id(p): torch.nn.Parameter(p.detach().to(device, copy=True), requires_grad=p.requires_grad)
            for p in module.parameters()}
    memo.update({id(b): b.to(device, copy=True) for b in module.buffers()})
    return copy.deepcopy(module, memo)


class StoreTrainer(Trainer):
    """The Trainer, with its base model taken from a ModelStore instead of read again."""

    def __init__(self, config, *, store: ModelStore):
        super().__init__(config, config_text="", sink=ListSink(), control=RunControl())
        self.store = store

    def load_base(self, device: torch.device):
        from engine.train.components import noise_tables

        model = self.store.fresh(lambda: super(StoreTrainer, self).load_base(torch.device("cpu"))[0], device)
        return model, noise_tables(self.cfg.train, model, device, self.say)


class PeakMemory:
    """Peak memory while training: on CUDA torch's allocator peaks; on a CPU the process's
    resident memory, sampled every 20 ms by a thread."""

    def __init__(self, device: torch.device):
        self.device, self.peak_rss = device, 0
        self._done = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, name="bench-rss", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.peak_rss = max(self.peak_rss, process.memory_info().rss)
            if self._done.wait(0.02):
                return

    def __exit__(self, *exc):
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        return False

    def figures(self) -> dict:
        if self.device.type == "cuda":
            return {"memory_kind": "cuda", "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device),
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device)}
        return {"memory_kind": "process RSS", "peak_memory_bytes": self.peak_rss, "peak_reserved_bytes": None}


def planner_figures(config, unet, measured_reserved: int | None) -> dict:
    """The VRAM planner's prediction for the cell, and its error against torch's peak reserved
    memory (the planner's total less its CUDA-context allowance, which torch does not count)."""
    from engine.plan import N_UNET, PlanOptions, estimate_peak_vram

    options = PlanOptions.from_config(config)
    params = sum(p.numel() for p in unet.parameters())
    if abs(params / N_UNET[options.family] - 1.0) > 0.02:
        return {"predicted_bytes": None, "prediction_error": None,
                "prediction_note": f"the planner models full-size SD U-Nets; this one has {params / 1e6:.2f} M parameters"}
    estimate = estimate_peak_vram(options)
    figures = {"predicted_bytes": estimate.total_bytes, "prediction_error": None, "prediction_note": ""}
    if measured_reserved:
        figures["prediction_error"] = (estimate.total_bytes - options.ctx_bytes) / measured_reserved - 1.0
    else:
        figures["prediction_note"] = "no CUDA peak to compare with"
    return figures


class FlopsBook:
    """FLOPs per sample, counted once per batch size with torch's FLOP counter, in a cell whose
    kernels it can see: no checkpointing (MFU counts model FLOPs, not recomputation), no xformers
    (the counter does not know its kernels) and no torch.compile."""

    def __init__(self):
        self.per_batch: dict[int, float] = {}

    def flops(self, config, parts) -> float | None:
        batch = speed_cells.base_value(config, speed_cells.BATCH_KEY)
        m = config.memory
        countable = not m.gradient_checkpointing and m.attention != "xformers" and not getattr(m, "torch_compile", False)
        if batch not in self.per_batch and countable:
            self.per_batch[batch] = flops_per_sample(parts)
        return self.per_batch.get(batch)


def mfu_figures(config, device: torch.device, flops: float | None, samples_per_s: float) -> dict:
    from engine.bench.gpu_peaks import compute_dtype, peak_tflops

    if flops is None:
        return {"mfu": None, "mfu_note": "no FLOP count at this batch size (counted without checkpointing, "
                                          "xformers or compile)"}
    if device.type != "cuda":
        return {"mfu": None, "mfu_note": "n/a on a CPU"}
    m = config.memory
    dtype = compute_dtype(m.mixed_precision, m.full_bf16, m.allow_tf32)
    peak, what = peak_tflops(torch.cuda.get_device_name(device), dtype)
    if peak is None:
        return {"mfu": None, "mfu_note": what}
    return {"mfu": flops * samples_per_s / (peak * 1e12), "mfu_note": what}


def release(trainer) -> None:
    """Drop what the cell's Trainer holds (modules, optimizer, accelerator, compiled graphs)."""
    parts = getattr(trainer, "parts", None)
    if parts is not None:
        trainer.close()
        parts.accelerator.free_memory()
        if getattr(parts.cfg.memory, "torch_compile", False):
            torch._dynamo.reset()   # compiled graphs keep their module alive
    trainer.parts = trainer.checkpointer = None
    trainer.__dict__.pop("sampler", None)


@contextmanager
def survivors_frozen():
    """Freeze what outlives the cells for their time: the libraries' objects and the model store's
    model (half a million Python objects with the tiny model), which each full pass of the
    collector would otherwise walk, about 0.35 CPU seconds each on the 2-core bench machine, two
    passes a cell (collect_garbage and accelerate's ``free_memory``). What a cell leaves is
    collected as before; the frozen objects are handed back to the collector at the end."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def collect_garbage() -> None:
    """Free the last cell's memory (reference cycles too) before the next one is measured; on
    Linux hand freed heap pages back, so a CPU cell's resident peak is less its predecessors'."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass   # not glibc: resident memory stays as the allocator keeps it


def one_line(exc: BaseException) -> str:
    """An error as one table cell: its type and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def time_cell(config, store: ModelStore, book: FlopsBook, warmup: int) -> dict:
    """Train one cell's config and return its figures."""
    trainer = StoreTrainer(config, store=store)
    try:
        trainer.setup()
        device = trainer.parts.device
        with PeakMemory(device) as memory:
            timer = run_timed(trainer, warmup)
        figures = {"steps_per_s": timer.steps / timer.seconds, "samples_per_s": timer.samples / timer.seconds,
                   "timed_steps": timer.steps, "skipped_optimizer_steps": timer.skipped_steps, **memory.figures(),
                   **attention_figures(config, trainer)}
        figures.update(planner_figures(config, trainer.parts.bundle.unet, figures["peak_reserved_bytes"]))
        flops = book.flops(config, trainer.parts)
        figures["flops_per_sample"] = flops
        figures.update(mfu_figures(config, device, flops, figures["samples_per_s"]))
        return figures
    finally:
        release(trainer)


def attention_figures(config, trainer) -> dict:
    """The attention kernel that ran, and a note when it is not the one the cell asked for (xformers
    that failed its start-up call): its figures are then SDPA's, never labelled xformers."""
    asked, ran = config.memory.attention, trainer.parts.components.attention
    note = "" if ran == asked else (f"{asked} was asked for but could not run here: {ran} ran "
                                    "(the run's log says why)")
    return {"attention": ran, "attention_note": note}


def _load_average() -> float | None:
    import os

    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _result_line(cell: Cell) -> str:
    from engine.bench.speed_report import fmt_bytes

    f = cell.figures
    if cell.status != "ran":
        return f"{cell.status}: {cell.reason}"
    line = (f"{f['steps_per_s']:.3f} steps/s, {f['samples_per_s']:.2f} samples/s, "
            f"peak {fmt_bytes(f['peak_memory_bytes'])} ({f['memory_kind']})")
    if f.get("predicted_bytes"):
        line += f", planner {fmt_bytes(f['predicted_bytes'])}"
    return line + f" [{f['seconds']:.1f} s]"


@dataclasses.dataclass
class MatrixPlan:
    """What a matrix times: the run file, its axes, and how many steps per cell."""

    config_path: Path
    axes: tuple = speed_cells.MATRIX_AXES
    every_combination: bool = False
    steps: int = 5
    warmup: int = 2
    budget_s: float | None = None


def plan_cells(plan: MatrixPlan):
    """(cells, the run file's TOML data, its resolved config)."""
    from engine.config.run_toml import collect_run_text
    from engine.config.toml_text import read_config_text

    path = Path(plan.config_path)
    text, notes = read_config_text(path)
    base, document, problems = collect_run_text(text, file=str(path), base_dir=path.parent, notes=notes)
    problems.raise_if_errors()
    if plan.every_combination:
        return speed_cells.every_combination(plan.axes), document.unwrap(), base
    values = {key: speed_cells.base_value(base, key) for key, _values in plan.axes
              if speed_cells.schema_key_problem(key) is None}
    return speed_cells.one_at_a_time(plan.axes, values), document.unwrap(), base


def run_matrix(plan: MatrixPlan, *, progress: Callable[[str], None] | None = None, store: ModelStore | None = None,
               started: float | None = None, on_cell: Callable[[dict], None] | None = None) -> dict:
    """Time every cell of ``plan``; returns the report (JSON-ready). ``progress`` gets a line as each
    cell starts and ends; ``on_cell`` the report so far after each cell; ``started`` is when the
    budget's clock started (default: now)."""
    from engine.hardware import cuda_has_bf16, installed_packages

    started = time.perf_counter() if started is None else started
    say = progress or (lambda _text: None)
    cells, data, _base = plan_cells(plan)
    path, cuda, packages = Path(plan.config_path), torch.cuda.is_available(), installed_packages()
    bf16 = not cuda or cuda_has_bf16()
    store, book, longest = store or ModelStore(), FlopsBook(), 0.0
    report = {"device": device_name(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "run_file": str(path), "steps": plan.steps, "warmup": plan.warmup, "budget_s": plan.budget_s,
              "load_average_start": _load_average(), "cells": []}
    interrupted = False
    with survivors_frozen():   # between cells the collector walks only what a cell left
        for number, cell in enumerate(cells, 1):
            tag = f"[{number}/{len(cells)}] {cell.label}"
            reason = speed_cells.cell_problem(cell, cuda, packages, bf16)
            config = None
            if reason is None:
                config, reason = speed_cells.cell_config(data, cell, file=str(path), base_dir=path.parent)
            if interrupted:
                cell.status, cell.reason = "not run", "interrupted (Ctrl-C)"
            elif reason:
                cell.status, cell.reason = "skipped", reason
            elif plan.budget_s is not None and time.perf_counter() - started + longest > plan.budget_s:
                cell.status, cell.reason = "not run", f"past the time budget of {plan.budget_s:g} s"
            else:
                say(f"{tag}: training {plan.warmup} warm-up + {plan.steps} timed steps...")
                began = time.perf_counter()
                collect_garbage()
                try:
                    cell.figures = time_cell(for_timing(config, plan.steps, plan.warmup), store, book, plan.warmup)
                    cell.status = "ran"
                except KeyboardInterrupt:
                    cell.status, cell.reason, interrupted = "not run", "interrupted (Ctrl-C)", True
                except Exception as exc:  # noqa: BLE001 - a cell that fails is reported, the others still run
                    cell.status, cell.reason = "failed", one_line(exc)
                cell.figures["seconds"] = time.perf_counter() - began
                longest = max(longest, cell.figures["seconds"])
            say(f"{tag}: {_result_line(cell)}")
            report.update(cells=[c.as_dict() for c in cells[:number]], seconds=time.perf_counter() - started)
            if on_cell is not None:
                on_cell(report)
    report.update(cells=[c.as_dict() for c in cells], seconds=time.perf_counter() - started,
                  load_average_end=_load_average())
    return report
