"""The words the engine and its screens share: run phases, statuses and exit codes.

They are str and int enums, so events stay plain values: a member equals its string (or
number) and is written to events.jsonl as it. The trainer emits them, and the console, the
dashboard, ``sdft watch`` and the command line read them from here, so no side keeps a dialect
of its own (docs/architecture.md, the seam).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Phase(StrEnum):
    """A preparation phase before the first step (``PhaseProgress.name``)."""

    LOADING_MODEL = "loading model"
    CACHING_LATENTS = "caching latents"

    @property
    def label(self) -> str:
        return _PHASE_LABELS[self]


_PHASE_LABELS = {Phase.LOADING_MODEL: "loading the model", Phase.CACHING_LATENTS: "caching latents"}


def phase_label(name: str) -> str:
    """The words for a phase name; an unknown name (a newer engine's) is shown as it is."""
    try:
        return Phase(name).label
    except ValueError:
        return name


class ControlStatus(StrEnum):
    """Where a running run is (``StatusChanged.status``)."""

    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"


class ExitCode(IntEnum):
    """What every ``sdft`` command returns to the shell."""

    OK = 0
    FINDINGS = 1        # the command ran and found problems (failed images, health errors)
    USAGE = 2           # bad input: a run file, an option, a path
    FAILED = 3          # training failed
    BUSY = 4            # the run folder is in use by another live process (docs/run-folder.md)
    STOPPED = 130       # stopped by the user, as Ctrl+C in a shell


class RunStatus(StrEnum):
    """How a run ended (``RunFinished.status``, ``RunResult.status``)."""

    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def exit_code(self) -> ExitCode:
        return {RunStatus.COMPLETED: ExitCode.OK, RunStatus.STOPPED: ExitCode.STOPPED}.get(self, ExitCode.FAILED)


def exit_code_for(status: str | None) -> ExitCode:
    """The exit code of a run that ended with ``status``; a run with no status failed."""
    if status is None:
        return ExitCode.FAILED
    try:
        return RunStatus(status).exit_code
    except ValueError:
        return ExitCode.FAILED
