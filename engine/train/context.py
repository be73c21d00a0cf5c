"""What the step hooks see: the run's built parts and a read-only snapshot of one step.

Checkpointing, sampling, metrics, control polling and bench timing are hooks (see hooks.py);
none of them receives the Trainer. They read a :class:`StepContext`, made fresh by the loop
at each step boundary, and act through the parts (save a file, emit an event).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.events import Message
from engine.train.components import Components
from engine.train.optimizer_bundle import OptimizerBundle
from engine.train.saves.state import Counters
from engine.train.schedule import Schedule


class TrainingThreadSay:
    """``say(text, level)`` for the run: from the batch-loading thread (a tokenizer warning)
    a message waits until the training thread calls :meth:`flush`, so sinks are only ever
    called from one thread."""

    def __init__(self, sink):
        self.sink = sink
        self.pending: queue.SimpleQueue = queue.SimpleQueue()
        self.bind()

    def bind(self) -> None:
        """The calling thread is the training thread from now on."""
        self.thread = threading.get_ident()

    def __call__(self, text: str, level: str = "info") -> None:
        message = Message(level=level, text=text)
        if threading.get_ident() != self.thread:
            self.pending.put(message)
        else:
            self.sink.emit(message)

    def flush(self) -> None:
        while not self.pending.empty():
            self.sink.emit(self.pending.get())


class StopTraining(Exception):
    """Raised inside the loop when RunControl asks for a stop."""


@dataclass(frozen=True)
class RunParts:
    """Everything a run built in setup, fixed for the run."""
    cfg: Any                    # engine.config.schema.RunConfig
    config_text: str
    run_dir: Path
    sink: Any
    accelerator: Any
    precision: Any              # engine.train.precision.Precision
    components: Components
    bundle: OptimizerBundle
    data: Any                   # engine.data.pipeline.TrainingData
    schedule: Schedule
    watch: Any = None           # engine.train.divergence.DivergenceWatch (None in bench's bare loops)

    @property
    def device(self):
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def say(self, text: str, level: str = "info") -> None:
        self.sink.emit(Message(level=level, text=text))

    def trainables(self) -> dict:
        """The trained modules by state-file name, unwrapped from DDP."""
        out, c, b = {}, self.components, self.bundle
        if self.cfg.train.mode == "full":
            out["unet"] = self.accelerator.unwrap_model(b.unet)
        for role, module in b.text_encoders.items():   # "text_encoder" (and SDXL's "text_encoder_2")
            out[role] = self.accelerator.unwrap_model(module)
        if c.hypernetwork is not None:
            out["hypernetwork"] = c.hypernetwork
        return out


def event_epoch(epoch: int, batches_done: int) -> int:
    """The 1-based epoch of the last completed step, as the step lines number it: every event
    (step, saved, run_finished) reports this. ``epoch`` counts finished epochs, so mid-epoch it
    is one less than the epoch being trained."""
    if batches_done == 0 and epoch > 0:
        return epoch   # just after an epoch's end: its last step belongs to it
    return epoch + 1


@dataclass(frozen=True)
class StepContext:
    parts: RunParts
    step: int                   # optimizer steps done
    epoch: int                  # epochs finished
    batches_done: int           # micro-batches of the epoch in progress consumed
    seed: int
    loss_avg: float | None
    math_hash: str
    samples: int = 0            # samples in the step just taken
    figures: dict | None = None  # the logging interval's figures, on a logging step
    elapsed_s: float = 0.0

    @property
    def event_epoch(self) -> int:
        return event_epoch(self.epoch, self.batches_done)

    @property
    def total_steps(self) -> int:
        return self.parts.schedule.total_steps

    def counters(self, stopped: bool = False) -> Counters:
        return Counters(self.step, self.epoch, self.batches_done, self.seed, self.math_hash,
                        self.parts.data.fingerprint, self.loss_avg, stopped)


class StepHook:
    """Called by the loop at step and epoch boundaries; the defaults do nothing."""

    def on_step(self, ctx: StepContext) -> None:
        pass

    def on_epoch(self, ctx: StepContext) -> None:
        pass
