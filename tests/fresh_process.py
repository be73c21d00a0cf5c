"""Import-hygiene checks in one subprocess: what a fresh interpreter loads for each snippet.

Many tests assert that importing a module, or running `sdft CMD --help`, loads no torch,
diffusers, transformers or Textual. Each used to start its own `python -c`. Instead a test
module registers its snippets when it is imported (``snippet(name, code)``, at collection), and
the ``fresh_process`` fixture starts ONE process for all of them. That process loads only the
standard library, then forks a child per snippet, so each snippet still starts from an
interpreter that has imported nothing of sdft's or a library's; the child runs the snippet as
`python -c` would and reports its exit code, its output and its traceback. Each test then
asserts on its own snippet's result. tests/conftest.py keeps these tests on one pytest-xdist
worker, so the process runs once per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS: dict[str, str] = {}

# The child of each snippet: runs it in a fresh __main__ as `python -c` does, output captured.
RUNNER = r"""
import io, json, os, sys, traceback

snippets = json.load(open(sys.argv[1], encoding="utf-8"))
results = {}
for name, code in snippets.items():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        out, err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr, sys.argv = out, err, ["-c"]
        returncode = 0
        try:
            exec(compile(code, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        except SystemExit as stop:
            returncode = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if not isinstance(stop.code, (int, type(None))):
                err.write(str(stop.code) + "\n")
        except BaseException:
            returncode = 1
            err.write(traceback.format_exc())
        with os.fdopen(write, "w", encoding="utf-8") as pipe:
            json.dump({"returncode": returncode, "stdout": out.getvalue(), "stderr": err.getvalue()}, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, encoding="utf-8") as pipe:
        reported = pipe.read()
    _pid, status = os.waitpid(pid, 0)
    results[name] = json.loads(reported) if reported else {
        "returncode": -1, "stdout": "", "stderr": f"the child ended without a report (wait status {status})"}
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    json.dump(results, fh)
"""


@dataclass(frozen=True)
class Ran:
    """What one snippet did, as subprocess.run would report it."""
    returncode: int
    stdout: str
    stderr: str


def snippet(name: str, code: str) -> str:
    """Register ``code`` to run in a fresh interpreter under ``name``; returns the name."""
    if SNIPPETS.get(name, code) != code:
        raise ValueError(f"two snippets are named {name!r}")
    SNIPPETS[name] = code
    return name


def run_snippets(folder: Path) -> dict[str, Ran]:
    """Run every registered snippet, each in a fresh fork of one bare interpreter."""
    wanted, found = folder / "snippets.json", folder / "results.json"
    wanted.write_text(json.dumps(SNIPPETS), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", RUNNER, str(wanted), str(found)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and found.is_file(), done.stdout[-2000:] + done.stderr[-3000:]
    return {name: Ran(**result) for name, result in json.loads(found.read_text(encoding="utf-8")).items()}
