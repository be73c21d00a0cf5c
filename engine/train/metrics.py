"""Figures of a logging interval: loss, speed and memory, with one device sync per interval."""

from __future__ import annotations

import os
import time

import torch


class IntervalMeter:
    """Accumulates loss on the device; converts to Python numbers once per interval."""

    def __init__(self, step: int):
        self.restart_clock()
        self.start = time.perf_counter()
        self.loss_sum = None
        self.micro = 0
        self.samples = 0
        self.steps = 0
        self.grad_norm = None

    def restart_clock(self) -> None:
        self.clock = time.perf_counter()

    def add_micro(self, loss: torch.Tensor, samples: int) -> None:
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.micro += 1
        self.samples += samples

    def end_step(self, grad_norm) -> None:
        self.steps += 1
        self.grad_norm = grad_norm

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def collect(self) -> dict | None:
        if not self.steps:
            return None
        now = time.perf_counter()
        seconds = max(now - self.clock, 1e-9)
        out = {
            "loss": self.loss_sum / self.micro,
            "grad_norm": float(self.grad_norm) if self.grad_norm is not None else None,
            "steps": self.steps,
            "it_per_s": self.steps / seconds,
            "samples_per_s": self.samples / seconds,
        }
        self.loss_sum, self.micro, self.samples, self.steps, self.grad_norm = None, 0, 0, 0, None
        self.clock = now
        return out


SMOOTHING = 0.98   # per-step decay of the smoothed loss shown in logs and the dashboard


def interval_figures(meter: IntervalMeter, accelerator, loss_avg: float | None) -> tuple[dict | None, float | None]:
    """A logging interval's figures, the loss averaged over processes (the interval's one
    GPU->CPU sync), and the smoothed loss brought up to date."""
    m = meter.collect()
    if m is None:
        return None, loss_avg
    m["loss"] = accelerator.reduce(m["loss"].detach().float(), reduction="mean").item()
    decay = SMOOTHING ** m["steps"]
    loss_avg = m["loss"] if loss_avg is None else decay * loss_avg + (1 - decay) * m["loss"]
    return m, loss_avg


def device_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "vram_allocated": float(torch.cuda.memory_allocated(device)),
            "vram_reserved": float(torch.cuda.memory_reserved(device)),
            "vram_peak": float(torch.cuda.max_memory_allocated(device)),
            "vram_total": float(torch.cuda.get_device_properties(device).total_memory),
        }
    return {"ram_used": _process_rss(), "ram_total": _ram_total()}


def _ram_total() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _process_rss() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return float(pages * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return None
