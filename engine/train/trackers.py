"""TensorBoard and Weights & Biases logging: one more event sink, through accelerate's trackers.

``[logging] log_with`` picks the trackers; the sink turns the engine's plain-value events into
tracker calls, so the training loop knows nothing about them. Folders and names follow kohya's
sd-scripts, so existing dashboards and habits carry over:

* the log folder is ``<logging_dir>/<log_prefix><YYYYmmddHHMMSS>`` (local time, one per start);
  TensorBoard writes into ``<that>/<project>``, W&B into ``<that>/wandb/``;
* the project is ``log_tracker_name``, else ``"finetuning"`` (kohya's ``fine_tune.py``);
* ``wandb_run_name`` names the W&B run (W&B picks a name otherwise);
* ``logging_dir`` alone turns TensorBoard on; ``"all"`` means TensorBoard and W&B.

Unlike kohya, a relative ``logging_dir`` is relative to the run file, and a tracker without a
``logging_dir`` logs into ``<run folder>/logs``.

W&B without network: ``WANDB_MODE=offline`` writes the run to disk for a later ``wandb sync``.
Online, a machine without W&B credentials is refused before training (wandb would otherwise stop
at an interactive login prompt), and a W&B server that cannot be reached within wandb's
``init_timeout`` (90 s, ``WANDB_INIT_TIMEOUT``) gives a warning, and training goes on without it.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
import tomllib
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

from engine.config.problems import ConfigError, Problem
from engine.events import Event, Message, RunFinished, RunStarted, SampleSaved, StepMetrics, ValidationMetrics

DEFAULT_PROJECT = "finetuning"        # kohya's fine_tune.py tracker name
TRACKERS = ("tensorboard", "wandb")   # what log_with = "all" turns on (kohya: "TensorBoard and WandB")
OFFLINE_MODES = ("offline", "dryrun", "disabled")
GIB = 2**30
KEY = "logging.log_with"


@dataclass(frozen=True)
class TrackerPlan:
    """Which trackers a run logs to, and where."""

    names: tuple[str, ...]       # a subset of TRACKERS, in that order
    folder: Path                 # <logging_dir>/<log_prefix><timestamp>
    project: str
    wandb_run_name: str | None = None

    @property
    def tensorboard_dir(self) -> Path:
        return self.folder / self.project


def tracker_names(logging) -> tuple[str, ...]:
    """The trackers a [logging] table asks for (kohya: a logging_dir alone means TensorBoard)."""
    if logging.log_with is None:
        return ("tensorboard",) if logging.logging_dir else ()
    if logging.log_with == "all":
        return TRACKERS
    return (logging.log_with,)


def plan_trackers(config, now: float | None = None) -> TrackerPlan | None:
    """Where the trackers of a run write, or None when it logs to none."""
    logging = config.logging
    names = tracker_names(logging)
    if not names:
        return None
    if logging.logging_dir:
        base = Path(logging.logging_dir).expanduser()
        if not base.is_absolute():
            base = Path(config.base_dir) / base
    else:
        base = config.run_dir() / "logs"
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now))
    return TrackerPlan(names=names, folder=base / f"{logging.log_prefix or ''}{stamp}",
                       project=logging.log_tracker_name or DEFAULT_PROJECT,
                       wandb_run_name=logging.wandb_run_name)


def tracker_problems(config) -> list[Problem]:
    """What stops the chosen trackers from starting here: a missing package, or W&B online with
    no credentials (wandb would wait at a login prompt)."""
    problems = []
    names = tracker_names(config.logging)
    for name in names:
        if find_spec(name) is None:
            problems.append(Problem(
                KEY, f"logging to {name} needs the {name} package, which is not installed",
                hint=f'pip install {name}  (or pip install -e ".[{name}]")'))
    if "wandb" in names and find_spec("wandb") is not None and not _wandb_offline() and not _wandb_logged_in():
        problems.append(Problem(
            KEY, "W&B has no login on this machine",
            hint="run `wandb login` (or set WANDB_API_KEY); without network, set WANDB_MODE=offline "
                 "to log to disk and upload later with `wandb sync`"))
    return problems


def open_trackers(config, config_text: str, *, report: Callable[[Event], None] | None = None) -> TrackerSink | None:
    """The tracker sink of a run, or None when it logs to none; raises ConfigError when a chosen
    tracker cannot run here."""
    plan = plan_trackers(config)
    if plan is None:
        return None
    problems = tracker_problems(config)
    if problems:
        raise ConfigError([Problem(p.key, p.message, p.hint, config.source_path, None, p.severity)
                           for p in problems])
    return TrackerSink(plan, config_text, report=report)


def _wandb_offline() -> bool:
    disabled = os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes")
    return disabled or os.environ.get("WANDB_MODE", "").lower() in OFFLINE_MODES


def _wandb_logged_in() -> bool:
    import wandb

    with contextlib.redirect_stderr(io.StringIO()):   # wandb says where it found the key
        try:
            return bool(wandb.login(prompt=False, verify=False))
        except TypeError:     # a wandb without login(prompt=...): its own api_key lookup
            return bool(getattr(getattr(wandb, "api", None), "api_key", None))


class TrackerSink:
    """Receives the run's events and logs them to accelerate's tracker classes.

    The trackers start at RunStarted (the Accelerator exists by then) and finish at RunFinished,
    whatever the outcome; ``close()`` is safe to call again. A tracker that fails to start is
    reported as a warning through ``report`` and left out; training never stops for a tracker.
    """

    def __init__(self, plan: TrackerPlan, config_text: str, *, report: Callable[[Event], None] | None = None):
        self.plan = plan
        self.config_text = config_text
        self.report = report or (lambda event: None)
        self.trackers: dict = {}      # name -> started accelerate tracker
        self.started = False
        self.closed = False
        self._lock = threading.RLock()   # report() may send an event back through this sink

    # ------------------------------------------------------------------ events

    def emit(self, event: Event) -> None:
        with self._lock:
            if self.closed:
                return
            if isinstance(event, RunStarted):
                self._start(event.start_step)
            elif not self.trackers:
                pass
            elif isinstance(event, StepMetrics):
                self._log(step_values(event), event.step)
            elif isinstance(event, ValidationMetrics):
                self._log({f"validation/{name}": float(v) for name, v in event.figures.items()}, event.step)
            elif isinstance(event, SampleSaved):
                self._log_sample(event)
            if isinstance(event, RunFinished):
                self._close()

    def close(self) -> None:
        with self._lock:
            self._close()

    # ------------------------------------------------------------------ tracker calls

    def _start(self, step: int) -> None:
        if self.started:
            return
        self.started = True
        from accelerate import PartialState

        PartialState()   # accelerate's trackers log through its state-aware logger
        self.plan.folder.mkdir(parents=True, exist_ok=True)
        for name in self.plan.names:
            try:
                tracker = getattr(self, f"_start_{name}")()
            except Exception as exc:  # noqa: BLE001 - a tracker must never stop training
                self._warn(f"{name} logging is off for this run: it failed to start: {_one_line(exc)}"
                           + (" (without network, set WANDB_MODE=offline and upload later with `wandb sync`)"
                              if name == "wandb" else ""))
                continue
            self.trackers[name] = tracker
        if "tensorboard" in self.trackers:
            # Fenced, so TensorBoard's Markdown shows the file as it is (a "#" comment is no heading).
            self.trackers["tensorboard"].log({"config/run_toml": f"```toml\n{self.config_text}\n```"}, step=step)
        if "wandb" in self.trackers:
            self.trackers["wandb"].store_init_configuration({**_parsed(self.config_text),
                                                             "run_toml": self.config_text})

    def _start_tensorboard(self):
        from accelerate.tracking import TensorBoardTracker

        tracker = TensorBoardTracker(self.plan.project, self.plan.folder)
        tracker.main_process_only = False     # the sink exists on the main process only
        tracker.start()
        self._say(f"TensorBoard logs: {tracker.logging_dir} (view with: tensorboard --logdir {self.plan.folder.parent})")
        return tracker

    def _start_wandb(self):
        import wandb
        from accelerate.tracking import WandBTracker

        kwargs = {"dir": str(self.plan.folder),
                  # No console capture and no chatter: the console and the dashboard own the terminal.
                  "settings": wandb.Settings(console="off", silent=True)}
        if self.plan.wandb_run_name:
            kwargs["name"] = self.plan.wandb_run_name
        tracker = WandBTracker(self.plan.project, **kwargs)
        tracker.start()
        run = tracker.run
        what = f"W&B run {run.name!r}" if run.name else "W&B run"
        sync_dir = getattr(run.settings, "sync_dir", None)
        if _wandb_offline() and sync_dir:
            self._say(f"{what} logged offline in {sync_dir} (upload with: wandb sync {sync_dir})")
        else:
            self._say(f"{what} in project {self.plan.project!r}")
        return tracker

    def _log(self, values: dict, step: int) -> None:
        for tracker in self.trackers.values():
            tracker.log(values, step=step)

    def _log_sample(self, event: SampleSaved) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(event.path) as image:
            pixels = np.asarray(image.convert("RGB"))
        key = f"samples/{event.index}"
        if "tensorboard" in self.trackers:
            self.trackers["tensorboard"].log_images({key: pixels[None]}, step=event.step, dataformats="NHWC")
        if "wandb" in self.trackers:
            import wandb

            self.trackers["wandb"].log({key: wandb.Image(pixels, caption=event.prompt)}, step=event.step)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for name, tracker in self.trackers.items():
            try:
                tracker.finish()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the run's outcome
                self._warn(f"{name} logging did not close cleanly: {_one_line(exc)}")

    def _say(self, text: str) -> None:
        self.report(Message(level="info", text=text))

    def _warn(self, text: str) -> None:
        self.report(Message(level="warning", text=text))


def step_values(event: StepMetrics) -> dict[str, float]:
    """A logging interval's figures under tracker names (kohya's loss/lr names where it has them)."""
    values = {
        "loss/current": event.loss,
        "loss/average": event.loss_avg,
        "epoch": event.epoch,
        "speed/samples_per_s": event.samples_per_s,
        "speed/steps_per_s": event.it_per_s,
    }
    if event.lrs:
        values.update({f"lr/{group}": lr for group, lr in event.lrs.items()})
    else:   # an event written before per-group rates were recorded
        values["lr"] = event.lr
    if event.grad_norm is not None:
        values["norm/grad_norm"] = event.grad_norm
    for name in ("vram_allocated", "vram_reserved", "vram_peak", "ram_used"):
        value = getattr(event, name)
        if value is not None:
            values[f"memory/{name}_gib"] = value / GIB
    return values


def _parsed(config_text: str) -> dict:
    """The run file's tables as plain values (W&B shows them as the run's config)."""
    try:
        return tomllib.loads(config_text)
    except tomllib.TOMLDecodeError:
        return {}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
