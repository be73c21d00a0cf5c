"""`sdft train RUN.toml --gpus N`: one command starts N processes through accelerate's launcher
(docs/many-gpus.md). The launcher runs ``engine.cli train`` again in each process, with the same
arguments less ``--gpus`` and the multi-node options it takes itself.

Torch-free: it counts GPUs with nvidia-smi (engine/hardware.py) and starts a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

# sdft's spelling -> accelerate launch's, for the options passed through for several machines.
MULTI_NODE = {"num_machines": "--num_machines", "machine_rank": "--machine_rank",
              "main_process_ip": "--main_process_ip", "main_process_port": "--main_process_port"}


class LaunchError(ValueError):
    """The --gpus request cannot be met here (said with what to do)."""


@dataclass(frozen=True)
class Launch:
    processes: int
    argv: list[str]                          # the launcher's command line
    env: dict[str, str] = field(default_factory=dict)   # variables added for the processes
    notes: tuple[str, ...] = ()


def gpu_count_wanted(value: str, visible: int) -> int:
    """``--gpus N`` or ``--gpus all`` against the GPUs this machine shows."""
    if visible == 0:
        raise LaunchError("--gpus needs CUDA GPUs, and none is visible here (nvidia-smi lists none); "
                          "train without --gpus, or check the driver and CUDA_VISIBLE_DEVICES")
    if value == "all":
        return visible
    try:
        count = int(value)
    except ValueError:
        raise LaunchError(f"--gpus {value!r}: give a number of GPUs or 'all'") from None
    if count < 1:
        raise LaunchError(f"--gpus {count}: give at least 1")
    if count > visible:
        raise LaunchError(f"--gpus {count}: this machine shows {visible} GPU(s); use --gpus {visible} or --gpus all")
    return count


def launch_plan(train_args: list[str], processes: int, multi_node: dict, p2p_ok: bool | None,
                command: str = "train") -> Launch:
    """The accelerate launch command that runs ``engine.cli COMMAND`` (train, or bench) with
    ``train_args`` in ``processes`` processes; ``p2p_ok`` False (GeForce cards without
    peer-to-peer) adds NCCL_P2P_DISABLE=1, as NCCL otherwise hangs or crawls on them."""
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    for name, flag in MULTI_NODE.items():
        if multi_node.get(name) is not None:
            argv += [flag, str(multi_node[name])]
    argv += ["-m", "engine.cli", command, *train_args]
    env, notes = {}, []
    if p2p_ok is False and "NCCL_P2P_DISABLE" not in os.environ:
        env["NCCL_P2P_DISABLE"] = "1"
        notes.append("these GPUs cannot reach each other directly (nvidia-smi topo -p2p r: not supported); "
                     "NCCL_P2P_DISABLE=1 is set so NCCL goes through host memory instead of hanging")
    return Launch(processes, argv, env, tuple(notes))


def peer_to_peer_ok(timeout: float = 5.0) -> bool | None:
    """Whether every pair of visible GPUs can read each other's memory (``nvidia-smi topo -p2p r``):
    None when it cannot be asked."""
    import shutil

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "topo", "-p2p", "r"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return parse_p2p_matrix(done.stdout)


def parse_p2p_matrix(text: str) -> bool | None:
    """The matrix's verdict: False when a pair is not supported (NS) or blocked (CNS, TNS), True
    when every pair says OK, None when there is no matrix (one GPU)."""
    cells = [cell for line in text.splitlines() if line.strip().startswith("GPU")
             for cell in line.split()[1:] if cell != "X"]
    cells = [c for c in cells if not c.startswith("GPU")]
    if not cells:
        return None
    return all(c == "OK" for c in cells)


def run_launch(plan: Launch, run_dir, say=print) -> int:
    """Start the processes and wait; the launcher's exit code.

    The launcher runs in a session of its own, so a Ctrl-C in the terminal reaches this process
    alone: the first asks the run to stop through its control.json (every process agrees on the
    step and the main one writes the state, however long that takes); a second interrupts the
    launcher (no state). torch's launcher, hit by the terminal's Ctrl-C itself, would kill
    processes still writing their state after 30 s. SIGTERM and SIGHUP stop as the first Ctrl-C."""
    import signal

    from engine.control_file import send_request
    from engine.stop_signals import AGAIN_TO_ABORT, StopSignals

    env = {**os.environ, **plan.env}
    process = subprocess.Popen(plan.argv, env=env, start_new_session=True)

    def stop(name: str) -> None:
        send_request(run_dir, "stop", by=name)
        say(f"sdft train: {name}: every process stops at the next step and a resumable state is saved "
            f"({AGAIN_TO_ABORT})")

    def abort() -> None:
        say("sdft train: aborting without saving")
        os.killpg(process.pid, signal.SIGINT)

    with StopSignals(stop, on_abort=abort):
        return process.wait()
