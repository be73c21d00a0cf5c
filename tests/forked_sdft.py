"""Real `sdft` processes without paying the library imports each time: a fork server.

A fresh `python -m sdft_tui.cli train ...` spends about 7 s of CPU importing torch, transformers
and diffusers before it reads its file. Tests that need a real process (one they kill with
SIGKILL, stop with SIGTERM/SIGINT/SIGHUP, or that must hold a run folder's lock while another
process asks for it) start it through :func:`start` instead: one server process per pytest
worker imports those libraries once, as `sdft train` would (its notices quieted and diffusers
trimmed first, engine/quiet.py), and imports nothing of sdft's that would bind state at import.
For each start it forks a child, which

* is a real process of its own: its own pid, signalled and killed like any other, its exit
  status reported back as ``returncode`` (negative for a signal, as subprocess reports it);
* gets the caller's stdin, stdout and stderr (pipes or a terminal, passed over a Unix socket),
  working folder, environment and argv;
* starts from a fresh interpreter's state: default signal handlers, the collector on, Python's,
  numpy's and torch's global generators seeded anew (each fresh process seeds them from the
  system), no thread but its main one (the server never starts one);
* runs what `python -m sdft_tui.cli ARGS` runs (or `python -c CODE ARGS`), exit code included.

Variables read when the libraries import (thread counts, offline switches) are the server's:
a start whose environment differs in any variable but :data:`READ_AT_RUN_TIME` gets a server of
its own, started under that environment, so a test never runs under one it did not ask for. The
server refuses to fork while it runs a second thread (a child would inherit locks held by it). Behaviour that depends on a fresh
interpreter itself (what a start imports, the console script) stays with genuine processes.

:func:`launch` starts the processes of a multi-process run the same way: one forked child per
rank, with the environment accelerate's launcher and torch's elastic agent give each rank
(computed by accelerate's own functions), and the rendezvous store hosted by the test's process,
as the agent hosts it. It stands in for `accelerate launch` where the launcher is not what a test is
about; tests of the launcher itself (Ctrl-C to it, a rank stopped under its agent) start it.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL
# Variables a start may set differently from the server's environment: read by sdft or by the
# test's own code after start-up, never while the libraries import.
READ_AT_RUN_TIME = frozenset({"SDFT_FAULT_KILL_WRITING", "COLUMNS", "PYTHONUNBUFFERED"})
# What the server imports before it forks: the libraries a training start spends its time on.
LIBRARIES = ("torch", "numpy", "PIL.Image", "safetensors.torch", "scipy.stats", "transformers",
             "transformers.modeling_utils", "transformers.models.clip.modeling_clip",
             "transformers.models.clip.tokenization_clip", "diffusers",
             "diffusers.models.unets.unet_2d_condition", "diffusers.models.autoencoders.autoencoder_kl",
             "diffusers.loaders.single_file_model", "diffusers.schedulers", "diffusers.schedulers.scheduling_ddpm",
             "diffusers.optimization", "rich.console", "rich.live", "rich.progress", "rich.table", "tomlkit")


# ------------------------------------------------------------------ the server (its own process)


def _serve(control: socket.socket) -> None:
    from engine.quiet import quiet_libraries

    quiet_libraries()   # what `sdft train` does before it imports a model class
    import importlib

    for name in LIBRARIES:
        importlib.import_module(name)
    control.sendall(b"ready\n")
    children: dict[int, socket.socket] = {}
    while True:
        _reap(children)
        # A child's end is noticed within 20 ms; with none running, wait for the next request.
        if not select.select([control], [], [], 0.02 if children else None)[0]:
            continue
        try:
            message, fds, _flags, _addr = socket.recv_fds(control, 1 << 20, 8)
        except OSError:
            message = b""
        if not message:   # the test process is gone: so are its runs
            return
        _check_single_threaded()
        pid = os.fork()
        if pid == 0:
            control.close()
            for other in children.values():
                other.close()
            _child(json.loads(message), fds)
        for fd in fds[1:]:
            os.close(fd)
        report = socket.socket(fileno=fds[0])
        report.sendall(struct.pack("!q", pid))
        children[pid] = report


def _check_single_threaded() -> None:
    try:
        threads = os.listdir("/proc/self/task")   # the OS's count: threads of C libraries included
    except OSError:
        threads = list(range(threading.active_count()))   # no /proc (macOS): Python's own threads
    assert len(threads) == 1, f"the fork server runs {len(threads)} threads: a fork would copy held locks"


def _reap(children: dict[int, socket.socket]) -> None:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            report = children.pop(pid)
            try:
                report.sendall(struct.pack("!q", os.waitstatus_to_exitcode(status)))
            except OSError:
                pass   # the test stopped listening
            report.close()


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become `python -m sdft_tui.cli ARGS` (or `python -c CODE ARGS`)."""
    os.close(fds[0])
    for target, fd in zip((0, 1, 2), fds[1:], strict=True):
        os.dup2(fd, target)
    for fd in set(fds[1:]):
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    _fresh_interpreter_state()
    code = 0
    try:
        if "code" in request:
            sys.argv = ["-c", *request["args"]]
            main = sys.modules["__main__"] = type(sys)("__main__")
            exec(compile(request["code"], "<string>", "exec"), main.__dict__)
        else:
            import runpy

            sys.argv = [request["module"], *request["args"]]
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = _exit_code(stop)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)   # as Python ends on an uncaught Ctrl-C
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        _flush()
        os._exit(code)


def _fresh_interpreter_state() -> None:
    import gc
    import random

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGCHLD"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    for name in ("SIGPIPE", "SIGXFSZ"):   # Python ignores these at start-up
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    gc.enable()
    random.seed()
    sys.modules["numpy"].random.seed()
    sys.modules["torch"].seed()
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = sys.__stdout__ = _text_stream(1, unbuffered, "strict")
    sys.stderr = sys.__stderr__ = _text_stream(2, unbuffered, "backslashreplace")


def _text_stream(fd: int, unbuffered: bool, errors: str) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    line_buffering = fd == 2 or raw.isatty()
    return io.TextIOWrapper(io.BufferedWriter(raw), errors=errors, line_buffering=line_buffering,
                            write_through=unbuffered)


def _exit_code(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code & 0xFF
    print(stop.code, file=sys.stderr)
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


# ------------------------------------------------------------------ the test side


class ForkedProcess:
    """A started child, with the part of subprocess.Popen's API the tests use."""

    def __init__(self, report: socket.socket, stdout, stderr) -> None:
        self._report, self.stdout, self.stderr = report, stdout, stderr
        self.pid: int = self._read_number(None)
        self.returncode: int | None = None

    def _read_number(self, timeout: float | None) -> int | None:
        self._report.settimeout(timeout)
        data = b""
        try:
            while len(data) < 8:
                chunk = self._report.recv(8 - len(data))
                if not chunk:
                    raise RuntimeError("the fork server ended before reporting its child")
                data += chunk
        except (socket.timeout, BlockingIOError):
            if data:
                raise
            return None
        return struct.unpack("!q", data)[0]

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._read_number(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._read_number(timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired("sdft (forked)", timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:   # never a pid the kernel may have handed to another process
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        streams = {s: [] for s in (self.stdout, self.stderr) if s is not None}
        selector = selectors.DefaultSelector()
        for stream in streams:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("sdft (forked)", timeout)
            for key, _ in selector.select(left):
                data = os.read(key.fileobj.fileno(), 65536)
                if data:
                    streams[key.fileobj].append(data)
                else:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        text = {s: b"".join(chunks).decode("utf-8", "replace") for s, chunks in streams.items()}
        return text.get(self.stdout), text.get(self.stderr)


class ForkServer:
    """One server process, started on first use and ended with the test process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server_env = {**self.env, "PYTHONPATH": os.pathsep.join([str(ROOT), self.env.get("PYTHONPATH", "")])}
        self.env["PYTHONPATH"] = server_env["PYTHONPATH"]
        self.log = tempfile.TemporaryFile()   # the libraries' import notices; a failed start's traceback
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import socket, sys; from forked_sdft import _serve; "
             "_serve(socket.socket(fileno=int(sys.argv[1])))", str(theirs.fileno())],
            cwd=ROOT / "tests", env=server_env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            stdout=self.log, stderr=self.log)
        theirs.close()
        self.control.settimeout(600)
        if self.control.recv(16) != b"ready\n":
            self.log.seek(0)
            raise RuntimeError("the fork server did not start:\n" + self.log.read().decode("utf-8", "replace")[-3000:])

    def start(self, args: list[str], *, code: str | None = None, env: dict[str, str] | None = None,
              cwd: Path | str | None = None, stdin=DEVNULL, stdout=PIPE, stderr=PIPE,
              module: str = "sdft_tui.cli", launcher_variables: frozenset[str] = frozenset()) -> ForkedProcess:
        if code is None and args[:1] != ["train"]:
            raise ValueError("the server prepares what `sdft train` prepares (engine/quiet.py); start "
                             f"`sdft {' '.join(map(str, args[:1]))}` as a real process")
        env = self._checked(env, launcher_variables)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sent: list[int] = []        # the child's ends this process opened: closed once sent
        kept: dict[int, int] = {}   # target fd -> this process's end of a pipe

        def child_end(spec, target: int) -> int:
            if spec == PIPE and target > 0:
                kept[target], write = os.pipe()
                sent.append(write)
                return write
            if spec == DEVNULL:
                fd = os.open(os.devnull, os.O_RDONLY if target == 0 else os.O_WRONLY)
                sent.append(fd)
                return fd
            if spec is None:   # inherited, as subprocess does
                return target
            return spec if isinstance(spec, int) else spec.fileno()

        stdio = [child_end(stdin, 0), child_end(stdout, 1)]
        stdio.append(stdio[1] if stderr == STDOUT else child_end(stderr, 2))
        request = {"args": [str(a) for a in args], "env": env, "cwd": str(cwd or os.getcwd())}
        request.update({"code": code} if code is not None else {"module": module})
        socket.send_fds(self.control, [json.dumps(request).encode()], [theirs.fileno(), *stdio])
        theirs.close()
        for fd in sent:
            os.close(fd)
        try:
            return ForkedProcess(mine, *(os.fdopen(kept[t], "rb") if t in kept else None for t in (1, 2)))
        except RuntimeError as exc:
            self.log.seek(0)
            raise RuntimeError(f"{exc}:\n{self.log.read().decode('utf-8', 'replace')[-3000:]}") from None

    def _checked(self, env: dict[str, str] | None, launcher_variables: frozenset[str]) -> dict[str, str]:
        env = {**os.environ} if env is None else dict(env)
        env["PYTHONPATH"] = self.env["PYTHONPATH"]
        differ = {k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k)}
        differ -= READ_AT_RUN_TIME | launcher_variables
        if differ:
            raise ValueError(f"a forked sdft cannot change {sorted(differ)}: they are read while libraries "
                             "import; start a real process instead")
        return env

    def close(self) -> None:
        self.control.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


_servers: dict[str, ForkServer] = {}


def server(env: dict[str, str]) -> ForkServer:
    """This process's fork server for the environment ``env`` (started on first use)."""
    key = json.dumps(sorted((k, v) for k, v in env.items() if k not in READ_AT_RUN_TIME))
    if key not in _servers:
        _servers[key] = ForkServer({k: v for k, v in env.items()})
        atexit.register(_servers[key].close)
    return _servers[key]


def start(args: list[str], *, env: dict[str, str], **options) -> ForkedProcess:
    """`sdft ARGS` as a forked child (see the module's text); Popen-like, text decoded by communicate()."""
    return server(env).start(args, env=env, **options)


def run(args: list[str], *, env: dict[str, str], timeout: float | None = None, **options) -> subprocess.CompletedProcess:
    """`sdft ARGS` forked, to the end: as ``subprocess.run(..., capture_output=True, text=True)``."""
    process = start(args, env=env, **options)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess(["sdft", *args], process.returncode, out, err)


# ------------------------------------------------------------------ multi-process runs


def launcher_environment(argv: list[str]) -> dict[str, str]:
    """The variables accelerate's launcher adds for the processes of ``argv`` (an ``accelerate
    launch`` command line as engine/launch.py builds it), asked of accelerate itself."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    start = argv.index("accelerate.commands.launch") + 1
    args, _defaults, _from_config = _validate_launch_command(launch_command_parser().parse_args(argv[start:]))
    args.main_process_port = 0   # any free one: the port is not among the variables
    full = prepare_multi_gpu_env(args)
    return {k: v for k, v in full.items() if os.environ.get(k) != v}


def rank_environment(rank: int, processes: int, port: int) -> dict[str, str]:
    """What torch's elastic agent sets for each process it starts (one machine, no restarts),
    with the rendezvous store (the agent's, here the test's: :func:`launch`) at ``port``."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0", "ROLE_RANK": str(rank),
            "ROLE_NAME": "default", "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes),
            "GROUP_WORLD_SIZE": "1", "ROLE_WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
            "TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_USE_AGENT_STORE": "True",
            "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}


# What a forked rank's environment sets otherwise or leaves out, by design: where the rendezvous
# is (its address, port and id) and the agent's error file.
RENDEZVOUS_VARIABLES = frozenset({"MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE"})


def _rendezvous_store():
    """The store the ranks meet at, as torch's elastic agent hosts it: in this process, on a port
    it binds itself (so no other process can take the port between choosing and binding it)."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(minutes=15))


class ForkedLaunch:
    """The ranks of one forked multi-process run: ``ranks`` ({rank: pid}), their output in one
    stream (as the launcher prints it) and one exit code (0 when every rank exited 0, else the
    first other code, as the launcher fails when one of its processes does)."""

    def __init__(self, args: list[str], processes: list[ForkedProcess], output, store) -> None:
        self.args, self._processes, self.stdout = args, processes, output
        self._store = store   # the rendezvous: kept until every rank has ended
        self.ranks = {rank: process.pid for rank, process in enumerate(processes)}
        self.returncode: int | None = None

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = []
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0 or not select.select([self.stdout], [], [], left)[0]:
                    raise subprocess.TimeoutExpired("sdft (forked ranks)", timeout)
                data = os.read(self.stdout.fileno(), 65536)
                if not data:
                    break
                chunks.append(data)
            codes = [p.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                     for p in self._processes]
        except subprocess.TimeoutExpired:
            for process in self._processes:   # a hung rendezvous must not outlive the test
                process.kill()
            raise
        finally:
            self.stdout.close()
            self._store = None
        self.returncode = next((code for code in codes if code != 0), 0)
        return b"".join(chunks).decode("utf-8", "replace"), None


def launch(argv: list[str], *, env: dict[str, str], cwd: Path | str) -> ForkedLaunch:
    """The processes ``argv`` (``Launch.argv`` of engine/launch.py: accelerate's launcher running
    ``-m engine.cli COMMAND ARGS``) would start, forked: each runs ``engine.cli`` with those
    arguments and its rank's environment; stdout and stderr of all of them in one pipe."""
    processes = int(argv[argv.index("--num_processes") + 1])
    module_at = argv.index("-m", argv.index("accelerate.commands.launch"))
    module, args = argv[module_at + 1], argv[module_at + 2:]
    store = _rendezvous_store()
    port = store.port
    added = launcher_environment(argv)
    read, write = os.pipe()
    started = []
    try:
        for rank in range(processes):
            variables = {**added, **rank_environment(rank, processes, port)}
            started.append(server(env).start(args, env={**env, **variables}, cwd=cwd, stdout=write,
                                             stderr=STDOUT, module=module,
                                             launcher_variables=frozenset(variables)))
    except BaseException:
        for process in started:
            process.kill()
        os.close(read)
        raise
    finally:
        os.close(write)
    return ForkedLaunch(argv, started, os.fdopen(read, "rb"), store)
