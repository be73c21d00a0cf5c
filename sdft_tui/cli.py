"""The ``sdft`` entry point.

``sdft`` opens the wizard, ``sdft RUN.toml`` opens it on that file, ``sdft train RUN.toml
--tui`` and ``sdft watch RUN_DIR`` open the dashboard; every other command is headless and
goes to :mod:`engine.cli` without importing Textual, so it starts instantly and works over
a pipe or in CI.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        if not _interactive():
            # No terminal to draw the wizard on (a pipe, CI, cron): say what to run instead.
            from engine.cli import build_parser

            build_parser().print_help()
            print("\nsdft: the wizard needs a terminal; run a TOML headless with `sdft train RUN.toml`.",
                  file=sys.stderr)
            return 2
        from sdft_tui.app import run_wizard

        return run_wizard(None)
    first = argv[0]
    if first.endswith(".toml") and len(argv) == 1:
        if not Path(first).is_file():
            print(f"sdft: {first} does not exist (create one with `sdft` or `sdft demo`)", file=sys.stderr)
            return 2
        from sdft_tui.app import run_wizard

        return run_wizard(Path(first))
    if first == "watch":
        if len(argv) != 2 or argv[1].startswith("-"):
            print("usage: sdft watch RUN_DIR   (a run folder holding events.jsonl)", file=sys.stderr)
            return 2
        from sdft_tui.dashboard import watch_run

        return watch_run(Path(argv[1]))
    if first == "train" and "--tui" in argv:
        return _train_in_dashboard(argv[1:])
    if first == "demo" and "--headless" not in argv and _interactive() and _has_module("sdft_tui.app"):
        return _demo_in_wizard(argv[1:])
    from engine.cli import main as engine_main

    return engine_main(argv)


def _train_in_dashboard(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="sdft train --tui")
    parser.add_argument("config")
    parser.add_argument("--tui", action="store_true")
    parser.add_argument("--detached", action="store_true")
    options = parser.parse_args(args)
    from sdft_tui.dashboard import run_dashboard

    return run_dashboard(Path(options.config), detached=options.detached)


def _demo_in_wizard(args: list[str]) -> int:
    import argparse

    from engine.demo import prepare_demo

    parser = argparse.ArgumentParser(prog="sdft demo")
    parser.add_argument("--dir", default="sdft-demo")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--force", action="store_true")
    options = parser.parse_args(args)
    toml_path = prepare_demo(options.dir, steps=options.steps, force=options.force)
    from sdft_tui.app import run_wizard

    return run_wizard(toml_path, demo=True)


if __name__ == "__main__":
    sys.exit(main())
