"""``sdft``: the one command line, for the wizard, the dashboard and every headless command.

``sdft`` opens the wizard, ``sdft RUN.toml`` opens it on that file, ``sdft train RUN.toml
--tui`` and ``sdft watch RUN_DIR`` open the dashboard; those import ``sdft_tui`` (Textual)
here, lazily, and nothing else in the engine does. Every other command is headless: it
starts without Textual, works over a pipe or in CI, and imports what it needs inside the
command, so ``sdft --help`` is instant.

One argument tree (engine.commandline): train, demo, bench, plan and watch are defined
here; the tool commands register themselves from the modules that implement them.

Exit codes: 0 ok, 2 bad configuration or usage, 3 training failed, 4 run folder busy, 130 stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine import commandline
from engine.bench import data as data_bench
from engine.console import print_problems
from engine.data import cli as data_cli
from engine.families import convert_cli
from engine.kohya import cli as kohya_cli
from engine.labeling import cli as labeling_cli
from engine.launch import MULTI_NODE
from engine.models import tokens_cli
from engine.train import cache_cli, samples_cli
from engine.train.distributed import leave_process_group
from engine.vocabulary import ExitCode, RunStatus

__all__ = ["build_parser",
           "check_config", "main", "print_problems", "train_headless"]

# Modules whose commands join the tree, in the order `sdft --help` lists them.
COMMAND_MODULES = (data_cli, cache_cli, convert_cli, tokens_cli, labeling_cli, kohya_cli, data_bench, samples_cli)
# Commands that load no model: they import neither torch nor diffusers (watch and demo open a
# Textual screen, or train through train_headless, which quiets the libraries itself).
LIGHT_COMMANDS = ("buckets", "tokens", "plan", "prepare", "samples", "watch", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser, commands = commandline.new_tree()

    train = commands.add_parser("train", help="train from a run TOML (headless; --tui for the dashboard)")
    train.add_argument("config", help="run TOML file")
    train.add_argument("--check", action="store_true", help="validate the file and exit (2 if it has errors)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="STATE", help='continue from a state folder, or "latest"')
    start.add_argument("--restart", action="store_true",
                       help="start over in a run folder that holds an earlier run (kept in its earlier/ folder)")
    train.add_argument("--allow-changed", action="store_true", help="resume even if training options or data changed")
    train.add_argument("--tui", action="store_true", help="show the live dashboard")
    train.add_argument("--detached", action="store_true", help="keep running when the terminal goes away (SIGHUP)")
    gpus = train.add_argument_group("several GPUs (docs/many-gpus.md)")
    gpus.add_argument("--gpus", metavar="N", help='train on N GPUs (or "all"): one process each, through '
                      "accelerate's launcher; the same run as one process at N times the batch size")
    for name in MULTI_NODE:
        gpus.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE",
                          help=f"with --gpus on several machines: accelerate launch's --{name}")
    train.set_defaults(run=cmd_train)

    demo = commands.add_parser("demo", help="generate a demo dataset and tiny model, then fine-tune it (~1 min on a CPU)")
    demo.add_argument("--dir", default="sdft-demo", help="folder for the demo (default: ./sdft-demo)")
    demo.add_argument("--steps", type=int, help="training steps (default 40; given with an existing demo folder, "
                      "written into its demo.toml)")
    demo.add_argument("--headless", action="store_true", help="train in the console, not the wizard")
    demo.add_argument("--force", action="store_true", help="regenerate the dataset, model and TOML (an existing "
                      "demo folder is otherwise reused as it is, edits included)")
    demo.set_defaults(run=cmd_demo)

    bench = commands.add_parser("bench", help="measure training speed and the engine's overhead over a bare loop")
    bench.add_argument("config", nargs="?", help="run TOML (default: the demo's)")
    bench.add_argument("--steps", type=int, help="timed steps (default 20; per cell with --matrix/--gpu-report: 5, "
                                                 "--gpu-smoke: 30); with --learning, training steps per model")
    bench.add_argument("--warmup", type=int, help="untimed warm-up steps (default 3; --matrix 2 per cell)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--json-out", metavar="FILE", help="also write the figures to FILE as JSON")
    bench.add_argument("--matrix", action="store_true",
                       help="time each speed and memory option (attention, checkpointing, compile, channels_last, "
                            "precision, optimizer, batch size) on the run file, one at a time: one table of steps/s, "
                            "samples/s, peak memory and the VRAM planner's prediction")
    bench.add_argument("--axis", action="append", metavar="KEY=V1,V2",
                       help="with --matrix, time only these options (repeatable), e.g. memory.attention=sdpa,math")
    bench.add_argument("--gpu-report", metavar="OUT_DIR",
                       help="build a random-weight SD 1.5-size model (no download), time batch 1/4/8 x fp16/bf16 x "
                            "SDPA/xformers x AdamW/AdamW8bit x checkpointing at 512 px within --budget, and write "
                            "OUT_DIR/gpu-report.md and .json (samples/s, MFU, peak VRAM measured and predicted)")
    bench.add_argument("--gpu-smoke", metavar="OUT_DIR",
                       help="train a random-weight SD 1.5-size model (no download) 30 steps in fp16, bf16 and "
                            "full_bf16 with AdamW, AdamW8bit and Adafactor, fused backward pass off and on; check "
                            "that losses are finite, weights moved and peak VRAM is within 10%% of the planner; "
                            "write OUT_DIR/gpu-smoke.md and .json (exit 1 if a check failed)")
    bench.add_argument("--learning", metavar="OUT_DIR", nargs="?", const="sdft-learning",
                       help="does training learn? train tiny random SD1, SD2 and SD2-v models from scratch on "
                            "generated concepts (about 5 minutes on 2 CPU cores); write OUT_DIR/learning.md, .json "
                            "and .png: validation-loss curves and prompt adherence against chance "
                            "(default OUT_DIR: sdft-learning; docs/learning-bench.md)")
    bench.add_argument("--family", action="append", choices=("sd1", "sd2", "sd2-v", "sdxl"),
                       help="with --learning, only this model family (repeatable); with --score, the family "
                            "the scored file was trained from")
    bench.add_argument("--score", metavar="MODEL",
                       help="with --learning OUT_DIR: score a model another trainer saved from OUT_DIR/models/FAMILY "
                            "(a single file or a diffusers folder) with the same evaluator (validation loss and "
                            "adherence)")
    bench.add_argument("--label", help="with --score, the trainer's name in the scores file (default: the file's name)")
    bench.add_argument("--seed", type=int, default=0,
                       help="with --learning, the seed of the drawn images, the random models and training (default 0)")
    bench.add_argument("--gpus", metavar="N", help='time 1 and N processes (one per GPU, or "all") and report the '
                       "scaling efficiency, warning below 80%% per GPU")
    bench.add_argument("--budget", type=float, metavar="SECONDS",
                       help="start no cell that would end past this many seconds since the command started "
                            "(--gpu-report and --gpu-smoke default: 390, so the whole command fits 7 minutes)")
    # The report's model and image side, for trying its code path on a CPU (tests use them too).
    bench.add_argument("--report-model", choices=("sd1", "tiny"), default="sd1", help=argparse.SUPPRESS)
    bench.add_argument("--report-resolution", type=int, default=512, help=argparse.SUPPRESS)
    bench.add_argument("--data", action="store_true",
                       help="benchmark the data pipeline instead (scan 10k images, bucket 100k sizes, latent "
                            "caching vs a bare VAE loop); see `sdft bench --data --help`")
    bench.set_defaults(run=cmd_bench)

    plan = commands.add_parser("plan", help="estimate peak VRAM of a run TOML and suggest what fits")
    plan.add_argument("config", help="run TOML file")
    plan.add_argument("--vram", type=float, help="GPU memory to plan for, in GB (default: detected)")
    plan.add_argument("--gpus", type=int, default=1, metavar="N",
                      help="GPUs training together (sdft train --gpus N): the estimate is per GPU")
    plan.set_defaults(run=cmd_plan)

    watch = commands.add_parser("watch", help="follow a run started elsewhere in the dashboard (read-only)")
    watch.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (it holds events.jsonl), e.g. runs/my-run")
    watch.set_defaults(run=cmd_watch)

    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    owns_process = argv is None   # the console script; a caller passing argv keeps its own collector
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return open_wizard(None)
    if len(argv) == 1 and _names_a_file(argv[0]):
        if not Path(argv[0]).is_file():
            from engine.config.problems import did_you_mean_file

            close = did_you_mean_file(argv[0])
            print(f"sdft: {argv[0]} does not exist ({close or 'create one with `sdft` or `sdft demo`'})",
                  file=sys.stderr)
            return ExitCode.USAGE
        return open_wizard(Path(argv[0]))
    if argv[:1] == ["bench"] and "--data" in argv:
        # `sdft bench --data ...` is the data pipeline's benchmark, its own (unlisted) command
        argv = ["bench-data", *(a for a in argv[1:] if a != "--data")]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.OK
    if owns_process and args.command == "train" and not args.tui:
        from engine.start_up_gc import pause_collector

        pause_collector()   # resumed before the first step: engine/start_up_gc.py
    from engine.quiet import quiet_libraries, quiet_logs

    # Commands that load no model skip importing the model libraries, so they start at once.
    if args.command in LIGHT_COMMANDS:
        quiet_logs()
    else:
        quiet_libraries()
    try:
        return args.run(args)
    finally:
        leave_process_group()   # a process of a multi-process run: before Python's exit, not during it


def _names_a_file(arg: str) -> bool:
    """``sdft RUN.toml`` (the wizard on a file), mistyped names included: a word with a dot or a
    slash is a file, never a command."""
    return arg.endswith(".toml") or (not arg.startswith("-") and ("." in arg or "/" in arg))


# ------------------------------------------------------------------ the screens (sdft_tui, imported lazily)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _tui_missing(what: str, exc: ImportError, instead: str) -> int:
    print(f"sdft: {what} is not available in this installation ({exc}); {instead}", file=sys.stderr)
    return ExitCode.USAGE


def open_wizard(run_toml: Path | None, *, demo: bool = False) -> int:
    """The wizard, on ``run_toml`` when given. Without a terminal to draw on (a pipe, CI,
    cron) it prints the commands instead."""
    if run_toml is None and not _interactive():
        build_parser().print_help()
        print("\nsdft: the wizard needs a terminal; run a TOML headless with `sdft train RUN.toml`.",
              file=sys.stderr)
        return ExitCode.USAGE
    try:
        from sdft_tui.app import run_wizard
    except ImportError as exc:
        return _tui_missing("the wizard", exc, "run a TOML headless with `sdft train RUN.toml`")
    return run_wizard(run_toml, demo=demo)


def cmd_watch(args) -> int:
    """`sdft watch RUN_DIR`: the dashboard lives in sdft_tui (Textual), imported only here."""
    try:
        from sdft_tui.dashboard import watch_run
    except ImportError as exc:
        return _tui_missing("the dashboard", exc,
                            f"follow the run with `tail -f {Path(args.run_dir) / 'events.jsonl'}`")
    return watch_run(Path(args.run_dir))


def train_in_dashboard(args) -> int:
    from engine.config.problems import ConfigError
    from engine.config.run_toml import load_run_file
    from engine.preflight.checks import check_history

    try:   # fail fast, as headless does: the dashboard would only show it and close
        config, _document, _warnings = load_run_file(args.config)
    except ConfigError as exc:
        print_problems(exc.problems)
        return ExitCode.USAGE
    refused = [p for p in check_history(config, resume=args.resume, restart=args.restart) if p.severity == "error"]
    if refused:
        print_problems(refused)
        return ExitCode.USAGE
    try:
        from sdft_tui.dashboard import run_dashboard
    except ImportError as exc:
        return _tui_missing("the dashboard", exc, f"train headless with `sdft train {args.config}`")
    return run_dashboard(Path(args.config), detached=args.detached, resume=args.resume,
                         allow_changed=args.allow_changed, restart=args.restart)


# ------------------------------------------------------------------ train


def check_config(path: str, resume: str | None = None, restart: bool = False, allow_changed: bool = False) -> int:
    """`sdft train --check`: every problem training would hit before its first step, at once
    (the schema, then engine.preflight.checks); exit 2 when any is an error."""
    from engine.console import make_console, styled
    from engine.preflight.checks import check_run_file
    from engine.units import counted

    config, problems = check_run_file(path, resume=resume, restart=restart, allow_changed=allow_changed)
    print_problems(problems)
    errors = sum(p.severity == "error" for p in problems)
    if errors:
        make_console(stderr=True).print(styled((f"{path}: {counted(errors, 'error')}", "bold red"),
                                               "; nothing was trained."))
        return ExitCode.USAGE
    subsets = sum(len(d.subsets) for d in getattr(config.datasets, "datasets", []))
    make_console().print(styled((f"{path} is valid", "green"),
                                f": model {config.model.pretrained_model_name_or_path!r}, {subsets} subset(s), "
                                f"run folder {config.run_dir()}"))
    return ExitCode.OK


def stop_on_signals(control, console, detached: bool = False):
    """The stop-signal policy (engine/stop_signals.py) for a headless run: a stop request at the
    next step, with a resumable state."""
    from engine.stop_signals import AGAIN_TO_ABORT, StopSignals

    def on_stop(name: str) -> None:
        control.request_stop(f"{name} received")
        try:
            console.print(f"{name}: stopping at the next step and saving a resumable state ({AGAIN_TO_ABORT})",
                          style="yellow")
        except Exception:  # noqa: BLE001 - the terminal may be gone (SIGHUP)
            pass

    return StopSignals(on_stop, detached=detached)


def cmd_train(args) -> int:
    if getattr(args, "gpus", None) and not args.check:
        return train_on_gpus(args)
    if args.check:
        return check_config(args.config, resume=args.resume, restart=args.restart, allow_changed=args.allow_changed)
    if args.tui:
        return train_in_dashboard(args)
    return train_headless(args.config, resume=args.resume, allow_changed=args.allow_changed,
                          detached=args.detached, restart=args.restart)


def train_on_gpus(args) -> int:
    """``--gpus N``: the same ``sdft train`` in N processes, started by accelerate's launcher."""
    from engine.console import make_console, styled
    from engine.hardware import probe_gpus_nvidia_smi
    from engine.launch import LaunchError, gpu_count_wanted, launch_plan, peer_to_peer_ok

    console = make_console(stderr=True)
    if args.tui:
        console.print(styled(("sdft train:", "bold red"), " --tui with --gpus: the processes train headless; follow "
                             "and steer the run from another terminal with `sdft watch RUN_DIR`"))
        return ExitCode.USAGE
    gpus, note = probe_gpus_nvidia_smi()
    try:
        count = gpu_count_wanted(args.gpus, len(gpus))
    except LaunchError as exc:
        console.print(styled(("sdft train:", "bold red"), f" {exc}" + (f" ({note})" if note and not gpus else "")))
        return ExitCode.USAGE
    plan = launch_plan(train_arguments(args), count, {name: getattr(args, name) for name in MULTI_NODE},
                       peer_to_peer_ok() if count > 1 else None)
    for line in plan.notes:
        console.print(styled(("sdft train:", "yellow"), f" {line}"))
    console.print(f"sdft train: starting {count} processes (one per GPU) through accelerate launch")
    return run_processes(plan, args.config)


def run_processes(plan, config) -> int:
    """Run a launch plan (engine/launch.py) of ``sdft train CONFIG`` and return the run's exit code."""
    from engine.config.problems import ConfigError
    from engine.config.run_toml import load_run_file
    from engine.launch import run_launch

    try:
        run_dir = load_run_file(config)[0].run_dir()
    except ConfigError as exc:
        print_problems(exc.problems)
        return ExitCode.USAGE
    started = time.time()
    code = run_launch(plan, run_dir)
    return launched_exit_code(run_dir, code, started)


def launched_exit_code(run_dir: Path, launcher_code: int, since: float) -> int:
    """The run's own exit code (0, 3, 130) from the end it wrote to events.jsonl after ``since``:
    the launcher's code says only whether a process did not exit 0. The launcher's code when the
    run wrote no end (a bad file: 2; a crash)."""
    from engine.events import RunFinished, read_events
    from engine.vocabulary import exit_code_for

    events = Path(run_dir) / "events.jsonl"
    try:
        finished = [e for e in read_events(events) if isinstance(e, RunFinished) and e.time >= since] \
            if events.is_file() else []
    except OSError:
        finished = []
    return int(exit_code_for(finished[-1].status)) if finished else launcher_code


def train_arguments(args) -> list[str]:
    """``sdft train``'s arguments for each launched process: the same, less the launch options."""
    out = [str(args.config)]
    if args.resume:
        out += ["--resume", args.resume]
    for flag in ("restart", "allow_changed", "tui", "detached"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    return out


def stopped_exit_code() -> int:
    """130 for a stopped run; 0 in a process of a multi-process run, because torch's launcher takes
    any other code for a crash and kills the other processes, which may still be writing the state.
    ``sdft train --gpus`` reads the run's own ending and exits 130 (launched_exit_code)."""
    from engine.train.distributed import is_distributed

    return ExitCode.OK if is_distributed() else ExitCode.STOPPED


def train_headless(config: str | Path, *, resume: str | None = None, allow_changed: bool = False,
                   detached: bool = False, restart: bool = False) -> int:
    from engine.config.problems import ConfigError
    from engine.console import ConsoleSink, make_console, styled
    from engine.control import RunControl

    console = make_console()
    try:
        from engine.config.run_toml import load_run_file

        load_run_file(config)  # fail fast, before torch loads, with every problem listed
    except ConfigError as exc:
        print_problems(exc.problems)
        return ExitCode.USAGE
    from engine.atomic import WriteFailed
    from engine.runlock import RunFolderBusy
    from engine.runner import run_training

    control = RunControl()
    sink = ConsoleSink(console)
    try:
        with stop_on_signals(control, console, detached=detached):
            result = run_training(config, sink=sink, control=control, resume=resume, allow_changed=allow_changed,
                                  restart=restart)
    except ConfigError as exc:
        print_problems(exc.problems)
        return ExitCode.USAGE
    except RunFolderBusy as exc:
        make_console(stderr=True).print(styled(("sdft train:", "bold red"), f" {exc}"))
        return ExitCode.BUSY
    except WriteFailed as exc:   # before the first step (config.toml, the event log): nothing trained yet
        make_console(stderr=True).print(styled(("sdft train:", "bold red"), f" {exc}; nothing was trained"))
        return ExitCode.FAILED
    finally:
        sink.close()
    if result.status == RunStatus.COMPLETED:
        return ExitCode.OK
    if result.status == RunStatus.STOPPED:
        return stopped_exit_code()
    if result.log_path:
        console.print(f"details: {result.log_path}")
    return ExitCode.FAILED


# ------------------------------------------------------------------ demo


def cmd_demo(args) -> int:
    from engine.console import make_console, styled
    from engine.demo import demo_exists, prepare_demo

    if not args.headless and _interactive() and _has_wizard():
        return open_wizard(prepare_demo(args.dir, steps=args.steps, force=args.force), demo=True)
    from engine.quiet import quiet_libraries

    quiet_libraries()
    console = make_console()
    if demo_exists(args.dir) and not args.force:
        steps = f"; max_train_steps set to {args.steps}" if args.steps is not None else ""
        console.print(f"reusing the demo in {args.dir}: its images, model and demo.toml (with your edits) are kept"
                      f"{steps}; --force makes them anew")
    else:
        console.print(f"preparing the demo in {args.dir} (generated images + a tiny random model)...")
    toml_path = prepare_demo(args.dir, steps=args.steps, force=args.force)
    console.print(f"run TOML: {toml_path}")
    code = train_headless(toml_path, restart=True)   # a second demo starts over; the first is kept (earlier/)
    if code == ExitCode.OK:
        checkpoint = Path(args.dir) / "runs" / "demo" / "checkpoints" / "demo.safetensors"
        console.print(styled(("demo finished.", "bold"), f" Fine-tuned model: {checkpoint}"))
        console.print(f"Edit {toml_path} and train it again with `sdft train {toml_path} --restart` (the run so far "
                      "is kept in its earlier/ folder), or run `sdft` for the wizard.")
    return code


def _has_wizard() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("sdft_tui.app") is not None
    except ModuleNotFoundError:
        return False


# ------------------------------------------------------------------ bench and plan


def cmd_bench(args) -> int:
    from engine.bench.commands import bench_command

    return bench_command(args)


def cmd_plan(args) -> int:
    from engine.config.problems import ConfigError
    from engine.config.run_toml import load_run_file

    try:
        config, _doc, _warnings = load_run_file(args.config)
    except ConfigError as exc:
        print_problems(exc.problems)
        return ExitCode.USAGE
    try:
        from engine.plan import plan_report
    except ImportError:
        print("sdft plan: the VRAM planner is not available in this installation", file=sys.stderr)
        return ExitCode.USAGE
    print(planned_model_line(config))
    try:
        print(plan_report(config, vram_gb=args.vram, processes=max(1, args.gpus)))
    except ValueError as exc:   # what the planner has no figures for (an SDXL hypernetwork, ...)
        print(f"sdft plan: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


def planned_model_line(config) -> str:
    """Which model ``sdft plan`` planned for, read from its headers (no weights loaded); the
    planner's figures are for a full-size model of that family, which a small test model is not."""
    from engine.config.problems import ProblemList
    from engine.families import family
    from engine.preflight.model import probe_model

    probe = probe_model(config, ProblemList(file=""))
    source = config.model.pretrained_model_name_or_path
    if probe.small:
        return (f"Model: {source}: {probe.label()}; the figures below are for a full-size "
                f"{family(probe.family or 'sd1').label} model, far more than this one needs.")
    return f"Model: {source}: {probe.label()}."


if __name__ == "__main__":
    sys.exit(main())
