"""Headless console output: the live display never dies, and nothing of a user's is read as markup."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import time

import forked_sdft
import pytest
from rich.console import Console
from train_helpers import make_run

from engine.config.problems import Problem
from engine.console import ConsoleSink
from engine.events import Message, ModelSaved, PhaseProgress, RunFinished, RunStarted, StepMetrics, StepProgress

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    return ANSI.sub("", text)


def terminal_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, soft_wrap=True, markup=False, highlight=False), out


def step(n: int) -> StepMetrics:
    return StepMetrics(step=n, total_steps=10, epoch=1, loss=0.5, loss_avg=0.5, lr=1e-4, grad_norm=None,
                       it_per_s=1.0, samples_per_s=2.0, eta_s=5.0, elapsed_s=float(n))


def test_live_display_survives_phase_after_phase_and_reports_the_stop():
    console, out = terminal_console()
    sink = ConsoleSink(console, interactive=True)
    # The order a real run emits: loading, caching in many updates, then training with a sample phase.
    for name, total in (("loading model", 1), ("caching latents", 5), ("caching latents", 5)):
        for done in range(total + 1):
            sink.emit(PhaseProgress(name=name, done=done, total=total))
    sink.emit(RunStarted(run_dir="runs/t", total_steps=10, total_epochs=1, steps_per_epoch=10, num_images=4,
                         batch_size=2, device="cpu"))
    sink.emit(step(1))
    sink.emit(PhaseProgress(name="sampling", done=0, total=2))
    sink.emit(step(2))  # a step arrives while the sampling phase is still open
    sink.emit(PhaseProgress(name="caching latents", done=1, total=3))
    sink.emit(PhaseProgress(name="sampling", done=2, total=2))
    sink.emit(RunFinished(status="stopped", step=2, epoch=1, state_path="runs/t/state/t-step00000002-state"))
    sink.close()
    text = plain(out.getvalue())
    assert "stopped at step 2. State: runs/t/state/t-step00000002-state" in text
    assert sink.interactive, "the progress display kept working (no fall back to plain lines)"


def bar_now(sink: ConsoleSink) -> str:
    """The training bar's line as the terminal shows it now."""
    console = Console(file=io.StringIO(), width=120, record=True, markup=False, highlight=False)
    console.print(sink.progress.make_tasks_table([t for t in sink.progress.tasks if t.id == sink.task]))
    return console.export_text()


def test_the_progress_bar_and_its_eta_move_every_step_and_plain_lines_keep_their_cadence():
    console, out = terminal_console()
    sink = ConsoleSink(console, interactive=True)
    sink.emit(RunStarted(run_dir="runs/t", total_steps=10, total_epochs=1, steps_per_epoch=10, num_images=4,
                         batch_size=2, device="cpu"))
    sink.emit(step(1))    # figures at step 1 (eta 5 s), then progress events between the intervals
    seen = [bar_now(sink)]
    for n, eta in ((2, 8.0), (3, 7.0)):
        sink.emit(StepProgress(step=n, total_steps=10, epoch=1, elapsed_s=float(n), eta_s=eta))
        seen.append(bar_now(sink))
    sink.close()
    assert "1/10" in seen[0] and "eta 5s" in seen[0], seen[0]
    assert "2/10" in seen[1] and "eta 8s" in seen[1], seen[1]
    assert "3/10" in seen[2] and "eta 7s" in seen[2], seen[2]
    assert all("-:--:--" not in line for line in seen)
    lines_out = io.StringIO()
    lines = ConsoleSink(Console(file=lines_out, width=120, markup=False, highlight=False), interactive=False)
    lines.emit(step(1))
    lines.emit(StepProgress(step=2, total_steps=10, epoch=1, elapsed_s=2.0, eta_s=8.0))
    lines.emit(step(3))
    assert [line.split(" epoch")[0] for line in lines_out.getvalue().splitlines()] == ["step 1/10", "step 3/10"]


def test_a_broken_display_falls_back_to_plain_lines_and_still_prints_the_outcome():
    console, out = terminal_console()
    sink = ConsoleSink(console, interactive=True)
    sink.emit(RunStarted(run_dir="runs/t", total_steps=10, total_epochs=1, steps_per_epoch=10, num_images=4,
                         batch_size=2, device="cpu"))

    def broken(*_args, **_kwargs):
        raise IndexError("list index out of range")

    sink.progress.update = broken
    sink.emit(step(3))
    sink.emit(Message(level="info", text="stopped at step 3; resume with: sdft train run.toml --resume latest"))
    sink.emit(RunFinished(status="stopped", step=3, epoch=1, state_path="s"))
    text = plain(out.getvalue())
    assert "progress display failed" in text and "step 3/10" in text
    assert "resume with: sdft train run.toml --resume latest" in text and "stopped at step 3" in text


def test_brackets_in_keys_hints_paths_and_captions_print_as_they_are():
    from engine.cli import print_problems

    console, out = terminal_console()
    print_problems([Problem("datasets", "no dataset given", "add [[datasets]] with [[datasets.subsets]] tables",
                            "my [set1] images/run.toml", 3),
                    Problem("datasets[0].subsets[0].image_dir", "folder 'my [set1] images' not found", "",
                            None, None, "warning")], console)
    sink = ConsoleSink(console, interactive=False)
    sink.emit(Message(level="warning", text="caption of my [set1] images/a.png: [red] [/] [bold]x"))
    sink.emit(ModelSaved(what="model", step=4, epoch=1, path="my [set1] images/[b]out.safetensors"))
    sink.emit(RunFinished(status="completed", step=4, epoch=1, model_path="my [set1] images/[b]out.safetensors"))
    sink.emit(RunFinished(status="failed", step=4, epoch=1, message="cannot read [bold]my [set1] images[/]"))
    text = plain(out.getvalue())
    for exact in ("add [[datasets]] with [[datasets.subsets]] tables", "my [set1] images/run.toml:3",
                  "datasets[0].subsets[0].image_dir", "folder 'my [set1] images' not found",
                  "caption of my [set1] images/a.png: [red] [/] [bold]x",
                  "saved model at step 4: my [set1] images/[b]out.safetensors",
                  "Model: my [set1] images/[b]out.safetensors", "cannot read [bold]my [set1] images[/]"):
        assert exact in text, exact


def _start_in_terminal(config):
    """`sdft train` with a real pseudo-terminal as its stdout, so the live display is on."""
    leader, follower = pty.openpty()
    # A real process, forked from a server that imported the libraries once (tests/forked_sdft.py).
    process = forked_sdft.start(["train", str(config)], env=ENV, stdin=forked_sdft.DEVNULL, stdout=follower,
                                stderr=follower)
    os.close(follower)
    return process, leader


def _read_available(fd, chunks, timeout=0.2):
    while select.select([fd], [], [], timeout)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return False
        if not data:
            return False
        chunks.append(data)
    return True


def test_headless_runs_print_the_validation_loss_and_each_sample_grid():
    from engine.events import SampleGridSaved, ValidationMetrics

    console, out = terminal_console()
    sink = ConsoleSink(console, interactive=False)
    sink.emit(ValidationMetrics(step=40, epoch=2, figures={"loss": 0.123456}))
    sink.emit(SampleGridSaved(path="runs/t/samples/t_s00000040_grid.png", step=40, count=3))
    text = plain(out.getvalue())
    assert "validation at step 40: loss 0.1235" in text
    assert "sample grid at step 40 (3 prompts): runs/t/samples/t_s00000040_grid.png" in text


@pytest.mark.slow
def test_two_runs_at_once_in_terminals_both_print_their_resume_command(tmp_path, tiny_sd1):
    """The IndexError was seen under load: two runs on the two cores, each with a live display."""
    runs = []
    for name in ("a [set1]", "b"):
        folder = tmp_path / name
        folder.mkdir()
        config = make_run(folder, tiny_sd1, steps=10_000)
        process, fd = _start_in_terminal(config)
        runs.append((config, process, fd, []))
    deadline = time.time() + 300
    pending = list(runs)
    while pending and time.time() < deadline:
        for run in list(pending):
            config, process, fd, chunks = run
            _read_available(fd, chunks, 0.05)
            events = config.parent / "runs" / "t" / "events.jsonl"
            if events.exists() and '"event": "step"' in events.read_text():
                process.send_signal(signal.SIGINT)
                pending.remove(run)
    for config, process, fd, chunks in runs:
        end = time.time() + 240
        while process.poll() is None and time.time() < end:
            _read_available(fd, chunks)
        while _read_available(fd, chunks):
            pass
        os.close(fd)
        text = plain(b"".join(chunks).decode("utf-8", "replace"))
        assert process.wait(timeout=10) == 130, text
        assert "failed and was disabled" not in text and "Traceback" not in text, text
        assert "resume with: sdft train" in text and str(config.parent.name) in text, text


def test_token_view_and_labelling_summary_print_brackets_as_they_are(capsys):
    from argparse import Namespace

    from engine.labeling.options import LabelSummary
    from engine.labeling.terminal import print_summary
    from engine.models.tokens_cli import tokens_command

    assert tokens_command(["a [set1] cat, [red] hat [/]"]) == 0
    shown = plain(capsys.readouterr().out)
    assert shown.count("a [set1] cat, [red] hat [/]") >= 1 and "[set1]" in shown.split("Chunks")[1]
    summary = LabelSummary(failed=[("my [set1] images/a.png", "cannot decode [b]it[/b]")], stopped=True)
    console, out = terminal_console()
    print_summary(console, "tag", summary, Namespace(json=False, frequency=False))
    assert "failed my [set1] images/a.png: cannot decode [b]it[/b]" in plain(out.getvalue())
