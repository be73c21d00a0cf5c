"""Headless commands: ``sdft train``, ``demo``, ``bench``, ``plan`` and the tool commands.

No Textual here: ``sdft_tui.cli`` handles the commands that open a screen and
passes everything else to :func:`main`. Heavy imports happen inside each command, so
``sdft --help`` is instant.

Exit codes: 0 ok, 2 bad configuration or usage, 3 training failed, 130 stopped.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

EXIT_OK, EXIT_CONFIG, EXIT_FAILED, EXIT_STOPPED = 0, 2, 3, 130

# Tool commands implemented next to their subject; each takes its own argv.
DELEGATED = {
    "buckets": ("engine.data.cli", "buckets_command", "bucket histogram of an image folder"),
    "prepare": ("engine.data.cli", "prepare_command", "health check; write kohya metadata JSON from sidecars"),
    "cache": ("engine.data.cli", "cache_command", "latent cache maintenance (prune)"),
    "convert": ("engine.models.convert_cli", "convert_command", "convert a model between .safetensors, .ckpt and diffusers"),
    "tokens": ("engine.models.tokens_cli", "tokens_command", "show how a caption is tokenized and chunked"),
    "caption": ("engine.labeling.cli", "caption_command", "auto-caption images with BLIP"),
    "tag": ("engine.labeling.cli", "tag_command", "auto-tag images with WD14 / DeepDanbooru"),
}


def build_parser() -> argparse.ArgumentParser:
    from engine import __version__

    parser = argparse.ArgumentParser(
        prog="sdft",
        description="Fine-tune Stable Diffusion 1.x/2.x on your own images. "
                    "Run `sdft` alone for the wizard, or `sdft train RUN.toml` headless.",
    )
    parser.add_argument("--version", action="version", version=f"sdft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train from a run TOML (headless; --tui for the dashboard)")
    train.add_argument("config", help="run TOML file")
    train.add_argument("--check", action="store_true", help="validate the file and exit (2 if it has errors)")
    train.add_argument("--resume", metavar="STATE", help='continue from a state folder, or "latest"')
    train.add_argument("--allow-changed", action="store_true", help="resume even if training options or data changed")
    train.add_argument("--tui", action="store_true", help="show the live dashboard")
    train.add_argument("--detached", action="store_true", help="keep running when the terminal goes away (SIGHUP)")

    demo = sub.add_parser("demo", help="generate a demo dataset and tiny model, then fine-tune it (~1 min on a CPU)")
    demo.add_argument("--dir", default="sdft-demo", help="folder for the demo (default: ./sdft-demo)")
    demo.add_argument("--steps", type=int, default=40, help="training steps (default 40)")
    demo.add_argument("--headless", action="store_true", help="train in the console, not the wizard")
    demo.add_argument("--force", action="store_true", help="regenerate the dataset, model and TOML")

    bench = sub.add_parser("bench", help="measure training speed and the engine's overhead over a bare loop")
    bench.add_argument("config", nargs="?", help="run TOML (default: the demo's)")
    bench.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--data", action="store_true",
                       help="benchmark the data pipeline instead (scan 10k images, bucket 100k sizes, latent "
                            "caching vs a bare VAE loop); see `sdft bench --data --help`")

    plan = sub.add_parser("plan", help="estimate peak VRAM of a run TOML and suggest what fits")
    plan.add_argument("config", help="run TOML file")
    plan.add_argument("--vram", type=float, help="GPU memory to plan for, in GB (default: detected)")

    watch = sub.add_parser("watch", help="follow a run started elsewhere in the dashboard (read-only)")
    watch.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (it holds events.jsonl), e.g. runs/my-run")

    for name, (_module, _func, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from engine.quiet import quiet_libraries

    quiet_libraries()
    if argv[:1] == ["bench"] and "--data" in argv:
        from engine.data.bench import data_bench

        return data_bench([a for a in argv[1:] if a != "--data"])
    if argv and argv[0] in DELEGATED:
        module_name, func_name, _ = DELEGATED[argv[0]]
        import importlib

        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            print(f"sdft {argv[0]}: not available in this installation ({exc})", file=sys.stderr)
            return EXIT_CONFIG
        return getattr(module, func_name)(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    return {"train": cmd_train, "demo": cmd_demo, "bench": cmd_bench, "plan": cmd_plan,
            "watch": cmd_watch}[args.command](args)


def cmd_watch(args) -> int:
    """`sdft watch RUN_DIR`: the dashboard lives in sdft_tui (Textual), imported only here."""
    try:
        from sdft_tui.dashboard import watch_run
    except ImportError as exc:
        print(f"sdft watch: the dashboard is not available in this installation ({exc}); "
              f"follow the run with `tail -f {Path(args.run_dir) / 'events.jsonl'}`", file=sys.stderr)
        return EXIT_CONFIG
    return watch_run(Path(args.run_dir))


# ------------------------------------------------------------------ train


def print_problems(problems, console=None) -> None:
    """Each problem on its own line, exactly as written: keys like ``[[datasets]]`` and paths
    like ``my [set1] images`` are never read as markup."""
    from engine.console import make_console, styled

    console = console or make_console(stderr=True)
    for p in problems:
        style = {"error": "bold red", "warning": "yellow"}.get(p.severity, "")
        where = f"{p.location()}: " if p.location() else ""
        console.print(styled(where, (p.severity, style), ": ", (p.key, "bold"), f": {p.message}"))
        if p.hint:
            console.print(f"    hint: {p.hint}")


def check_config(path: str, resume: str | None = None) -> int:
    """`sdft train --check`: every problem training would hit before its first step, at once
    (the schema, then engine.preflight); exit 2 when any is an error."""
    from engine.console import make_console, styled
    from engine.preflight import check_run_file

    config, problems = check_run_file(path, resume=resume)
    print_problems(problems)
    errors = sum(p.severity == "error" for p in problems)
    if errors:
        make_console(stderr=True).print(styled((f"{path}: {errors} error(s)", "bold red"), "; nothing was trained."))
        return EXIT_CONFIG
    subsets = sum(len(d.subsets) for d in getattr(config.datasets, "datasets", []))
    make_console().print(styled((f"{path} is valid", "green"),
                                f": model {config.model.pretrained_model_name_or_path!r}, {subsets} subset(s), "
                                f"run folder {config.run_dir()}"))
    return EXIT_OK


class StopOnSignal:
    """Ctrl-C (and SIGTERM, and SIGHUP unless detached) stop at the next step with a saved
    state; a second Ctrl-C aborts at once."""

    def __init__(self, control, console, detached: bool = False):
        self.control, self.console = control, console
        self.previous = {}
        self.signals = [signal.SIGINT, signal.SIGTERM]
        if hasattr(signal, "SIGHUP"):
            self.signals.append(signal.SIGHUP)
        self.detached = detached

    def __enter__(self):
        for sig in self.signals:
            if sig == getattr(signal, "SIGHUP", None) and self.detached:
                self.previous[sig] = signal.signal(sig, signal.SIG_IGN)
            else:
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, _frame):
        if self.control.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        self.control.request_stop(f"{name} received")
        try:
            self.console.print(f"{name}: stopping at the next step and saving a resumable state "
                               "(Ctrl-C again to abort without saving)", style="yellow")
        except Exception:  # noqa: BLE001 - the terminal may be gone (SIGHUP)
            pass

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def cmd_train(args) -> int:
    if args.check:
        return check_config(args.config, resume=args.resume)
    if args.tui:
        print("sdft train --tui is handled by the sdft command (sdft_tui)", file=sys.stderr)
        return EXIT_CONFIG
    return train_headless(args.config, resume=args.resume, allow_changed=args.allow_changed,
                          detached=args.detached)


def train_headless(config: str | Path, *, resume: str | None = None, allow_changed: bool = False,
                   detached: bool = False) -> int:
    from engine.config.problems import ConfigError
    from engine.console import ConsoleSink, make_console, styled
    from engine.control import RunControl

    console = make_console()
    try:
        from engine.config.run_toml import load_run_file

        load_run_file(config)  # fail fast, before torch loads, with every problem listed
    except ConfigError as exc:
        print_problems(exc.problems)
        return EXIT_CONFIG
    from engine.atomic import WriteFailed
    from engine.runlock import RunFolderBusy
    from engine.train.runner import run_training

    control = RunControl()
    sink = ConsoleSink(console)
    try:
        with StopOnSignal(control, console, detached=detached):
            result = run_training(config, sink=sink, control=control, resume=resume, allow_changed=allow_changed)
    except ConfigError as exc:
        print_problems(exc.problems)
        return EXIT_CONFIG
    except RunFolderBusy as exc:
        make_console(stderr=True).print(styled(("sdft train:", "bold red"), f" {exc}"))
        return EXIT_CONFIG
    except WriteFailed as exc:   # before the first step (config.toml, the event log): nothing trained yet
        make_console(stderr=True).print(styled(("sdft train:", "bold red"), f" {exc}; nothing was trained"))
        return EXIT_FAILED
    finally:
        sink.close()
    if result.status == "completed":
        return EXIT_OK
    if result.status == "stopped":
        return EXIT_STOPPED
    if result.log_path:
        console.print(f"details: {result.log_path}")
    return EXIT_FAILED


# ------------------------------------------------------------------ demo


def cmd_demo(args) -> int:
    from engine.console import make_console, styled
    from engine.demo import prepare_demo

    console = make_console()
    console.print(f"preparing the demo in {args.dir} (generated images + a tiny random model)...")
    toml_path = prepare_demo(args.dir, steps=args.steps, force=args.force)
    console.print(f"run TOML: {toml_path}")
    code = train_headless(toml_path)
    if code == EXIT_OK:
        checkpoint = Path(args.dir) / "runs" / "demo" / "checkpoints" / "demo.safetensors"
        console.print(styled(("demo finished.", "bold"), f" Fine-tuned model: {checkpoint}"))
        console.print(f"Edit {toml_path} and run `sdft train {toml_path}`, or run `sdft` for the wizard.")
    return code


# ------------------------------------------------------------------ bench and plan


def cmd_bench(args) -> int:
    from engine.train.bench import bench_command

    return bench_command(args)


def cmd_plan(args) -> int:
    from engine.config.problems import ConfigError
    from engine.config.run_toml import load_run_file

    try:
        config, _doc, _warnings = load_run_file(args.config)
    except ConfigError as exc:
        print_problems(exc.problems)
        return EXIT_CONFIG
    try:
        from engine.plan import plan_report
    except ImportError:
        print("sdft plan: the VRAM planner is not available in this installation", file=sys.stderr)
        return EXIT_CONFIG
    print(plan_report(config, vram_gb=args.vram))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
