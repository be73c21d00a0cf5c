"""`sdft bench` on the console: the plain bench, `--matrix`, `--gpu-report`, `--gpu-smoke`, `--gpus`
and `--learning`. Progress lines go to stderr as the bench works, so `--json` keeps stdout to one
JSON object. Nothing heavy is imported
until a command runs (`sdft bench --help` stays instant)."""

from __future__ import annotations

import json
import sys

from engine.vocabulary import ExitCode

# Timed and warm-up steps when the command line does not say: (steps, warmup).
DEFAULT_STEPS = {"plain": (20, 3), "matrix": (5, 2), "gpu-report": (5, 3), "gpu-smoke": (30, 0)}
# --gpu-report and --gpu-smoke fit a 7-minute slice of a lent GPU, counted from the process's
# start (imports and the model build included); 30 s are left for the last cell's overrun and the
# final write.
GPU_SLICE_BUDGET_S = 390.0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _steps(args, kind: str) -> tuple[int, int]:
    steps, warmup = DEFAULT_STEPS[kind]
    return (args.steps if args.steps is not None else steps), (args.warmup if args.warmup is not None else warmup)


def _run_file(args):
    if args.config is not None:
        return args.config
    from engine.demo import prepare_demo

    return prepare_demo("sdft-demo")


def bench_command(args) -> int:
    from engine.busy import CpuUseWindow, measure_other_cpu_use
    from engine.threads import apply_thread_policy

    try:
        axes = _axes(args)          # a mistyped --axis is said before anything is measured
    except ValueError as exc:
        say(f"sdft bench: {exc}")
        return ExitCode.USAGE
    say(f"sdft bench: {apply_thread_policy().describe()}")   # the same threads a run uses
    before = measure_other_cpu_use(0.5)     # say it at once: the user may want to wait
    if before is not None and before.warning():
        say(f"sdft bench: warning: {before.warning()}")
    window = CpuUseWindow()
    if getattr(args, "learning", None) or getattr(args, "score", None):
        code = learning_command(args)
    elif getattr(args, "gpus", None):
        code = scaling_command(args)
    elif getattr(args, "gpu_report", None):
        code = gpu_report_command(args, axes)
    elif getattr(args, "gpu_smoke", None):
        code = gpu_smoke_command(args)
    elif getattr(args, "matrix", False) or getattr(args, "axis", None):
        code = matrix_command(args, axes)
    else:
        code = plain_command(args)
    during = window.finish()
    if during is not None and during.warning():
        say(f"sdft bench: warning: {during.warning()}")
    return code


def scaling_command(args) -> int:
    from engine.hardware import probe_gpus_nvidia_smi
    from engine.launch import LaunchError, gpu_count_wanted, peer_to_peer_ok

    gpus, _note = probe_gpus_nvidia_smi()
    try:
        count = gpu_count_wanted(args.gpus, len(gpus))
    except LaunchError as exc:
        say(f"sdft bench: {exc}")
        return ExitCode.USAGE
    return show_scaling(args, count, peer_to_peer_ok() if count > 1 else None)


def show_scaling(args, processes: int, p2p_ok) -> int:
    from engine.bench.scaling import scaling_report

    steps, warmup = _steps(args, "plain")
    report = scaling_report(_run_file(args), processes, steps, warmup, p2p_ok=p2p_ok, progress=say)
    if args.json:
        print(json.dumps(report))
        return ExitCode.OK
    one, many = report["one"], report["many"]
    print(f"1 process:  {one['engine_samples_per_s']:.2f} samples/s")
    print(f"{processes} processes: {many['engine_samples_per_s']:.2f} samples/s "
          f"({report['efficiency']:.0%} of {processes}x one process)")
    for line in report["notes"] + ([report["warning"]] if "warning" in report else []):
        say(f"sdft bench: warning: {line}")
    return ExitCode.OK


def plain_command(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from engine.bench.speed import run_bench

    config = _run_file(args)
    steps, warmup = _steps(args, "plain")
    result = run_bench(config, steps=steps, warmup=warmup, progress=say)
    from engine.train.distributed import is_main_process

    if not is_main_process():   # one of `sdft bench --gpus N`'s processes: the main one reports
        return ExitCode.OK
    if args.json_out:
        from engine.bench.speed_report import write_json

        write_json(result, args.json_out)
    if args.json:
        print(json.dumps(result))
        return ExitCode.OK
    table = Table(title=f"sdft bench: {config} on {result['device']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("engine steps/s", f"{result['engine_steps_per_s']:.3f}")
    table.add_row("engine samples/s", f"{result['engine_samples_per_s']:.3f}")
    table.add_row("bare loop samples/s", f"{result['bare_samples_per_s']:.3f}")
    table.add_row("engine overhead", f"{result['engine_overhead'] * 100:+.1f}%")
    table.add_row("attention that ran", result["attention"])
    if result.get("peak_memory_bytes"):
        table.add_row("peak memory", f"{result['peak_memory_bytes'] / 2**30:.2f} GiB")
    if result.get("mfu") is not None:
        table.add_row("model FLOP utilisation", f"{result['mfu'] * 100:.1f}%")
    Console().print(table)
    return ExitCode.OK


def _axes(args):
    """The axes --axis names (each KEY=V1,V2), else None for the default ones."""
    from engine.bench.speed_cells import parse_axis

    return tuple(parse_axis(text) for text in args.axis) if args.axis else None


def matrix_command(args, axes) -> int:
    from engine.bench.speed_matrix import MatrixPlan, run_matrix
    from engine.bench.speed_report import print_table, write_json
    from engine.config.problems import ConfigError
    from engine.console import print_problems

    steps, warmup = _steps(args, "matrix")
    plan = MatrixPlan(_run_file(args), steps=steps, warmup=warmup, budget_s=args.budget)
    if axes:
        plan.axes = axes
    try:
        report = run_matrix(plan, progress=say)
    except ConfigError as exc:
        print_problems(exc.problems)
        return ExitCode.USAGE
    if args.json_out:
        say(f"sdft bench: figures written to {write_json(report, args.json_out)}")
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print_table(report)
    return ExitCode.OK


def process_started() -> float:
    """The ``time.perf_counter()`` reading at this process's start, so a time budget counts the
    imports too (psutil, which accelerate already needs, knows the start time)."""
    import time

    import psutil

    since = max(0.0, time.time() - psutil.Process().create_time())
    return time.perf_counter() - since


def _budget(args) -> float:
    return args.budget if args.budget is not None else GPU_SLICE_BUDGET_S


def gpu_report_command(args, axes) -> int:
    from engine.bench.gpu_report import ReportSize, gpu_report

    steps, warmup = _steps(args, "gpu-report")
    size = ReportSize(model=args.report_model, resolution=args.report_resolution)
    report = gpu_report(args.gpu_report, size=size, steps=steps, warmup=warmup, budget_s=_budget(args), axes=axes,
                        progress=say, started=process_started())
    if args.json:
        print(json.dumps(report, default=str))
    return ExitCode.OK


def gpu_smoke_command(args) -> int:
    from engine.bench.gpu_smoke import gpu_smoke, smoke_failed

    steps, _warmup = _steps(args, "gpu-smoke")
    report = gpu_smoke(args.gpu_smoke, model=args.report_model, resolution=args.report_resolution, steps=steps,
                       budget_s=_budget(args), started=process_started(), progress=say)
    say(f"sdft bench --gpu-smoke: wrote {args.gpu_smoke}/gpu-smoke.md and gpu-smoke.json")
    if args.json:
        print(json.dumps(report, default=str))
    return ExitCode.FINDINGS if smoke_failed(report) else ExitCode.OK


def learning_command(args) -> int:
    """`--learning [OUT_DIR]`, or `--learning OUT_DIR --score FILE --family F`: engine/bench/learning.py."""
    from pathlib import Path

    from engine.bench.learning import LearningBenchError, LearningSettings, run_learning_bench, score_trained_file
    from engine.bench.runs import Recipe
    from engine.config.problems import ConfigError

    families = tuple(dict.fromkeys(args.family)) if args.family else LearningSettings().families
    if args.steps is not None and args.steps < 1:
        say("sdft bench --learning: --steps must be 1 or more")
        return ExitCode.USAGE
    if args.seed < 0:
        say("sdft bench --learning: --seed must be 0 or more")
        return ExitCode.USAGE
    steps = args.steps or Recipe().steps
    recipe = Recipe(steps=steps, validate_every=min(Recipe().validate_every, steps), seed=args.seed)
    settings = LearningSettings(families=families, recipe=recipe)
    try:
        if args.score:
            if args.learning is None or not args.family or len(families) != 1:
                say("sdft bench --score FILE needs --learning OUT_DIR (the folder a learning bench wrote) and one "
                    "--family (sd1, sd2, sd2-v or sdxl), e.g. sdft bench --learning sdft-learning --family sd1 --score "
                    "kohya.safetensors")
                return ExitCode.USAGE
            label = args.label or Path(args.score).stem
            report = score_trained_file(args.learning, args.score, families[0], label)
            say(f"sdft bench --learning: {label} ({families[0]}): {learning_summary(report)}")
            unhealthy = _say_findings(label, report["findings"])
        else:
            report = run_learning_bench(args.learning, settings, say=say)
            unhealthy = False
            for row in report["families"]:
                say(f"  {row['label']}: {learning_summary(row['trained'], row['untrained'])}")
                unhealthy |= _say_findings(row["label"], row["findings"])
    except ConfigError as exc:
        from engine.console import print_problems

        print_problems(exc.problems)
        return ExitCode.USAGE
    except LearningBenchError as exc:
        say(f"sdft bench --learning: {exc}")
        return ExitCode.FAILED
    except ValueError as exc:   # a damaged or missing OUT_DIR, a file that does not fit the model
        say(f"sdft bench --learning: {exc}")
        return ExitCode.USAGE
    if args.json:
        print(json.dumps(report, default=str))
    return ExitCode.FINDINGS if unhealthy else ExitCode.OK


def _say_findings(label: str, findings: list[str]) -> bool:
    """Each way a result is unhealthy (engine/bench/health.py), as a warning; True if there were any."""
    for text in findings:
        say(f"sdft bench --learning: warning: {label}: {text}")
    return bool(findings)


def learning_summary(trained: dict, untrained: dict | None = None) -> str:
    """One line: validation loss and adherence of a scored model (from the untrained one when given)."""
    loss = f"{trained['validation_loss']:.4f}"
    if untrained is not None:
        loss = f"{untrained['validation_loss']:.4f} -> {loss}"
    sdft, pipe = trained["adherence_sdft"], trained["adherence_diffusers"]
    return (f"validation loss {loss}; adherence {sdft['accuracy'] * 100:.0f}% (sdft's sampler), "
            f"{pipe['accuracy'] * 100:.0f}% (diffusers' pipeline), chance {sdft['chance'] * 100:.3g}%")
