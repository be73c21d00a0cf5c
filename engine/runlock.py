"""One owner per run folder.

Two ``sdft train`` on one folder would overwrite each other's ``config.toml``, event log,
checkpoints and states. Whoever writes a run folder (training headless or in the dashboard,
``sdft cache``) first takes its lock: an advisory ``flock`` on ``<run_dir>/.sdft.lock``,
which the kernel releases when the process ends however it ends, plus a record inside the
file of who holds it (PID, host, start time, command) so a refusal can say who and what to
do. ``sdft watch`` only reads and takes no lock.

A record left by a process that is gone (killed, machine rebooted) is stale: the next owner
takes the folder over and says so. Where ``flock`` is not available, the record alone
decides, by checking whether its process still lives on this host (a weaker guarantee).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: the record alone decides
    fcntl = None

LOCK_NAME = ".sdft.lock"


@dataclass(frozen=True)
class LockRecord:
    """Who holds a run folder."""

    pid: int
    host: str
    started: float          # time.time() when the lock was taken
    command: str

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"{self.command} (PID {self.pid} on {self.host}, since {since})"


class RunFolderBusy(Exception):
    """Another live process owns the run folder."""

    def __init__(self, run_dir: Path, holder: LockRecord | None):
        self.run_dir, self.holder = Path(run_dir), holder
        who = holder.describe() if holder else "another process (no record of which)"
        stop = (f"stop it with `kill -INT {holder.pid}` on {holder.host} (it saves a resumable state)"
                if holder else "stop the other run first")
        super().__init__(f"the run folder {self.run_dir} is in use by {who}. Watch it with "
                         f"`sdft watch {self.run_dir}`, {stop}, or set another train.output_name.")


class RunLock:
    """``with RunLock(run_dir, "sdft train") as lock:`` holds the folder for the block.

    Raises :class:`RunFolderBusy` when a live process holds it. ``lock.took_over`` is the
    stale record that was replaced, if any, so the caller can say so.
    """

    def __init__(self, run_dir: str | os.PathLike, command: str):
        self.run_dir, self.command = Path(run_dir), command
        self.path = self.run_dir / LOCK_NAME
        self.took_over: LockRecord | None = None
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunFolderBusy(self.run_dir, _read_record(fd)) from None
            previous = _read_record(fd)
            # With flock the kernel is the authority: a record we could lock over is stale even
            # if its PID has been reused since. Without flock, the record's process decides.
            if fcntl is None and previous is not None and previous.pid != os.getpid() and _alive(previous):
                raise RunFolderBusy(self.run_dir, previous)
            self.took_over = previous if previous is not None and previous.pid != os.getpid() else None
            record = LockRecord(os.getpid(), socket.gethostname(), time.time(), self.command)
            _write_record(fd, json.dumps(asdict(record)))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Clear the record (a clean exit leaves nothing stale) and let go of the folder."""
        if self._fd is None:
            return
        try:
            _write_record(self._fd, "")
        except OSError:
            pass  # the folder may be gone or the disk full; the flock still goes with the fd
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def read_holder(run_dir: str | os.PathLike) -> LockRecord | None:
    """Who holds the folder now, or None (for ``sdft watch`` and messages; takes no lock)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        record = _read_record(fd)
        if record is None:
            return None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return record            # held right now
            fcntl.flock(fd, fcntl.LOCK_UN)
        return record if _alive(record) else None
    finally:
        os.close(fd)


def _read_record(fd: int) -> LockRecord | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        fields = json.loads(data.decode("utf-8")) if data.strip() else None
        return LockRecord(**fields) if isinstance(fields, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def _write_record(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode("utf-8"))
    os.fsync(fd)


def _alive(record: LockRecord) -> bool:
    """Whether the record's process still runs. On another host we cannot tell: assume yes."""
    if record.host != socket.gethostname():
        return True
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate it on Windows
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # alive, owned by another user
    return True
