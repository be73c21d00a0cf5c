"""One engine run as the dashboard holds it: the handle the UI, the worker thread and
``run_dashboard`` share, and the real engine, imported only when a run starts."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from textual.message import Message

from engine.control import RunControl
from engine.vocabulary import ExitCode, RunStatus, exit_code_for

Engine = Callable[..., Any]   # run_training(config_path, *, sink, control, log_path=None) -> RunResult


@dataclass
class EngineHandle:
    """What the UI, the worker thread and ``run_dashboard`` share about one engine run.

    It outlives the screen: after the app has closed (a lost terminal), ``run_dashboard`` still
    waits on ``done`` so the process never exits in the middle of a save.
    """

    control: RunControl = field(default_factory=RunControl)
    log_path: Path | None = None
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    result: Any = None
    error: str | None = None
    error_traceback: str | None = None

    @property
    def running(self) -> bool:
        return self.started and not self.done.is_set()

    @property
    def status(self) -> str | None:
        if not self.done.is_set():
            return None
        if self.error is not None:
            return RunStatus.FAILED
        return getattr(self.result, "status", None) or RunStatus.COMPLETED

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.status) if self.done.is_set() else ExitCode.STOPPED


class EngineDone(Message):
    """The engine call returned (or raised); ``handle`` holds the outcome."""


def default_engine() -> Engine:
    """The real trainer, imported only when a run starts (it pulls in torch)."""
    from engine.runner import run_training

    return run_training


def run_folder_of(config_path) -> Path | None:
    """The run TOML's run folder, when the file can be read; the engine reports a broken TOML."""
    try:
        from engine.config.run_toml import load_run_config

        return Path(load_run_config(config_path).run_dir())
    except Exception:  # noqa: BLE001 - the engine will fail with the real message
        return None


def default_log_path(config_path) -> Path | None:
    """<run dir>/sdft.log (the trainer's default), when the run TOML can be read."""
    folder = run_folder_of(config_path)
    return folder / "sdft.log" if folder is not None else None


def cuda_total_memory() -> float | None:
    torch = sys.modules.get("torch")   # only if the engine already imported it
    try:
        if torch is not None and torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001
        pass
    return None
