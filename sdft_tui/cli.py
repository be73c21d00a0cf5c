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
        from sdft_tui.dashboard import watch_run

        return watch_run(Path(_parse(argv).run_dir))
    if first == "train" and "--tui" in argv:
        options = _parse(argv)
        if options.check:
            from engine.cli import main as engine_main

            return engine_main(argv)
        return _train_in_dashboard(options)
    if first == "demo" and "--headless" not in argv and _interactive() and _has_module("sdft_tui.app"):
        return _demo_in_wizard(_parse(argv))
    from engine.cli import main as engine_main

    return engine_main(argv)


def _parse(argv: list[str]):
    """The engine's own parser: one definition of every command's options (and of --help)."""
    from engine.cli import build_parser

    return build_parser().parse_args(argv)


def _train_in_dashboard(options) -> int:
    from sdft_tui.dashboard import run_dashboard

    return run_dashboard(Path(options.config), detached=options.detached, resume=options.resume,
                         allow_changed=options.allow_changed)


def _demo_in_wizard(options) -> int:
    from engine.demo import prepare_demo

    toml_path = prepare_demo(options.dir, steps=options.steps, force=options.force)
    from sdft_tui.app import run_wizard

    return run_wizard(toml_path, demo=True)


if __name__ == "__main__":
    sys.exit(main())
