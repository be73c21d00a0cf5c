"""What atomic writes promise (engine/atomic.py), watched from outside: a reader polling the target
while a slow write runs sees the old file or the whole new one, never a part; a write that fails
half-way leaves the old file as it was and no temporary file behind."""

from __future__ import annotations

import threading
import time

import pytest

from engine import atomic

OLD, NEW = b"old contents\n" * 50, b"new contents, longer than the old ones\n" * 200


def _slow_writer(tmp, data: bytes, chunks: int = 40, fail_at: int | None = None) -> None:
    step = len(data) // chunks + 1
    with open(tmp, "wb") as fh:
        for i in range(chunks):
            if fail_at is not None and i == fail_at:
                raise OSError(28, "No space left on device")
            fh.write(data[i * step:(i + 1) * step])
            fh.flush()
            time.sleep(0.002)


def _watch(target, seen: list, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            seen.append(target.read_bytes())
        except FileNotFoundError:
            seen.append(None)


def test_a_reader_never_sees_a_partial_file(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(OLD)
    seen, stop = [], threading.Event()
    reader = threading.Thread(target=_watch, args=(target, seen, stop))
    reader.start()
    try:
        with atomic.atomic_path(target) as tmp:
            _slow_writer(tmp, NEW)
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 10 and set(seen) <= {OLD, NEW}
    assert target.read_bytes() == NEW


def test_a_write_that_fails_half_way_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(OLD)
    with pytest.raises(atomic.WriteFailed, match="state.pt"):
        with atomic.atomic_path(target) as tmp:
            _slow_writer(tmp, NEW, fail_at=10)
    assert target.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]     # no temporary file left


def test_write_text_replaces_a_file_in_one_step(tmp_path):
    target = tmp_path / "config.toml"
    atomic.write_text(target, "a = 1\n")
    atomic.write_text(target, "a = 2\n")
    assert target.read_text() == "a = 2\n" and len(list(tmp_path.iterdir())) == 1
