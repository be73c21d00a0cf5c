"""Two processes on the CPU (gloo), as `accelerate launch` / torchrun run a multi-GPU job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from train_helpers import make_run


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:            # a free port for the gloo rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "sdft_tui.cli", "train", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "t"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    started = [e for e in events if e["event"] == "run_started"]
    assert len(started) == 1                       # only the main process writes events
    # 6 images in 3 batches of 2, split over 2 processes: ceil(3 / 2) = 2 steps per epoch.
    assert started[0]["steps_per_epoch"] == 2
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    assert (run_dir / "checkpoints" / "t.safetensors").is_file()
    assert result.stdout.count("done at step 3") == 1
