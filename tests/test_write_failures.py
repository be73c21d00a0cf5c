"""A full disk at any write site: the failure names the file and the free space, says what was
kept, and the run ends as a failure (exit 3) without a traceback."""

from __future__ import annotations

import errno
import os
import subprocess

import forked_sdft
import pytest
import safetensors.torch
import torch
from PIL import Image
from train_helpers import make_run

from engine.events import ListSink
from engine.runner import run_training
from engine.train.saves import state as state_module

SAVE_EVERY_STEP = "every_n_steps = 1\nstate = true\nlast_n_states = 3\n"


def inject_disk_full(monkeypatch, fails):
    """Every writer sdft uses (safetensors, torch.save, PIL) raises ENOSPC where ``fails(path)``."""
    calls = []

    def guard(original, path_of):
        def wrapper(*args, **kwargs):
            path = str(path_of(*args, **kwargs))
            calls.append(path)
            if fails(path, calls):
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(safetensors.torch, "save_file", guard(safetensors.torch.save_file, lambda t, f, **k: f))
    monkeypatch.setattr(state_module, "save_file", guard(state_module.save_file, lambda t, f, **k: f))
    monkeypatch.setattr(torch, "save", guard(torch.save, lambda obj, f, *a, **k: f))
    monkeypatch.setattr(Image.Image, "save", guard(Image.Image.save, lambda self, f, *a, **k: f))
    return calls


def _failed(result):
    assert result.status == "failed", result.message
    assert "could not write" in result.message and "free on that disk" in result.message, result.message
    return result.message


def test_model_save(tmp_path, tiny_sd1, monkeypatch):
    config = make_run(tmp_path, tiny_sd1, steps=2, save_extra=SAVE_EVERY_STEP)
    inject_disk_full(monkeypatch, lambda path, _calls: "/checkpoints/.t.safetensors." in path)  # the final model
    message = _failed(run_training(config))
    assert "checkpoints" in message and "No space left on device" in message
    assert "the last state is step 1 in" in message


def test_state_save(tmp_path, tiny_sd1, monkeypatch):
    config = make_run(tmp_path, tiny_sd1, steps=3, save_extra=SAVE_EVERY_STEP)
    inject_disk_full(monkeypatch, lambda path, _calls: "t-step00000002-state" in path and path.endswith("optimizer.pt"))
    message = _failed(run_training(config))
    assert "t-step00000002-state/optimizer.pt" in message and ".tmp" not in message, message
    assert "the last state is step 1 in" in message
    assert not list((tmp_path / "runs" / "t" / "state").glob("*.tmp")), "no half-written state is left"


def test_latent_cache_stops_at_once_and_keeps_what_was_cached(tmp_path, tiny_sd1, monkeypatch):
    config = make_run(tmp_path, tiny_sd1, steps=1)
    cache_writes = []

    def third_cache_write_and_later(path, _calls):
        if ".latent-cache" in path:
            cache_writes.append(path)
            return len(cache_writes) >= 3
        return False

    inject_disk_full(monkeypatch, third_cache_write_and_later)
    message = _failed(run_training(config))
    assert ".latent-cache" in message and "kept: the latents cached so far" in message
    monkeypatch.undo()
    sink = ListSink()
    assert run_training(config, sink=sink).status == "completed"
    assert any(e.kind == "message" and "latent cache: 2 reused" in e.text for e in sink.events), \
        [e.text for e in sink.events if e.kind == "message"]


def test_sample_image(tmp_path, tiny_sd1, monkeypatch):
    config = make_run(tmp_path, tiny_sd1, steps=2,
                      save_extra='[sample]\nevery_n_steps = 1\nprompts = ["a cat --w 64 --h 64 --s 1"]\n')
    inject_disk_full(monkeypatch, lambda path, _calls: "/samples/" in path and ".png" in path)
    message = _failed(run_training(config))
    assert "samples" in message and ".png" in message


SMALL_FS_MB = 40


@pytest.fixture()
def small_filesystem(tmp_path):
    """A real 40 MB filesystem: room for one model and one state of the tiny model, not two."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_MB}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_real_full_disk_ends_with_exit_3_no_traceback_and_the_last_state_named(tmp_path, tiny_sd1,
                                                                                  small_filesystem):
    config = make_run(tmp_path, tiny_sd1, steps=4, save_extra=SAVE_EVERY_STEP)
    config.write_text(config.read_text().replace('output_dir = "runs"', f'output_dir = "{small_filesystem}"'))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A real process (its exit status, all it printed), forked with the libraries imported (tests/forked_sdft.py).
    done = forked_sdft.run(["train", str(config)], env=env, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "Traceback" not in output
    log = small_filesystem / "t" / "sdft.log"
    assert "could not write" in output and "free on that disk" in output and str(small_filesystem) in output, output + (log.read_text() if log.exists() else "")
    assert "the last state is step 1 in" in output, output


def test_a_failed_write_before_the_first_step_exits_3_naming_the_file(tmp_path, tiny_sd1, monkeypatch, capsys):
    from engine import atomic
    from engine.cli import train_headless
    from engine.vocabulary import ExitCode

    config = make_run(tmp_path, tiny_sd1, steps=1)
    real = atomic.write_text

    def full_for_config_toml(target, text, *args):
        if str(target).endswith("config.toml"):
            raise atomic.WriteFailed(target, OSError(errno.ENOSPC, "No space left on device"))
        return real(target, text, *args)

    monkeypatch.setattr(atomic, "write_text", full_for_config_toml)
    assert train_headless(config) == ExitCode.FAILED
    err = capsys.readouterr().err
    assert "could not write" in err and "config.toml" in err and "nothing was trained" in err, err
