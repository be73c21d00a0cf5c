"""One owner per run folder: a second run is refused with who holds it; a dead owner's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import forked_sdft
import pytest
from train_helpers import make_run

from engine.runlock import LOCK_NAME, RunFolderBusy, RunLock, read_holder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

HOLD = """
import sys, time
from engine.runlock import RunLock
with RunLock(sys.argv[1], "sdft train"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_live_holder_in_another_process_is_refused_with_its_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy) as busy:
            RunLock(tmp_path, "sdft train").acquire()
        assert busy.value.holder.pid == holder.pid
        message = str(busy.value)
        assert f"PID {holder.pid}" in message and f"sdft watch {tmp_path}" in message
        assert f"kill -INT {holder.pid}" in message
        assert read_holder(tmp_path).pid == holder.pid, "watchers see the holder without taking the lock"
    finally:
        holder.kill()
        holder.wait()
    # Killed without a chance to clean up: its record stays, the kernel released the flock.
    with RunLock(tmp_path, "sdft train") as lock:
        assert lock.took_over is not None and lock.took_over.pid == holder.pid
    assert read_holder(tmp_path) is None, "a clean release leaves no record behind"
    with RunLock(tmp_path, "sdft train") as lock:
        assert lock.took_over is None


def test_a_lock_is_released_by_an_exception_in_its_block(tmp_path):
    with pytest.raises(ValueError):
        with RunLock(tmp_path, "sdft train"):
            raise ValueError("boom")
    with RunLock(tmp_path, "sdft train") as lock:  # same process, new file description
        assert lock.took_over is None


@pytest.mark.slow
def test_second_sdft_train_on_a_running_folder_refuses_and_leaves_it_intact(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=10_000)
    run_dir = tmp_path / "runs" / "t"
    # Real processes, forked from a server that imported the libraries once (tests/forked_sdft.py).
    first = forked_sdft.start(["train", str(config)], env=ENV, stderr=forked_sdft.STDOUT)
    try:
        events = run_dir / "events.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and not (events.exists() and '"event": "step"' in events.read_text()):
            time.sleep(0.2)
        config_before = (run_dir / "config.toml").read_text()
        lines_before = len(events.read_text().splitlines())
        second = forked_sdft.run(["train", str(config)], env=ENV, timeout=240)
        assert second.returncode == 4, second.stdout + second.stderr   # its own code: not a bad file (2)
        assert f"in use by sdft train (PID {first.pid}" in second.stderr
        assert f"sdft watch {run_dir}" in second.stderr
        assert (run_dir / "config.toml").read_text() == config_before
        assert len(events.read_text().splitlines()) >= lines_before, "the first run's event log was not cut"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert (run_dir / LOCK_NAME).read_text().strip(), "a killed run leaves its record"
    # the killed run's steps are its history: a new start in its folder says --restart
    taken = forked_sdft.run(["train", str(make_run(tmp_path, tiny_sd1, steps=1, name="short.toml")), "--restart"],
                            env=ENV, timeout=240)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert f"took over {run_dir} from sdft train (PID {first.pid}" in taken.stdout


def test_cache_prune_refuses_while_a_run_sharing_the_cache_is_live(tmp_path, capsys):
    from engine.train.cache_cli import cache_command

    run = tmp_path / "mine.toml"
    run.write_text('[model]\npretrained_model_name_or_path = "m"\n[train]\noutput_dir = "out"\n'
                   'output_name = "mine"\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img"\n'
                   'metadata_file = "meta.json"\n', encoding="utf-8")
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "img").mkdir()
    stale = tmp_path / "out" / ".latent-cache" / "bb" / ("b" * 64 + ".safetensors")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    other = tmp_path / "out" / "other"   # another run caching into the same shared cache, no manifest yet
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(other)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cache_command(["prune", str(run)]) == 4   # the busy-folder code (docs/run-folder.md)
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and str(other) in err and "Prune when it has finished" in err
        assert stale.exists(), "nothing is deleted while a run may be caching"
        assert cache_command(["prune", str(run), "--dry-run"]) == 0, "a dry run only reads"
    finally:
        holder.kill()
        holder.wait()
    assert cache_command(["prune", str(run)]) == 0
    assert not stale.exists()
