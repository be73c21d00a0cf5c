"""Events from the engine to whoever watches a run, and the sinks that receive them.

Events are frozen dataclasses of plain values (numbers, strings, paths as strings),
never tensors, so one stream feeds the TUI, the console and ``events.jsonl`` alike. A sink that
fails is reported once and then skipped: a broken display
never stops training.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Callable, ClassVar, Iterable, Protocol, TypeVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_dir: str
    total_steps: int
    total_epochs: int
    steps_per_epoch: int
    num_images: int
    batch_size: int
    device: str
    start_step: int = 0
    model: str = ""
    attention: str = ""     # the attention kernel that runs (memory.attention, unless xformers fell back)
    processes: int = 1      # processes (GPUs) training together; batch_size is each one's
    global_batch: int = 0   # samples per optimizer step, all processes: batch x processes x accumulation

    @property
    def where(self) -> str:
        """The device, or the processes of a multi-GPU run: "cuda:0", "4 processes (cuda)"."""
        if self.processes <= 1:
            return self.device
        return f"{self.processes} processes ({self.device.split(':')[0]})"

    @property
    def batch_words(self) -> str:
        if self.processes <= 1:
            return f"batch {self.batch_size}"
        return f"batch {self.batch_size} each, {self.global_batch} per step"


@dataclass(frozen=True)
class Message(Event):
    kind: ClassVar[str] = "message"
    level: str              # "info" | "warning" | "error"
    text: str


@dataclass(frozen=True)
class PhaseProgress(Event):
    """Progress of a preparation phase (loading, latent caching, sampling)."""

    kind: ClassVar[str] = "phase"
    name: str
    done: int
    total: int


@dataclass(frozen=True)
class StepMetrics(Event):
    """One logging interval's figures (a single GPU sync per interval)."""

    kind: ClassVar[str] = "step"
    step: int
    total_steps: int
    epoch: int
    loss: float
    loss_avg: float
    lr: float
    grad_norm: float | None
    it_per_s: float
    samples_per_s: float
    eta_s: float
    elapsed_s: float
    vram_allocated: float | None = None   # bytes
    vram_reserved: float | None = None
    vram_peak: float | None = None
    vram_total: float | None = None
    ram_used: float | None = None
    ram_total: float | None = None
    # Learning rate of each parameter group by name ("unet", "text_encoder", "hypernetwork");
    # ``lr`` above is the first group's.
    lrs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepProgress(Event):
    """Where the run is, after each optimizer step that has no StepMetrics (no device sync:
    the dashboard's step, elapsed time and ETA move every step, the figures every interval)."""

    kind: ClassVar[str] = "progress"
    step: int
    total_steps: int
    epoch: int
    elapsed_s: float
    # at the last interval's speed (before the first interval: this start's mean); None in the
    # logs of older sdft versions
    eta_s: float | None = None


@dataclass(frozen=True)
class ValidationMetrics(Event):
    """Figures measured on held-out data at a step, by name (e.g. {"loss": 0.11}).

    Trackers log each one as ``validation/<name>``, so a new figure needs no change there.
    """

    kind: ClassVar[str] = "validation"
    step: int
    epoch: int
    figures: dict[str, float]


@dataclass(frozen=True)
class ModelSaved(Event):
    kind: ClassVar[str] = "saved"
    path: str
    what: str               # "model" | "state"
    step: int
    epoch: int


@dataclass(frozen=True)
class SampleSaved(Event):
    kind: ClassVar[str] = "sample"
    path: str
    prompt: str
    step: int
    index: int = 0          # the prompt's place in the prompt list


@dataclass(frozen=True)
class SampleGridSaved(Event):
    """One image of every prompt of a sampling point, after its single images."""

    kind: ClassVar[str] = "sample_grid"
    path: str
    step: int
    count: int              # how many prompts it shows


@dataclass(frozen=True)
class StatusChanged(Event):
    kind: ClassVar[str] = "status"
    status: str             # "running" | "paused" | "stopping"


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    status: str             # "completed" | "stopped" | "failed"
    step: int
    epoch: int
    message: str = ""
    model_path: str | None = None
    state_path: str | None = None
    out_of_memory: bool = False


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (RunStarted, Message, PhaseProgress, StepMetrics, StepProgress, ValidationMetrics, ModelSaved, SampleSaved,
                SampleGridSaved, StatusChanged, RunFinished)
}


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """Rebuild an event read from events.jsonl; unknown kinds (newer sdft) give None."""
    cls = EVENT_TYPES.get(data.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


def strict_json(value: object) -> object:
    """``value`` with every NaN or infinite float as None, so strict JSON readers take each line
    (a diverged run's last losses are such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


class JsonlSink:
    """Appends one JSON object per event to ``events.jsonl`` and flushes, so
    ``sdft watch`` and ``tail -f`` see each event at once.

    A log that ends in a partial line (a run killed mid-write) is cut back to its last whole
    line before appending, so the next event does not fuse with the fragment; ``repaired``
    says how many bytes went. If the file is deleted under a live run (its folder removed),
    ``on_gone`` is called once and the log starts again at its path.
    """

    def __init__(self, path: str | Path, on_gone: Callable[[], None] | None = None):
        self.path = Path(path)
        self.on_gone = on_gone
        self.repaired = _cut_partial_last_line(self.path)
        self._lock = threading.Lock()
        self._file = self._open()

    def _open(self) -> IO[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "a", encoding="utf-8")

    def emit(self, event: Event) -> None:
        line = json.dumps(strict_json(event.to_dict()), ensure_ascii=False, allow_nan=False)
        callback = None
        with self._lock:
            if self.on_gone is not None and os.fstat(self._file.fileno()).st_nlink == 0:
                callback, self.on_gone = self.on_gone, None
                self._file.close()
                self._file = self._open()
            self._file.write(line + "\n")
            self._file.flush()
        if callback is not None:
            callback()   # outside the lock: it may emit events itself

    def close(self) -> None:
        self._file.close()


def _cut_partial_last_line(path: Path) -> int:
    """Truncate ``path`` after its last newline; the number of bytes removed."""
    try:
        with open(path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return 0
            keep, block = 0, 65536
            position = size
            while position > 0:
                start = max(0, position - block)
                fh.seek(start)
                chunk = fh.read(position - start)
                index = chunk.rfind(b"\n")
                if index >= 0:
                    keep = start + index + 1
                    break
                position = start
            fh.truncate(keep)
            return size - keep
    except FileNotFoundError:
        return 0


class CallbackSink:
    def __init__(self, callback: Callable[[Event], None]):
        self.callback = callback

    def emit(self, event: Event) -> None:
        self.callback(event)


E = TypeVar("E", bound=Event)


class ListSink:
    """Keeps every event (tests, and the TUI's history)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, cls: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, cls)]


class FanOut:
    """Sends each event to every sink; a sink that raises is reported once, then dropped."""

    def __init__(self, sinks: Iterable[EventSink] = ()):
        self.sinks = list(sinks)

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        for sink in list(self.sinks):
            try:
                sink.emit(event)
            except Exception as exc:  # noqa: BLE001 - a display must never stop training
                self.sinks.remove(sink)
                print(f"sdft: event sink {type(sink).__name__} failed and was disabled: {exc!r}", file=sys.stderr)


def read_events(path: str | Path) -> list[Event]:
    """Every event of an events.jsonl (a half-written last line is skipped)."""
    out: list[Event] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            event = event_from_dict(json.loads(line))
        except json.JSONDecodeError:
            continue
        if event is not None:
            out.append(event)
    return out
