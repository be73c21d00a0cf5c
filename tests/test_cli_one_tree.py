"""One command line in the engine: the console script, one argument tree, and headless
commands that never load Textual or the wizard package."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from train_helpers import make_run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# `sdft train FILE --check` through engine.cli's main, then `sdft ARGS` as the console script runs it
# (main() reading sys.argv): one interpreter, so the model libraries are imported once for both.
CHECK_THEN_RUN = """\
import sys
from engine.cli import main
print("check exit code", int(main(["train", sys.argv[1], "--check"])), flush=True)
sys.argv = ["sdft", *sys.argv[2:]]
sys.exit(main())
"""


def imported_modules(*args: str, check_first: str | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``sdft ARGS`` as the console script does (engine.cli's main) under ``-X importtime``;
    return the process and the name of every module it imported. ``check_first``: a run file the
    same process checks first (its exit code printed as ``check exit code N``)."""
    command = ["-m", "engine.cli"] if check_first is None else ["-c", CHECK_THEN_RUN, check_first]
    done = subprocess.run([sys.executable, "-X", "importtime", *command, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    names = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2}
    return done, names - {"package"}


def ui_modules(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in ("textual", "sdft_tui", "textual_image"))


def test_the_console_script_is_the_engines_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"sdft": "engine.cli:main"}


@pytest.mark.slow
def test_train_check_and_a_headless_train_import_no_textual(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=2)
    # One process checks, then trains: no UI module among all it imported clears each command.
    trained, names = imported_modules("train", str(config), check_first=str(config))
    assert "check exit code 0" in trained.stdout, trained.stdout + trained.stderr[-3000:]
    assert "engine.cli" in names or "engine.config.run_toml" in names, "importtime saw the run"
    assert trained.returncode == 0, trained.stdout + trained.stderr[-3000:]
    assert "torch" in names, "the run really trained"
    assert (tmp_path / "runs" / "t" / "events.jsonl").is_file()
    assert ui_modules(names) == []


def test_the_engine_builds_one_argument_parser():
    """Every command's options live in one tree (engine.commandline.new_tree): no module of the
    engine constructs an ArgumentParser of its own."""
    builders = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                    == "ArgumentParser":
                builders.append(path.relative_to(ROOT).as_posix())
    assert builders == ["engine/commandline.py"]


def test_a_tool_command_parses_the_same_through_main_and_its_module(capsys):
    """`sdft tokens ...` (the whole tree) and tokens_command([...]) (its module) agree."""
    from engine.cli import main
    from engine.models.tokens_cli import tokens_command

    assert main(["tokens", "a red cat", "--json"]) == 0
    through_main = capsys.readouterr().out
    assert tokens_command(["a red cat", "--json"]) == 0
    assert capsys.readouterr().out == through_main and '"token_count": 3' in through_main


def test_sdft_help_lists_every_registered_command():
    """A command a module registers is reachable as `sdft NAME` and listed (bench-data, reached
    as `sdft bench --data`, is the one unlisted)."""
    from engine.cli import build_parser

    help_text = build_parser().format_help()
    for name in ("train", "demo", "bench", "plan", "watch", "buckets", "prepare", "cache", "convert", "tokens",
                 "caption", "tag", "from-kohya", "samples"):
        assert f"    {name}" in help_text, name
    assert "bench-data" not in help_text
