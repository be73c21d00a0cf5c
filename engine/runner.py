"""One entry point for a training run, shared by ``sdft train``, the wizard and the dashboard.

It reads the run TOML, writes the resolved copy into the run folder, wires the event
stream to ``events.jsonl`` and the caller's sink, runs the Trainer, and turns every
outcome (done, stopped, failed, out of memory) into a RunResult and a RunFinished event.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from engine import atomic
from engine.config import run_toml
from engine.control import RunControl
from engine.events import FanOut, JsonlSink, Message, RunFinished
from engine.run_log import append_to_log, library_output_to
from engine.threads import apply_thread_policy
from engine.train.distributed import is_distributed, is_main_process, use_local_gpu
from engine.train.trackers import open_trackers
from engine.vocabulary import RunStatus


@dataclass
class RunResult:
    status: str                      # "completed" | "stopped" | "failed"
    run_dir: str | None = None
    model_path: str | None = None
    state_path: str | None = None
    message: str = ""
    global_step: int = 0
    out_of_memory: bool = False
    log_path: str | None = None


def resolved_config_text(document, seed: int, source: Path) -> str:
    """The run TOML as run: the user's text with the seed filled in."""
    if document.get("train", {}).get("seed") is None:
        run_toml.set_value(document, "train.seed", seed)
    header = f"# Resolved copy of {source.resolve()} written by sdft; relative paths are relative to that file.\n"
    return header + run_toml.dump_document(document)


def run_training(config_path: str | Path, *, sink=None, control: RunControl | None = None,
                 log_path: str | Path | None = None, resume: str | None = None,
                 allow_changed: bool = False, restart: bool = False) -> RunResult:
    """Train as the run TOML says. Never raises for training failures: see the result.

    Configuration errors (:class:`~engine.config.problems.ConfigError`, among them a folder
    holding an earlier run when neither ``resume`` nor ``restart`` is given) and a run folder
    held by another live process (:class:`~engine.runlock.RunFolderBusy`) are raised, since
    nothing has started yet and the caller shows them (exit code 2 headless). ``restart``
    moves an earlier run in the folder aside (docs/run-folder.md, "Starting again").
    """
    from engine.quiet import quiet_libraries
    from engine.train.seeds import resolve_seed, seed_in_effect

    quiet_libraries()

    config_path = Path(config_path)
    use_local_gpu()
    config, document, warnings = run_toml.load_run_file(config_path)
    warnings = warnings + _preflight(config, resume, restart, allow_changed)
    control = control or RunControl()
    seed = seed_in_effect(config, resume)
    if seed is None and is_distributed():
        raise ValueError("train.seed must be set for multi-process training (every process needs the same seed)")
    config.train.seed = resolve_seed(seed)
    run_dir = config.run_dir()
    log_path = Path(log_path) if log_path else run_dir / "sdft.log"
    # RunFolderBusy is raised before the folder is touched; the libraries' warnings go to the log
    with _owner_of(run_dir) as lock, library_output_to(log_path):
        return _train_in(run_dir, config, document, warnings, config_path=config_path, sink=sink,
                         control=control, log_path=log_path, resume=resume, allow_changed=allow_changed,
                         took_over=lock.took_over if lock else None, restart=restart)


def _preflight(config, resume: str | None, restart: bool, allow_changed: bool) -> list:
    """What `sdft train --check` finds beyond the schema, before anything is cached or loaded:
    errors raise ConfigError; warnings are returned for the event log."""
    from engine.preflight.checks import preflight, raise_if_errors

    problems = preflight(config, resume=resume, restart=restart, allow_changed=allow_changed)
    raise_if_errors(problems)
    # the resume's notes (a data edit) are said by the trainer as it restores the state
    return [p for p in problems if p.severity == "warning" and p.key != "train.resume"]


def _folder_deleted(run_dir: Path, out: FanOut, control: RunControl) -> None:
    """The run folder was removed under a live run: stop, and say where the state goes."""
    control.request_stop("the run folder was deleted", save_state=True)
    out.emit(Message(level="error", text=f"the run folder {run_dir} was deleted while training; stopping at the "
                                         "next step. A resumable state is saved in a new folder at the same "
                                         "path (delete it again if you meant to discard the run)."))


def _owner_of(run_dir: Path):
    """The run folder's lock (engine/runlock.py); other processes of a multi-GPU run share
    the main process's ownership and take none."""
    from contextlib import nullcontext

    from engine.runlock import RunLock

    return RunLock(run_dir, "sdft train") if is_main_process() else nullcontext()


def _train_in(run_dir: Path, config, document, warnings, *, config_path: Path, sink, control: RunControl,
              log_path: Path, resume: str | None, allow_changed: bool, took_over, restart: bool = False) -> RunResult:
    """The run itself, with the folder held: events, the resolved config, the Trainer."""
    import torch

    from engine.train.divergence import Diverged
    from engine.train.trainer import StopTraining, Trainer

    text = resolved_config_text(document, config.train.seed, config_path)
    jsonl = trackers = None
    out = FanOut()
    earlier = None
    if is_main_process():  # other processes of a multi-GPU run stay silent and write nothing
        trackers = open_trackers(config, text)   # TensorBoard / W&B; ConfigError if one cannot run here
        run_dir.mkdir(parents=True, exist_ok=True)
        earlier = _keep_earlier_run(run_dir) if restart and not (resume or config.train.resume) else None
        events_path = run_dir / "events.jsonl"
        if not (resume or config.train.resume):
            events_path.unlink(missing_ok=True)  # a fresh run starts a fresh event log
        jsonl = JsonlSink(events_path, on_gone=lambda: _folder_deleted(run_dir, out, control))
        out = FanOut([jsonl] + ([sink] if sink is not None else []))
        for leftover in atomic.remove_leftovers(run_dir):
            out.emit(Message(level="warning", text=f"removed {leftover}, left by an interrupted save"))
        if jsonl.repaired:
            out.emit(Message(level="warning", text=f"{events_path} ended in a partial line ({jsonl.repaired} "
                                                   "bytes, from a run that was killed); it was cut off"))
        if trackers is not None:   # last, so its notes reach the others after the event they follow
            trackers.report = out.emit
            out.add(trackers)
        atomic.write_text(run_dir / "config.toml", text)
    if earlier is not None:
        out.emit(Message(level="info", text=f"started over: the earlier run is kept in {earlier}"))
    if took_over is not None:
        out.emit(Message(level="warning", text=f"took over {run_dir} from {took_over.describe()}, "
                                               "which ended without releasing it"))
    for problem in warnings:
        out.emit(Message(level="warning", text=str(problem)))
    threads = apply_thread_policy()    # before any torch work (engine/threads.py says why)
    if threads.changed:
        out.emit(Message(level="info", text=threads.describe()))
    trainer = Trainer(config, config_text=text, sink=out, control=control, resume=resume,
                      allow_changed=allow_changed)
    result = RunResult(status=RunStatus.FAILED, run_dir=str(run_dir), log_path=str(log_path))
    try:
        trainer.setup()
        result.status = trainer.run()
        result.message = "training finished" if result.status == RunStatus.COMPLETED else control.stop_reason
    except StopTraining as exc:   # stopped while preparing: no step was taken, so there is no state to save
        said = str(exc) if str(exc) != control.stop_reason else ""   # e.g. what caching kept
        result.status, result.message = RunStatus.STOPPED, said or f"{control.stop_reason} before training started"
    except KeyboardInterrupt:
        result.status, result.message = RunStatus.STOPPED, "interrupted"
    except Diverged as exc:   # nothing is written after it: the weights are not finite
        result.message = f"{exc} {_after_divergence(run_dir, config, config_path, exc.first_step)}"
        append_to_log(log_path, traceback.format_exc())
    except Exception as exc:  # noqa: BLE001 - every failure becomes a clear result
        result.out_of_memory = isinstance(exc, torch.cuda.OutOfMemoryError)
        result.message = _describe(exc, result.out_of_memory)
        if result.out_of_memory:
            torch.cuda.empty_cache()  # room to copy the state out
        saved = trainer.save_after_failure()
        if saved:
            result.message += f" (the last completed step is saved: sdft train {config_path} --resume {saved})"
        elif isinstance(exc, atomic.WriteFailed):
            result.message += f"; {_what_was_kept(trainer, config)}"
        append_to_log(log_path, traceback.format_exc())
    trainer.close()
    result.model_path = trainer.last_model_path
    result.state_path = trainer.last_state_path
    result.global_step = trainer.global_step
    out.emit(RunFinished(status=result.status, step=trainer.global_step, epoch=trainer.event_epoch,
                         message=result.message, model_path=result.model_path,
                         state_path=result.state_path, out_of_memory=result.out_of_memory))
    if jsonl is not None:
        jsonl.close()
    if trackers is not None:
        trackers.close()   # also when its sink was dropped after an error
    return result


def _keep_earlier_run(run_dir: Path) -> Path | None:
    """--restart: the earlier run moved aside, before the new one writes (engine/run_history.py)."""
    from engine.run_history import move_aside, run_history

    return move_aside(run_dir) if run_history(run_dir) is not None else None


def _what_was_kept(trainer, config) -> str:
    """After a failed write: what the user still has, so they know what a retry costs."""
    from engine.train.saves.state import read_counters

    if trainer.last_state_path:
        try:
            step = read_counters(Path(trainer.last_state_path)).global_step
        except (OSError, ValueError, TypeError):
            step = "?"
        return f"kept: the last state is step {step} in {trainer.last_state_path}"
    if trainer.global_step == 0 and config.cache.latents == "disk":
        return "kept: the latents cached so far; the next run reuses them"
    return "no resumable state had been written, so the run starts over after you free some space"


def _after_divergence(run_dir: Path, config, config_path: Path, first_bad: int | None) -> str:
    """Where a diverged run can go on from: its newest state before the first bad step."""
    from engine.train.saves.state import read_counters

    good = []
    for folder in (run_dir / "state").glob("*-state"):
        try:
            step = read_counters(folder).global_step
        except (OSError, ValueError, TypeError):
            continue
        if first_bad is None or step < first_bad:
            good.append((step, folder))
    if not good:
        return "No state from before it exists: lower optimizer.learning_rate and start again."
    step, folder = max(good)
    return (f"The last good state is step {step}: lower optimizer.learning_rate, then "
            f"sdft train {config_path} --resume {folder} --allow-changed")


def _describe(exc: BaseException, out_of_memory: bool) -> str:
    if out_of_memory:
        from engine.oom_advice import oom_message

        return oom_message()
    text = str(exc) or type(exc).__name__
    plain = (ValueError, RuntimeError, atomic.WriteFailed)   # their text says it all
    return text if isinstance(exc, plain) else f"{type(exc).__name__}: {text}"
