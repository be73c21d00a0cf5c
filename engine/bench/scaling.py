"""`sdft bench RUN.toml --gpus N`: does training speed up with more GPUs? (docs/many-gpus.md)

The plain bench (engine/bench/speed.py) runs once in this process on one GPU, then in N processes
started by accelerate's launcher, each at the run file's batch size (so N times the global batch).
Scaling efficiency is the N-process samples/s over N times the one-process figure; below 80 % per
GPU the GPUs spend their time waiting for each other (a slow link, no peer-to-peer, a tiny batch)
and the report says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

LOW_EFFICIENCY = 0.80


def scaling_report(config: str | Path, processes: int, steps: int, warmup: int, *, p2p_ok=None,
                   progress=None) -> dict:
    from engine.bench.speed import run_bench
    from engine.launch import launch_plan

    say = progress or (lambda _text: None)
    say(f"sdft bench --gpus {processes}: timing 1 process")
    one = run_bench(config, steps=steps, warmup=warmup, progress=say)
    with tempfile.TemporaryDirectory(prefix="sdft-bench-") as folder:
        out = Path(folder) / "many.json"
        args = [str(config), "--steps", str(steps), "--warmup", str(warmup), "--json-out", str(out)]
        plan = launch_plan(args, processes, {}, p2p_ok, command="bench")
        say(f"sdft bench --gpus {processes}: timing {processes} processes")
        done = subprocess.run(plan.argv, env={**os.environ, **plan.env}, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise RuntimeError(f"the {processes}-process bench failed: " + " / ".join(tail))
        many = json.loads(out.read_text())
    return scaling_figures(one, many, processes, plan.notes)


def scaling_figures(one: dict, many: dict, processes: int, notes=()) -> dict:
    efficiency = many["engine_samples_per_s"] / (processes * one["engine_samples_per_s"])
    report = {"processes": processes, "one": one, "many": many, "efficiency": efficiency, "notes": list(notes)}
    if efficiency < LOW_EFFICIENCY:
        report["warning"] = (f"{processes} processes train at {efficiency:.0%} of {processes} times one process's "
                             "speed: the GPUs wait for each other. Larger batches per GPU, NVLink or peer-to-peer "
                             "access, or fewer GPUs may serve better (docs/many-gpus.md)")
    return report
