"""The headless CLI as a user runs it: demo, exit codes, Ctrl-C, bench, import rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import forked_sdft
import pytest
from fresh_process import snippet
from train_helpers import make_broken_model, make_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SDFT = [sys.executable, "-m", "sdft_tui.cli"]


def run_sdft(*args, cwd=None, timeout=300):
    return subprocess.run([*SDFT, *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)


def sdft_here(capsys, *args) -> tuple[int, str, str]:
    """`sdft ARGS` in this process (sdft_tui.cli.main, the console script's entry): exit code,
    stdout, stderr. For tests of what a command does; the process's own behaviour keeps a real
    process: run_sdft where a fresh interpreter matters (imports at start), else a child forked
    with the libraries imported (signals, exit status: tests/forked_sdft.py)."""
    from sdft_tui.cli import main

    code = main(list(args))
    printed = capsys.readouterr()
    return code, printed.out, printed.err


@pytest.mark.slow
def test_demo_runs_headless_and_its_checkpoint_loads(tmp_path, capsys):
    code, out, err = sdft_here(capsys, "demo", "--dir", str(tmp_path / "demo"), "--steps", "6")
    assert code == 0, out + err
    checkpoint = tmp_path / "demo" / "runs" / "demo" / "checkpoints" / "demo.safetensors"
    assert checkpoint.is_file() and str(checkpoint) in out
    from engine.models.load import load_model

    model = load_model(str(checkpoint))
    assert model.v2 is False and model.unet is not None
    events = [json.loads(line) for line in (checkpoint.parents[1] / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert losses and all(loss == loss and abs(loss) < 1e6 for loss in losses)
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "completed"
    samples = list((checkpoint.parents[1] / "samples").glob("*.png"))
    assert samples, "the demo samples a preview image"


def test_training_failure_exits_3(tmp_path, tiny_sd1):
    config = make_run(tmp_path, make_broken_model(tiny_sd1, tmp_path), steps=2)
    result = forked_sdft.run(["train", str(config)], env=ENV, timeout=300)   # the exit status of a real process
    assert result.returncode == 3
    assert "broken-model" in result.stdout and "sdft.log" in result.stdout


def test_ctrl_c_stops_with_a_resumable_state_and_exit_130(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=10_000)
    # A real process, forked from a server that imported the libraries once (tests/forked_sdft.py).
    process = forked_sdft.start(["train", str(config)], env=ENV, stderr=forked_sdft.STDOUT)
    events = tmp_path / "runs" / "t" / "events.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if events.exists() and '"event": "step"' in events.read_text():
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 130, output
    states = list((tmp_path / "runs" / "t" / "state").glob("t-step*-state"))
    assert len(states) == 1 and (states[0] / "manifest.json").is_file()
    assert "--resume" in output and f"sdft train {config} --resume" in output


def test_bench_reports_engine_and_bare_loop(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1, steps=2)
    code, out, err = sdft_here(capsys, "bench", str(config), "--steps", "3", "--warmup", "1", "--json")
    assert code == 0, err
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["device"] == "cpu" and figures["steps"] == 3
    assert figures["engine_samples_per_s"] > 0 and figures["bare_samples_per_s"] > 0
    assert "engine_overhead" in figures


HELP = snippet("cli-help", "import sys; from engine.cli import build_parser; build_parser().format_help(); "
               "print(sorted(m for m in ('torch', 'textual', 'diffusers', 'transformers') if m in sys.modules))")


def test_help_and_version_are_instant_and_torch_free(in_fresh_process):
    out = in_fresh_process(HELP)
    assert out.stdout.strip() == "[]"


def test_help_lists_watch_and_watch_says_what_it_needs(tmp_path, capsys):
    help_text = run_sdft("--help", timeout=60)
    assert help_text.returncode == 0 and "watch" in help_text.stdout and "follow a run" in help_text.stdout
    usage = run_sdft("watch", timeout=60)
    assert usage.returncode == 2 and "RUN_DIR" in usage.stderr
    missing = run_sdft("watch", str(tmp_path / "nope"), timeout=60)
    assert missing.returncode == 2 and "no such run folder" in missing.stderr
    from engine.cli import main  # the engine's own entry point reaches the same dashboard

    assert main(["watch", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_light_commands_load_no_model_library(tmp_path, tiny_sd1):
    # `sdft buckets`, `sdft tokens`, `sdft plan` and `sdft prepare` start in well under a second of CPU
    # (issue 29): run through main() as the console script does, they import none of torch,
    # diffusers, transformers (0.4 s on its own; `sdft tokens` and prepare's health check count
    # with engine.models.tokenizer's ClipTokenizer) or Textual. One process, each command checked
    # after it ran.
    config = make_run(tmp_path, tiny_sd1)
    commands = [["buckets", str(tmp_path / "images")], ["plan", str(config), "--vram", "8"],
                ["prepare", str(tmp_path / "images"), "--out", str(tmp_path / "prepared.json")],   # + health check
                ["tokens", "a red sofa"], ["tokens", "(a red sofa:1.2), " * 60, "--weighted", "--v2",
                                            "--max-token-length", "150"], ["tokens", "a cat", "--json"]]
    code = (
        "import contextlib, io, sys\n"
        "from engine.cli import main\n"
        "from engine.models.tokenizer import light_tokenizer_is_trainings\n"
        "counter = () if light_tokenizer_is_trainings() else ('transformers',)   # transformers 4: its own\n"
        f"for argv in {commands!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main(argv) == 0, argv\n"
        "    heavy = [m for m in ('torch', 'diffusers', 'transformers', 'textual') if m in sys.modules]\n"
        "    assert set(heavy) <= set(counter), (argv, heavy)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# Modules the wizard needs before training: no torch/diffusers/transformers.
LIGHT_MODULES = [
    "engine.config.schema", "engine.config.run_toml", "engine.config.dataset", "engine.config.lines",
    "engine.data.scan", "engine.data.captions", "engine.data.buckets", "engine.data.metadata",
    "engine.data.health", "engine.events", "engine.control", "engine.plan", "engine.hardware",
    "engine.models.tokenizer", "engine.models.weighting", "engine.train.prompts", "engine.train.seeds",
]


for _module in LIGHT_MODULES:
    snippet(f"import {_module}", f"import sys, importlib; importlib.import_module({_module!r}); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'textual') if m in sys.modules))")


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_wizard_side_modules_import_no_torch(module, in_fresh_process):
    out = in_fresh_process(f"import {module}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_engine_never_imports_textual():
    root = Path(__file__).resolve().parents[1] / "engine"
    offenders = [str(p) for p in root.rglob("*.py")
                 if "import textual" in p.read_text() or "from textual" in p.read_text()]
    assert offenders == []
    modules = sorted("engine." + ".".join(p.relative_to(root).with_suffix("").parts)
                     for p in root.rglob("*.py") if p.name != "__init__.py")
    code = ("import sys, importlib\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print('textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_no_arguments_without_a_terminal_prints_help_not_a_broken_wizard():
    result = subprocess.run(SDFT, capture_output=True, text=True, env=ENV, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "sdft train" in result.stdout and "needs a terminal" in result.stderr


# one process walks every command of the tree: `sdft CMD --help` must stay instant on a
# GPU box too (under a second of CPU, issue 29), so none of torch, Textual, diffusers,
# transformers or numpy may load for it
EVERY_HELP = snippet("every command's help", (
        "import argparse, contextlib, io, sys\n"
        "from engine.cli import build_parser, main\n"
        "parser = build_parser()\n"
        "sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))\n"
        "names = sorted(sub.choices)\n"
        "for name in names:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([name, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    heavy = [m for m in ('torch', 'textual', 'diffusers', 'transformers', 'numpy') if m in sys.modules]\n"
        "    assert not heavy, (name, heavy)\n"
        "print(len(names))\n"
))


def test_every_commands_help_imports_nothing_heavy(in_fresh_process):
    out = in_fresh_process(EVERY_HELP)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) >= 15
