"""The fault suite: a run survives being killed, stopped, starved of disk or fed damaged files.

Each case hurts a tiny run, resumes it (``sdft train RUN.toml --resume latest``, as a real
process wherever a process is killed) and compares, bit for bit, every per-step loss in its
events.jsonl and the final model's weights with a straight run of the same file. Each case
records whether it survived (the resumed run completed) and whether its losses and weights
were equal; tests/conftest.py prints the totals as one line at the end of the session.

Run it alone with ``pytest -m fault -n 2``.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import forked_sdft
import pytest
import torch
from safetensors.torch import load_file
from test_write_failures import inject_disk_full
from train_helpers import make_run

from engine.control import RunControl
from engine.events import CallbackSink
from engine.runner import run_training

pytestmark = [pytest.mark.slow, pytest.mark.fault]

STEPS = 12   # 3 steps per epoch with the helper's 6 images: the run crosses three epoch boundaries
SAVE = "every_n_steps = 1\nstate = true\nlast_n_states = 3\n"
SAMPLES = '[sample]\nevery_n_steps = 2\nprompts = ["a cat --w 64 --h 64 --s 1"]\n'
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RUN_DIR = ("runs", "t")
STOPPED = 130

# Steps at which a run is SIGKILLed, drawn from a fixed seed: the same steps every time. The
# stop signals follow each kill (a stopped run takes one more step), all before the last step.
def _draw_kill_steps(seed: int = 1607) -> tuple[int, int]:
    draw = random.Random(seed)
    first = draw.choice((2, 3))
    return first, first + 3 + draw.choice((0, 1))


KILL_STEPS = _draw_kill_steps()

# A child `sdft train` whose writer kills its own process, with SIGKILL, in the middle of
# one save: the bytes written so far stay in the temporary file; the rename never happens.
# "events.jsonl:step N" instead kills it halfway through writing step N's line of the log.
KILL_INSIDE_WRITE = """
import json, os, signal, sys
import safetensors.torch
from engine import events
from engine.train.saves import state

needle = os.environ["SDFT_FAULT_KILL_WRITING"]

if needle.startswith("events.jsonl:step "):
    step, emit = int(needle.rsplit(" ", 1)[1]), events.JsonlSink.emit

    def emit_half(self, event):
        if event.kind == "step" and event.step == step:
            line = json.dumps(event.to_dict(), ensure_ascii=False)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return emit(self, event)

    events.JsonlSink.emit = emit_half

def killing(original):
    def save_file(tensors, filename, *args, **kwargs):
        if needle in str(filename):
            original(tensors, filename, *args, **kwargs)
            with open(filename, "r+b") as fh:
                fh.truncate(os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(tensors, filename, *args, **kwargs)
    return save_file

safetensors.torch.save_file = killing(safetensors.torch.save_file)
state.save_file = killing(state.save_file)
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ------------------------------------------------------------------ what a run left behind


def logged_losses(events: Path, offset: int = 0) -> list[tuple[int, float]]:
    """The step events written after ``offset`` bytes of the log, in order. A resumed run logs
    again the steps after its state, so a step may appear more than once: each copy must match."""
    if not events.exists():
        return []
    with open(events, "rb") as fh:
        fh.seek(offset)
        lines = fh.read().decode("utf-8", "replace").splitlines()
    out = []
    for line in lines:
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue   # a line cut by a kill
        if data.get("event") == "step":
            out.append((data["step"], data["loss"]))
    return out


def whole_lines_size(events: Path) -> int:
    """Where the next process's events will start: after the last whole line (a partial line
    left by a kill is cut off before the next run appends)."""
    data = events.read_bytes() if events.exists() else b""
    return data.rfind(b"\n") + 1


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "t.safetensors"))


def loss_differences(logged: list[tuple[int, float]], straight: dict) -> list[str]:
    expected = straight["losses"]
    return [f"step {s}: loss {loss!r}, straight {expected.get(s)!r}" for s, loss in logged if loss != expected.get(s)]


def differences(run_dir: Path, straight: dict) -> list[str]:
    """What differs from the straight run, bit for bit: every logged loss, the steps logged,
    the final model's tensors. Empty when the runs agree."""
    logged = logged_losses(run_dir / "events.jsonl")
    problems = loss_differences(logged, straight)
    if {s for s, _ in logged} != set(straight["losses"]):
        problems.append(f"steps logged {sorted({s for s, _ in logged})}, expected 1..{len(straight['losses'])}")
    if not (run_dir / "checkpoints" / "t.safetensors").is_file():
        return problems + ["no final model"]
    weights, reference = final_weights(run_dir), straight["weights"]
    if set(weights) != set(reference):
        problems.append("the final model holds other tensors")
    problems += [f"weight {k} differs" for k, v in weights.items()
                 if k in reference and not (v.dtype == reference[k].dtype and torch.equal(v, reference[k]))]
    return problems


def leftovers(run_dir: Path) -> list[Path]:
    """Temporary files and folders of interrupted saves still in the run folder."""
    return [p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".old"))]


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, tiny_sd1):
    """The reference: a straight, uninterrupted run of a case's file (one per file text)."""
    done: dict[str, dict] = {}

    def run(config: Path) -> dict:
        text = config.read_text()
        if text not in done:
            folder = tmp_path_factory.mktemp("straight")
            make_run(folder, tiny_sd1)       # the same images and captions
            copy = folder / config.name
            copy.write_text(text)
            result = run_training(copy)
            assert result.status == "completed", result.message
            run_dir = folder.joinpath(*RUN_DIR)
            done[text] = {"losses": dict(logged_losses(run_dir / "events.jsonl")), "weights": final_weights(run_dir)}
            assert sorted(done[text]["losses"]) == list(range(1, STEPS + 1))
        return done[text]

    return run


class Cases:
    """The outcome of each fault of a test: survived (the run resumed and went on as planned)
    and equal (its losses, and at the end its weights, bit for bit those of the straight run)."""

    def __init__(self, record_property, straight_run):
        self.record_property, self.straight_run = record_property, straight_run
        self.rows: list[dict] = []
        self.details: list[str] = []

    def add(self, name: str, survived: bool, problems: list[str], details: str = "") -> None:
        self.rows.append({"name": name, "survived": survived, "equal": survived and not problems})
        if not survived or problems:
            self.details.append(f"{name}: survived={survived} {problems[:5]}\n{details[-3000:]}")

    def finish(self, name: str, config: Path, survived: bool, details: str = "") -> None:
        """One fault, then a resume that ran to the end: compare the whole run folder."""
        run_dir = config.parent.joinpath(*RUN_DIR)
        problems = differences(run_dir, self.straight_run(config)) if survived else ["did not resume and complete"]
        problems += [f"left {path}" for path in leftovers(run_dir)]
        self.add(name, survived, problems, details)
        self.check()

    def check(self) -> None:
        self.record_property("fault_cases", self.rows)
        assert not self.details, "\n".join(self.details)


@pytest.fixture()
def cases(record_property, straight_run):
    return Cases(record_property, straight_run)


# ------------------------------------------------------------------ real processes


@dataclass
class Fault:
    name: str
    exit_code: int
    signum: int | None = None          # sent once step ``at_step`` is logged ...
    at_step: int | None = None
    kill_writing: str | None = None    # ... or the process kills itself while writing this file


def start(config: Path, *args: str, kill_writing: str | None = None) -> forked_sdft.ForkedProcess:
    """`sdft train CONFIG ARGS` as a real process of its own, forked from a server that imported
    the libraries once (tests/forked_sdft.py): killed, signalled and resumed as any other."""
    env = {**ENV, "SDFT_FAULT_KILL_WRITING": kill_writing} if kill_writing else ENV
    return forked_sdft.start(["train", str(config), *args], code=KILL_INSIDE_WRITE if kill_writing else None,
                             env=env, stdout=forked_sdft.PIPE, stderr=forked_sdft.STDOUT)


def wait_for_step(process: forked_sdft.ForkedProcess, events: Path, step: int, offset: int) -> bool:
    """Block until the log has a step event for ``step`` written after ``offset`` bytes;
    False when the process ended first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if any(s == step for s, _ in logged_losses(events, offset)):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def run_chain(config: Path, faults: list[Fault], cases: Cases) -> None:
    """Each fault hits the process resumed after the one before; the last resume runs to the
    end. A fault survived when the next process resumed from a state, removed what the fault
    left behind and went on as planned; the losses that process logged must equal the straight
    run's, and after the last resume the whole log and the final model must."""
    run_dir = config.parent.joinpath(*RUN_DIR)
    events = run_dir / "events.jsonl"
    straight = cases.straight_run(config)
    notices: list[str] = []
    resume_from = ""
    for number in range(len(faults) + 1):
        fault = faults[number] if number < len(faults) else None
        offset = whole_lines_size(events)
        process = start(config, *(["--resume", "latest"] if number else []),
                        kill_writing=fault.kill_writing if fault else None)
        reached = True
        if fault is not None and fault.signum is not None:
            reached = wait_for_step(process, events, fault.at_step, offset)
            if reached:
                process.send_signal(fault.signum)
        output, _ = process.communicate(timeout=300)
        planned = fault.exit_code if fault else 0
        went_on = reached and process.returncode == planned
        if number:
            resumed = f"resumed from {resume_from}" in output
            cleaned = all(notice in output for notice in notices)
            survived = went_on and resumed and cleaned
            if fault is None:
                cases.finish(faults[-1].name, config, survived, output)
                return
            cases.add(faults[number - 1].name, survived, loss_differences(logged_losses(events, offset), straight),
                      output)
        if not went_on:   # the chain cannot go on: its later faults count as not survived
            for rest in faults[number:]:
                cases.add(rest.name, False, [f"not reached: the process before exited {process.returncode}, "
                                             f"planned {planned}"], output)
            cases.check()
        resume_from = ""   # after a kill, any state; after a stop signal, the one the stop wrote
        if fault.signum in STOP_SIGNALS:
            said = re.search(r"stopped at step \d+; resume with: .* --resume (\S+)", output)
            assert f"{fault.signum.name}: stopping at the next step" in output and said, output
            resume_from = said.group(1)
        # What the next process must say it repaired: each leftover temporary file, a cut log line.
        notices = [f"removed {path}, left by an interrupted save" for path in leftovers(run_dir)]
        if fault.kill_writing and fault.kill_writing.startswith("events.jsonl"):
            assert not events.read_bytes().endswith(b"\n"), "the kill leaves half a line in the log"
            notices.append(f"{events} ended in a partial line")
        elif fault.kill_writing:
            assert notices, f"a kill while writing {fault.kill_writing} leaves its temporary file"


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def test_kills_and_stop_signals_at_seeded_steps_each_then_resume(tmp_path, tiny_sd1, cases):
    first, second = KILL_STEPS
    run_chain(make_run(tmp_path, tiny_sd1, steps=STEPS, save_extra=SAVE), [
        Fault(f"SIGKILL at step {first}", -signal.SIGKILL, signal.SIGKILL, first),
        Fault("SIGTERM", STOPPED, signal.SIGTERM, first + 1),
        Fault(f"SIGKILL at step {second}", -signal.SIGKILL, signal.SIGKILL, second),
        Fault("SIGINT", STOPPED, signal.SIGINT, second + 1),
        Fault("SIGHUP", STOPPED, signal.SIGHUP, second + 3),
    ], cases)


def test_kills_while_saving_a_model_a_state_and_logging_a_step_then_resume(tmp_path, tiny_sd1, cases):
    run_chain(make_run(tmp_path, tiny_sd1, steps=STEPS, save_extra=SAVE), [
        Fault("SIGKILL during a model save", -signal.SIGKILL, kill_writing="checkpoints/.t-step00000003.safetensors."),
        Fault("SIGKILL during a state save", -signal.SIGKILL, kill_writing="t-step00000005-state.tmp/unet.safetensors"),
        Fault("SIGKILL while logging a step", -signal.SIGKILL, kill_writing="events.jsonl:step 9"),
    ], cases)


# ------------------------------------------------------------------ in this process


DISK_FULL_AT = {
    "model save": ("", lambda path, _calls: "/checkpoints/.t-step00000003.safetensors." in path),
    "state save": ("", lambda path, _calls: "t-step00000003-state" in path and path.endswith("optimizer.pt")),
    "sample image": (SAMPLES, lambda path, _calls: "/samples/" in path and "_s00000004_" in path),
}


@pytest.mark.parametrize("site", list(DISK_FULL_AT))
def test_a_full_disk_at_a_write_site_then_resume(tmp_path, tiny_sd1, cases, monkeypatch, site):
    extra, fails = DISK_FULL_AT[site]
    config = make_run(tmp_path, tiny_sd1, steps=STEPS, save_extra=SAVE + extra)
    inject_disk_full(monkeypatch, fails)
    failed = run_training(config)
    assert failed.status == "failed" and "could not write" in failed.message, failed.message
    monkeypatch.undo()
    result = run_training(config, resume="latest")
    cases.finish(f"disk full during a {site}", config, result.status == "completed", result.message)


def test_a_full_disk_while_caching_latents_then_rerun(tmp_path, tiny_sd1, cases, monkeypatch):
    config = make_run(tmp_path, tiny_sd1, steps=STEPS, save_extra=SAVE)
    cache_writes = []

    def third_cache_write(path, _calls):
        if ".latent-cache" in path:
            cache_writes.append(path)
            return len(cache_writes) == 3
        return False

    inject_disk_full(monkeypatch, third_cache_write)
    failed = run_training(config)
    assert failed.status == "failed" and ".latent-cache" in failed.message, failed.message
    monkeypatch.undo()
    result = run_training(config)   # nothing was trained, so there is no state: the run starts again
    cases.finish("disk full while caching latents", config, result.status == "completed", result.message)


def stop_at(step: int) -> tuple[RunControl, CallbackSink]:
    """A control that asks the run to stop (saving a state) once ``step`` is logged."""
    control = RunControl()

    def watch(event):
        if event.kind == "step" and event.step == step:
            control.request_stop(f"stopped at step {step} by the test")

    return control, CallbackSink(watch)


def flip_bytes(path: Path, where: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(where, where + 4):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_damaged_latent_cache_entry_is_encoded_again(tmp_path, tiny_sd1, cases):
    config = make_run(tmp_path, tiny_sd1, steps=STEPS, save_extra=SAVE)
    control, sink = stop_at(3)
    assert run_training(config, control=control, sink=sink).status == "stopped"
    entry = sorted((tmp_path / "runs" / ".latent-cache").rglob("*.safetensors"))[0]
    flip_bytes(entry, entry.stat().st_size - 16)   # inside the stored latents: finite, wrong values
    messages = []
    result = run_training(config, resume="latest", sink=CallbackSink(
        lambda e: messages.append(e.text) if e.kind == "message" else None))
    assert any("damaged" in m and "encoding it again" in m for m in messages), messages
    cases.finish("a damaged latent cache entry", config, result.status == "completed", result.message)


def test_a_damaged_newest_state_falls_back_to_the_previous_one(tmp_path, tiny_sd1, cases):
    config = make_run(tmp_path, tiny_sd1, steps=STEPS, save_extra=SAVE)
    control, sink = stop_at(4)
    assert run_training(config, control=control, sink=sink).status == "stopped"
    newest = tmp_path.joinpath(*RUN_DIR, "state", "t-step00000004-state")
    flip_bytes(newest / "unet.safetensors", (newest / "unet.safetensors").stat().st_size // 2)
    messages = []
    result = run_training(config, resume="latest", sink=CallbackSink(
        lambda e: messages.append(e.text) if e.kind == "message" else None))
    assert any("skipped a newer state" in m and str(newest) in m for m in messages), messages
    assert any("at step 3" in m and "resumed from" in m for m in messages), messages
    cases.finish("a damaged newest state", config, result.status == "completed", result.message)


# ------------------------------------------------------------------ the processes themselves

FRESH_PROBE = """
import gc, json, os, signal, sys, threading, torch
kinds = {signal.SIG_DFL: "default", signal.SIG_IGN: "ignored", signal.default_int_handler: "KeyboardInterrupt"}
handlers = {name: kinds.get(signal.getsignal(getattr(signal, name)), "other")
            for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE")}
print(json.dumps({"pid": os.getpid(), "argv": sys.argv, "gc": gc.isenabled(), "threads": threading.active_count(),
                  "handlers": handlers, "seed": torch.initial_seed(), "cwd": os.getcwd()}))
print("to stderr", file=sys.stderr)
sys.stdout.flush()
sys.exit(7)
"""


def test_a_forked_sdft_is_a_real_process_that_starts_as_a_fresh_interpreter(tmp_path):
    """What the fault suite relies on in tests/forked_sdft.py: each child is a process of its own
    with a fresh interpreter's signal handlers, collector, generators and one thread."""
    seen = []
    for _ in range(2):
        done = forked_sdft.run(["an argument"], code=FRESH_PROBE, env=ENV, cwd=tmp_path, timeout=60)
        assert done.returncode == 7 and done.stderr == "to stderr\n", done.stderr
        seen.append(json.loads(done.stdout))
    first, second = seen
    assert first["pid"] != second["pid"] and os.getpid() not in (first["pid"], second["pid"])
    assert first["argv"] == ["-c", "an argument"] and first["cwd"] == str(tmp_path)
    assert first["gc"] and first["threads"] == 1
    assert first["handlers"] == {"SIGINT": "KeyboardInterrupt", "SIGTERM": "default", "SIGHUP": "default",
                                 "SIGPIPE": "ignored"}
    assert first["seed"] != second["seed"], "each child seeds torch's generator anew, as a fresh process does"
    sleeper = forked_sdft.start([], code="import time; time.sleep(60)", env=ENV)
    sleeper.send_signal(signal.SIGTERM)
    assert sleeper.wait(timeout=30) == -signal.SIGTERM
    told = forked_sdft.run([], code="import os; print(os.environ['SDFT_FAULT_KILL_WRITING'])",
                           env={**ENV, "SDFT_FAULT_KILL_WRITING": "a needle"}, timeout=60)
    assert told.stdout == "a needle\n", "the child runs under the environment it was given"
