"""TensorBoard and W&B logging ([logging] log_with), read back from what the trackers wrote."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from engine.config.problems import ConfigError
from engine.config.run_toml import load_run_file
from engine.events import ListSink, Message, RunStarted, StepMetrics, ValidationMetrics, read_events
from engine.runner import run_training
from engine.train.trackers import TrackerPlan, TrackerSink, plan_trackers, tracker_problems
from tests.train_helpers import make_run

STEP_TAGS = ("loss/current", "loss/average", "lr/unet", "lr/text_encoder", "norm/grad_norm",
             "speed/samples_per_s", "memory/ram_used_gib")
STAMP = re.compile(r"\d{14}")


def with_logging(path: Path, logging: str, extra: str = "") -> Path:
    """The helper's run file with more [logging] keys and any extra tables at the end."""
    text = path.read_text().replace("[logging]\nevery_n_steps = 1\n", f"[logging]\nevery_n_steps = 1\n{logging}\n")
    path.write_text(text + extra)
    return path


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """W&B's own settings, cache and credentials in a throw-away folder, with no login."""
    home = tmp_path / "wandb-home"
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    _forget_wandb_settings()
    yield home
    _forget_wandb_settings()


def _forget_wandb_settings() -> None:
    """wandb reads its environment once per process; start each test from the environment it sets."""
    import sys

    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


# ---------------------------------------------------------------- reading the files back

def tensorboard_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def wandb_records(path: Path):
    """Records of a .wandb transaction log (LevelDB log format: 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):   # block trailer or padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):   # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


# ---------------------------------------------------------------- a real tiny run

def test_tensorboard_and_wandb_log_every_figure_of_a_real_run(tmp_path, tiny_sd1, wandb_home, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = with_logging(
        make_run(tmp_path, tiny_sd1, steps=4, train_extra="train_text_encoder = true",
                 optimizer_extra="learning_rate_te = 5e-5"),
        'log_with = "all"\nlogging_dir = "tb"\nlog_prefix = "tiny-"\nlog_tracker_name = "proj"\n'
        'wandb_run_name = "my-run"',
        '\n[sample]\nevery_n_steps = 2\nprompts = ["a red picture --w 64 --h 64 --s 2", "blue --w 64 --h 64 --s 2"]\n')
    sink = ListSink()
    result = run_training(config, sink=sink)
    assert result.status == "completed", result.message

    # kohya's folder: <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/<log_tracker_name>
    (stamped,) = (tmp_path / "tb").iterdir()
    assert stamped.name.startswith("tiny-") and STAMP.fullmatch(stamped.name[len("tiny-"):])
    tb = tensorboard_events(stamped / "proj")
    metrics = [e for e in read_events(Path(result.run_dir) / "events.jsonl") if isinstance(e, StepMetrics)]
    assert [m.step for m in metrics] == [1, 2, 3, 4]
    for tag in STEP_TAGS:
        assert [s.step for s in tb.Scalars(tag)] == [1, 2, 3, 4], tag
    assert [s.value for s in tb.Scalars("loss/current")] == pytest.approx([m.loss for m in metrics], rel=1e-6)
    assert [s.value for s in tb.Scalars("loss/average")] == pytest.approx([m.loss_avg for m in metrics], rel=1e-6)
    assert [s.value for s in tb.Scalars("lr/text_encoder")] == pytest.approx([5e-5] * 4)
    assert [s.value for s in tb.Scalars("lr/unet")] == pytest.approx([1e-4] * 4)
    assert [s.value for s in tb.Scalars("norm/grad_norm")] == pytest.approx([m.grad_norm for m in metrics], rel=1e-6)
    for tag in ("samples/0", "samples/1"):
        images = tb.Images(tag)
        assert [i.step for i in images] == [2, 4] and (images[0].width, images[0].height) == (64, 64)
    (toml_text,) = tb.Tensors("config/run_toml/text_summary")
    assert toml_text.step == 0
    resolved = (Path(result.run_dir) / "config.toml").read_text()
    assert resolved in toml_text.tensor_proto.string_val[0].decode()

    # W&B, offline: its run folder sits in the same stamped folder.
    (log,) = (stamped / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(log))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.project) == ("my-run", "proj")
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {item_key(i): i.value_json for i in r.history.item}
            history.setdefault(int(row["_step"]), set()).update(row)
    assert sorted(history) == [1, 2, 3, 4]
    assert all(set(STEP_TAGS) <= keys for keys in history.values())
    assert any(k.startswith("samples/0") for k in history[2]) and any(k.startswith("samples/1") for k in history[4])
    config_keys = {item_key(u): u.value_json for r in records if r.WhichOneof("record_type") == "config"
                   for u in r.config.update}
    assert "run_toml" in config_keys and "optimizer" in config_keys
    # Where the logs went is said in the run's own messages (console, dashboard, events.jsonl).
    notes = [m.text for m in sink.of(Message)]
    assert any("TensorBoard logs:" in t for t in notes) and any("wandb sync" in t for t in notes)


@pytest.mark.parametrize("outcome", ["stopped", "failed"])
def test_trackers_keep_what_was_logged_and_close_when_a_run_stops_or_fails(tmp_path, tiny_sd1, wandb_home,
                                                                           monkeypatch, outcome):
    from engine.control import RunControl
    from engine.events import CallbackSink
    from engine.train.trainer import Trainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    control = RunControl()
    if outcome == "failed":
        real = Trainer.compute_loss

        def failing(self, batch, generator):
            if self.global_step == 2:
                raise RuntimeError("disk went away")
            return real(self, batch, generator)

        monkeypatch.setattr(Trainer, "compute_loss", failing)
    stop_at_two = CallbackSink(lambda e: isinstance(e, StepMetrics) and e.step == 2 and control.request_stop("test"))
    config = with_logging(make_run(tmp_path, tiny_sd1, steps=4), 'log_with = "all"\nlogging_dir = "tb"')
    result = run_training(config, sink=stop_at_two if outcome == "stopped" else None, control=control)
    assert result.status == outcome and result.global_step == 2

    (stamped,) = (tmp_path / "tb").iterdir()
    assert [s.step for s in tensorboard_events(stamped / "finetuning").Scalars("loss/current")] == [1, 2]
    (log,) = (stamped / "wandb").glob("offline-run-*/run-*.wandb")
    kinds = [r.WhichOneof("record_type") for r in wandb_records(log)]
    assert kinds.count("history") == 2 and "exit" in kinds    # the W&B run was finished


# ---------------------------------------------------------------- names, folders, refusals

def test_folder_and_project_names_follow_kohya(tmp_path, tiny_sd1):
    def plan(logging: str, name: str):
        config, _, _ = load_run_file(with_logging(make_run(tmp_path, tiny_sd1, name=name), logging))
        return config, plan_trackers(config, now=0.0)

    import time

    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(0.0))
    config, p = plan('logging_dir = "logs"\nlog_prefix = "pre_"', "a.toml")
    assert p.names == ("tensorboard",)          # kohya: a logging_dir alone turns TensorBoard on
    assert p.folder == tmp_path / "logs" / f"pre_{stamp}"
    assert p.project == "finetuning" and p.tensorboard_dir == p.folder / "finetuning"
    _, p = plan('log_with = "all"\nlogging_dir = "/abs/logs"\nlog_tracker_name = "mine"', "b.toml")
    assert (p.names, p.folder, p.project) == (("tensorboard", "wandb"), Path("/abs/logs") / stamp, "mine")
    config, p = plan('log_with = "wandb"\nwandb_run_name = "r1"', "c.toml")
    assert p.names == ("wandb",) and p.wandb_run_name == "r1"
    assert p.folder == config.run_dir() / "logs" / stamp   # no logging_dir: inside the run folder
    _, p = plan("", "d.toml")
    assert p is None


def test_a_missing_tracker_package_is_a_config_error_with_the_pip_command(tmp_path, tiny_sd1, monkeypatch):
    import engine.train.trackers as trackers

    real = trackers.find_spec
    monkeypatch.setattr(trackers, "find_spec", lambda name: None if name == "tensorboard" else real(name))
    config = with_logging(make_run(tmp_path, tiny_sd1), 'log_with = "tensorboard"')
    with pytest.raises(ConfigError) as caught:
        run_training(config)
    (problem,) = [p for p in caught.value.problems if p.severity == "error"]   # notes describe the model/data
    assert problem.key == "logging.log_with" and "pip install tensorboard" in problem.hint
    assert problem.file == str(config)
    assert not (tmp_path / "runs" / "t" / "events.jsonl").exists()   # refused before anything started


def test_wandb_online_without_a_login_is_refused_and_offline_mode_is_offered(tmp_path, tiny_sd1, wandb_home,
                                                                              monkeypatch):
    config, _, _ = load_run_file(with_logging(make_run(tmp_path, tiny_sd1), 'log_with = "wandb"'))
    (problem,) = tracker_problems(config)
    assert "no login" in problem.message and "WANDB_MODE=offline" in problem.hint
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracker_problems(config) == []


def test_an_unreachable_wandb_server_warns_and_tensorboard_goes_on(tmp_path, wandb_home, monkeypatch):
    # Online with credentials but no network: wandb gives up after its init_timeout; the run
    # gets a warning that names offline mode, and the other tracker and validation figures go on.
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    notes = ListSink()
    sink = TrackerSink(TrackerPlan(("tensorboard", "wandb"), tmp_path / "logs" / "x", "proj"), "a = 1\n",
                       report=notes.emit)
    sink.emit(RunStarted(run_dir=str(tmp_path), total_steps=10, total_epochs=1, steps_per_epoch=10,
                         num_images=1, batch_size=1, device="cpu"))
    warnings = [m.text for m in notes.of(Message) if m.level == "warning"]
    assert len(warnings) == 1 and "wandb logging is off" in warnings[0] and "WANDB_MODE=offline" in warnings[0]
    sink.emit(ValidationMetrics(step=5, epoch=1, figures={"loss": 0.25, "psnr": 21.5}))
    sink.close()
    tb = tensorboard_events(tmp_path / "logs" / "x" / "proj")
    assert [(s.step, s.value) for s in tb.Scalars("validation/loss")] == [(5, 0.25)]
    assert [(s.step, s.value) for s in tb.Scalars("validation/psnr")] == [(5, 21.5)]
