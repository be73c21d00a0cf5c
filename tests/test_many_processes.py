"""Many processes, one run (docs/many-gpus.md), tested with real processes on the CPU (gloo), as
accelerate's launcher starts them for `sdft train --gpus N`:
- 1, 2 and 4 processes with the same global batch train the same run (losses and weights);
- a run stopped on 2 processes resumes on 1 and continues the same run;
- each way to stop (a request through control.json as sdft watch sends it, Ctrl-C to the process
  group, SIGTERM or SIGHUP to one process) stops every process at the same step with one state.

Where the launcher itself is not under test, the ranks are forked (tests/forked_sdft.py launch():
each a real process with the environment accelerate's launcher gives it, without paying the
imports again); Ctrl-C to the launcher, a rank signalled under torch's elastic agent, `sdft train
--gpus` itself and the scaling bench start the genuine launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import forked_sdft
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import make_dataset, make_run

from engine.launch import launch_plan

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run_file(folder: Path, model: Path, processes: int, global_batch: int = 4, steps: int = 6,
              name: str = "run") -> Path:
    if not (folder / "meta.json").exists():
        make_dataset(folder, count=10)
    path = make_run(folder, model, steps=steps, name=f"{name}.toml", optimizer_extra="max_grad_norm = 1.0",
                    save_extra='precision = "float"\n')
    text = path.read_text().replace("batch_size = 2", f"batch_size = {global_batch // processes}")
    text = text.replace('output_name = "t"', f'output_name = "{name}"')
    path.write_text(text.replace("shuffle_caption = true", "shuffle_caption = true\nflip_aug = true"))
    return path


def _launch(path: Path, processes: int, *extra: str, session: bool = False) -> subprocess.Popen:
    """The genuine launcher: `accelerate launch ... -m engine.cli train PATH`."""
    plan = launch_plan([str(path), *extra], processes, {}, None)
    return subprocess.Popen(plan.argv, cwd=path.parent, env={**ENV, **plan.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=session)


def _fork(path: Path, processes: int, *extra: str, cwd: Path | None = None) -> forked_sdft.ForkedLaunch:
    """The processes the launcher would start, forked (tests/forked_sdft.py launch())."""
    plan = launch_plan([str(path), *extra], processes, {}, None)
    return forked_sdft.launch(plan.argv, env={**ENV, **plan.env}, cwd=cwd or path.parent)


def _events(path: Path, name: str = "run") -> list[dict]:
    events = path.parent / "runs" / name / "events.jsonl"
    return [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []


def _losses(events: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "step"}


def _train(path: Path, processes: int, *extra: str) -> subprocess.CompletedProcess:
    process = _fork(path, processes, *extra)
    out, _ = process.communicate(timeout=900)
    return subprocess.CompletedProcess(process.args, process.returncode, out)


def _train_here(capsys, *argv: str) -> tuple[int, str]:
    """`sdft train ...` on one process, in this one (the process boundary is the launched runs'
    business here): the exit code and what it printed."""
    from engine.cli import main

    code = main(["train", *argv])
    out, err = capsys.readouterr()
    return code, out + err


def _final_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path.parent / "runs" / "run" / "checkpoints" / "run.safetensors"))


@pytest.fixture(scope="module")
def _one_process_run(tmp_path_factory, tiny_sd1) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    from engine.cli import main  # `sdft train RUN.toml`, in this process: no second start-up to pay

    path = _run_file(tmp_path_factory.mktemp("one-process"), tiny_sd1, 1)
    assert main(["train", str(path)]) == 0
    return _losses(_events(path)), _final_weights(path)


@pytest.fixture()
def one_process_run(_one_process_run):
    """The reference of this module: `sdft train` of ``_run_file(..., 1)`` (6 steps, global batch 4) on
    one process, as (losses per step, final weights). Trained once per worker, in the worker's own
    process; each test gets copies."""
    losses, weights = _one_process_run
    return dict(losses), {key: tensor.clone() for key, tensor in weights.items()}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_sd1) -> Path:
    """``_run_file(..., 2)`` trained on 2 launched processes, saving a state at step 3 as well: the
    run file (its folder holds the run). Launched once per worker for the tests of the
    "two-process-run" group, which only read it (a test that writes copies the folder)."""
    path = _run_file(tmp_path_factory.mktemp("two-processes"), tiny_sd1, 2)
    path.write_text(path.read_text().replace("[save]\n", "[save]\nevery_n_steps = 3\nstate = true\n"))
    done = _train(path, 2)
    assert done.returncode == 0, done.stdout[-3000:]
    return path


@pytest.mark.xdist_group("two-process-run")
def test_one_two_and_four_processes_train_the_same_run(tmp_path, tiny_sd1, one_process_run, two_process_run):
    runs = {1: one_process_run, 2: (_losses(_events(two_process_run)), _final_weights(two_process_run))}
    path = _run_file(tmp_path / "p4", tiny_sd1, 4)
    done = _train(path, 4)
    assert done.returncode == 0, done.stdout[-3000:]
    runs[4] = (_losses(_events(path)), _final_weights(path))
    one_losses, one_weights = runs[1]
    assert sorted(one_losses) == list(range(1, 7))
    for processes in (2, 4):
        losses, weights = runs[processes]
        assert losses.keys() == one_losses.keys()
        for step, loss in one_losses.items():    # the same batches, noise and timesteps; sums in another order
            assert loss == pytest.approx(losses[step], rel=1e-5), (processes, step)
        for key, tensor in one_weights.items():
            torch.testing.assert_close(weights[key].float(), tensor.float(), rtol=1e-4, atol=1e-5)


def _stop_when(path: Path, step: int, act, timeout: float = 600) -> None:
    """Call ``act()`` once the run has logged ``step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["event"] == "step" and e["step"] >= step for e in _events(path)):
            act()
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached step {step}")


def _ranks(launcher) -> dict[int, int]:
    """{rank: pid} of the launcher's training processes."""
    import psutil

    if isinstance(launcher, forked_sdft.ForkedLaunch):
        return launcher.ranks

    found = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "engine.cli" in " ".join(child.cmdline()):
            found[int(rank)] = child.pid
    return found


def _wait_for_ranks(launcher, count: int) -> dict[int, int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ranks = _ranks(launcher)
        if len(ranks) == count:
            return ranks
        time.sleep(0.1)
    raise AssertionError("the training processes did not start")


# way -> how the run is stopped, and whether the genuine launcher starts it (where its reaction is
# part of what is tested: the signal to its process group, a rank signalled under its agent)
STOPS = {
    "control-file": lambda launcher, path: _send(path, "stop"),
    "ctrl-c-to-accelerate-launch": lambda launcher, path: os.killpg(os.getpgid(launcher.pid), signal.SIGINT),
    "sigterm-to-rank-1": lambda launcher, path: os.kill(_ranks(launcher)[1], signal.SIGTERM),
    "sighup-to-rank-0": lambda launcher, path: os.kill(_ranks(launcher)[0], signal.SIGHUP),
}
GENUINE_LAUNCHER = {"ctrl-c-to-accelerate-launch", "sigterm-to-rank-1"}


def _forked_ranks_get_what_launched_ones_get(path: Path, ranks: dict[int, int]) -> None:
    """The environment tests/forked_sdft.py gives each forked rank is the genuine launcher's
    (checked on each genuine launch, so a change in accelerate or torch shows here), but for where
    the rendezvous is."""
    import psutil

    plan = launch_plan([str(path)], 2, {}, None)
    for rank, pid in ranks.items():
        launched = {k: v for k, v in psutil.Process(pid).environ().items() if ENV.get(k) != v}
        forked = {**plan.env, **forked_sdft.launcher_environment(plan.argv),
                  **forked_sdft.rank_environment(rank, 2, port=0)}
        assert ({k: v for k, v in launched.items() if k not in forked_sdft.RENDEZVOUS_VARIABLES}
                == {k: v for k, v in forked.items() if k not in forked_sdft.RENDEZVOUS_VARIABLES}), rank


def _send(path: Path, request: str) -> None:
    from engine.control_file import send_request

    send_request(path.parent / "runs" / "run", request, by="the test")


@pytest.mark.parametrize("way", sorted(STOPS))
def test_every_way_to_stop_stops_every_process_at_one_step_and_resumes_on_one_process(tmp_path, tiny_sd1, way, capsys):
    path = _run_file(tmp_path, tiny_sd1, 2, steps=40)
    launcher = _launch(path, 2, session=True) if way in GENUINE_LAUNCHER else _fork(path, 2)
    ranks = _wait_for_ranks(launcher, 2)
    if way in GENUINE_LAUNCHER:
        _forked_ranks_get_what_launched_ones_get(path, ranks)
    _stop_when(path, 2, lambda: STOPS[way](launcher, path))
    out, _ = launcher.communicate(timeout=600)
    # a stop is not a crash to torch's launcher; hit by Ctrl-C itself it reports 130
    assert launcher.returncode == (130 if way == "ctrl-c-to-accelerate-launch" else 0), out[-3000:]
    events = _events(path)
    finished = [e for e in events if e["event"] == "run_finished"]
    assert len(finished) == 1 and finished[0]["status"] == "stopped", out[-3000:]
    stopped_at = finished[0]["step"]
    states = sorted((path.parent / "runs" / "run" / "state").glob("*-state"))
    assert [s.name for s in states] == [f"run-step{stopped_at:08d}-state"], out[-3000:]
    assert stopped_at < 40
    assert "Traceback" not in out, out[-3000:]
    # the same run, resumed on one process at twice the batch: it continues where both stopped
    one = path.read_text().replace("batch_size = 2", "batch_size = 4").replace("max_train_steps = 40", "max_train_steps = " + str(stopped_at + 2))
    path.write_text(one)
    code, printed = _train_here(capsys, str(path), "--resume", "latest")
    assert code == 0, printed[-3000:]
    assert "changed since" not in printed
    assert max(_losses(_events(path))) == stopped_at + 2


@pytest.mark.xdist_group("two-process-run")
def test_a_stopped_multi_process_run_resumes_on_one_process_as_the_same_run(tmp_path, one_process_run,
                                                                           two_process_run, capsys):
    expected, _weights = one_process_run     # the straight run: the same file on one process
    # the 2-process run with its state at step 3 (in a copy: the resumed run writes beside it)
    shutil.copytree(two_process_run.parent, tmp_path / "split")
    path = tmp_path / "split" / two_process_run.name
    state = path.parent / "runs" / "run" / "state" / "run-step00000003-state"
    assert state.is_dir()
    one = path.read_text().replace("batch_size = 2", "batch_size = 4").replace('output_name = "run"', 'output_name = "one"')
    resumed_path = path.parent / "one.toml"
    resumed_path.write_text(one)
    code, printed = _train_here(capsys, str(resumed_path), "--resume", str(state))
    assert code == 0, printed[-3000:]
    got = {**{k: v for k, v in _losses(_events(path)).items() if k <= 3}, **_losses(_events(resumed_path, "one"))}
    assert got.keys() == expected.keys()
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-5), step


def test_ctrl_c_to_sdft_train_gpus_stops_every_process_and_exits_130(tmp_path, tiny_sd1):
    # `sdft train --gpus` on a terminal: the launcher runs in its own session, so the terminal's
    # Ctrl-C reaches sdft alone, which asks the run to stop through control.json
    path = _run_file(tmp_path, tiny_sd1, 2, steps=40)
    code = ("import sys; from engine.cli import run_processes; from engine.launch import launch_plan; "
            f"sys.exit(run_processes(launch_plan([{str(path)!r}], 2, {{}}, None), {str(path)!r}))")
    wrapper = subprocess.Popen([sys.executable, "-c", code], cwd=path.parent, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    _stop_when(path, 2, lambda: os.killpg(os.getpgid(wrapper.pid), signal.SIGINT))
    out, _ = wrapper.communicate(timeout=600)
    assert wrapper.returncode == 130, out[-3000:]
    assert "every process stops at the next step" in out and "Traceback" not in out, out[-3000:]
    finished = [e for e in _events(path) if e["event"] == "run_finished"]
    states = sorted((path.parent / "runs" / "run" / "state").glob("*-state"))
    assert len(finished) == 1 and [s.name for s in states] == [f"run-step{finished[0]['step']:08d}-state"]


def test_bench_measures_the_scaling_of_two_processes(tmp_path, tiny_sd1, capsys):
    import types

    from engine.bench import commands as bench_commands

    path = _run_file(tmp_path, tiny_sd1, 1, steps=4)
    args = types.SimpleNamespace(config=str(path), steps=3, warmup=1, json=True)
    assert bench_commands.show_scaling(args, 2, None) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["processes"] == 2 and report["one"]["engine_samples_per_s"] > 0
    assert report["many"]["engine_samples_per_s"] > 0 and 0 < report["efficiency"] < 2
    from engine.bench.scaling import scaling_figures  # the warning rule, on figures a slow link gives

    slow = scaling_figures({"engine_samples_per_s": 10.0}, {"engine_samples_per_s": 12.0}, 2)
    assert slow["efficiency"] == 0.6 and "wait for each other" in slow["warning"]
    assert "warning" not in scaling_figures({"engine_samples_per_s": 10.0}, {"engine_samples_per_s": 19.0}, 2)


# ---------------------------------------------------------------- sharded (memory.sharding, FSDP)


def _sharded(path: Path, mode: str, extra: str = "") -> Path:
    path.write_text(path.read_text() + f'\n[memory]\nsharding = "{mode}"\n' + extra)
    return path


@pytest.mark.parametrize("mode", ["full", "grad_op"])
def test_sharded_training_on_two_processes_is_the_one_process_run(tmp_path, tiny_sd1, mode, one_process_run):
    expected, a = one_process_run
    two = _sharded(_run_file(tmp_path / "two", tiny_sd1, 2), mode)
    sharded = _train(two, 2)
    assert sharded.returncode == 0, sharded.stdout[-3000:]
    got = _losses(_events(two))
    assert got.keys() == expected.keys()
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-5), step
    b = _final_weights(two)
    for key, tensor in a.items():
        torch.testing.assert_close(b[key].float(), tensor.float(), rtol=1e-4, atol=1e-5)


def test_a_sharded_run_with_ema_previews_and_states_resumes_sharded_and_on_one_process(tmp_path, tiny_sd1, capsys):
    extra = ("\n[sample]\nevery_n_steps = 3\nsteps = 1\nprompts = [\"a red square --w 64 --h 64 --d 1\"]\n")
    # The reference: the same run straight on one process at the global batch (sharded on two
    # processes it trains the same run: test_sharded_training_on_two_processes_is_the_one_process_run)
    straight = _run_file(tmp_path / "straight", tiny_sd1, 1, steps=6)
    straight.write_text(straight.read_text().replace("[train]\n", "[train]\nema = true\nema_decay = 0.9\n", 1)
                        .replace("[save]\n", "[save]\nuse_ema = true\n") + extra)
    code, printed = _train_here(capsys, str(straight))
    assert code == 0, printed[-3000:]
    # the same run sharded on two processes, stopped at step 3 and resumed sharded on two processes
    split = _sharded(_run_file(tmp_path / "split", tiny_sd1, 2, steps=6), "full")
    split.write_text(split.read_text().replace("[train]\n", "[train]\nema = true\nema_decay = 0.9\n", 1)
                     .replace("[save]\n", "[save]\nuse_ema = true\nevery_n_steps = 3\nstate = true\n") + extra)
    first = _train(split, 2)
    assert first.returncode == 0, first.stdout[-3000:]
    samples = sorted((split.parent / "runs" / "run" / "samples").glob("*.png"))
    assert len(samples) >= 2, "every process took part in sampling; the main one wrote"
    state = split.parent / "runs" / "run" / "state" / "run-step00000003-state"
    assert state.is_dir()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    again = resumed_dir / "run.toml"
    again.write_text(split.read_text().replace('image_dir = "images"', f'image_dir = "{split.parent / "images"}"')
                     .replace('metadata_file = "meta.json"', f'metadata_file = "{split.parent / "meta.json"}"'))
    resumed = _fork(again, 2, "--resume", str(state), cwd=resumed_dir)
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    expected = _losses(_events(straight))
    got = {**{k: v for k, v in _losses(_events(split)).items() if k <= 3}, **_losses(_events(again))}
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-5), step
    # the sharded state resumes on one unsharded process at twice the batch: the same run goes on
    one_dir = tmp_path / "one"
    one_dir.mkdir()
    one = one_dir / "run.toml"
    one.write_text(again.read_text().replace("batch_size = 2", "batch_size = 4").replace('sharding = "full"', 'sharding = "none"'))
    code, printed = _train_here(capsys, str(one), "--resume", str(state))
    assert code == 0, printed[-3000:]
    resumed_alone = _losses(_events(one))
    assert sorted(resumed_alone) == [4, 5, 6]
    for step, loss in resumed_alone.items():
        assert loss == pytest.approx(expected[step], rel=1e-5), step
