"""Library warnings go to the run's sdft.log, not the console; sdft's own messages stay on it."""

from __future__ import annotations

import logging
import sys
import warnings

from train_helpers import make_run

from engine.events import ListSink, Message
from engine.run_log import library_output_to
from engine.runner import run_training


def to_stderr(message, category, filename, lineno, file=None, line=None):
    """Python's own way of showing a warning (pytest records them instead, so it is put back)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


NOTICE = ("`clip_sample` should be set to False in the configuration file.\n"
          "Please make sure to update the config accordingly")   # two lines, as diffusers' are


def test_warnings_and_library_records_go_to_the_log_and_the_settings_come_back(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(warnings, "showwarning", to_stderr)
    log = tmp_path / "run" / "sdft.log"
    diffusers = logging.getLogger("diffusers")
    before = (warnings.showwarning, diffusers.handlers[:], diffusers.level, diffusers.propagate)
    with warnings.catch_warnings(), library_output_to(log):
        warnings.simplefilter("always")
        warnings.warn(NOTICE, FutureWarning, stacklevel=1)
        logging.getLogger("diffusers.pipelines").warning("scheduler config is old")
    out, err = capfd.readouterr()
    assert "clip_sample" not in err + out and "scheduler config" not in err + out
    text = log.read_text()
    assert "FutureWarning: `clip_sample` should be set" in text and "update the config accordingly" in text
    assert "WARNING diffusers.pipelines: scheduler config is old" in text
    assert (warnings.showwarning, diffusers.handlers, diffusers.level, diffusers.propagate) == before


def test_a_warning_inside_training_lands_in_sdft_log_not_on_stderr(tmp_path, tiny_sd1, capfd, monkeypatch):
    from engine.train.trainer import Trainer

    original = Trainer.train_step

    def warning_step(self, batches):
        if self.global_step == 1:   # as diffusers warns at the first sample, mid-run
            warnings.warn(NOTICE, FutureWarning, stacklevel=1)
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", warning_step)
    monkeypatch.setattr(warnings, "showwarning", to_stderr)
    sink = ListSink()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = run_training(make_run(tmp_path, tiny_sd1, steps=3), sink=sink)
    assert result.status == "completed", result.message
    out, err = capfd.readouterr()
    assert "clip_sample" not in err + out, err
    assert "FutureWarning: `clip_sample` should be set" in (tmp_path / "runs" / "t" / "sdft.log").read_text()
    assert sink.of(Message), "sdft's own messages still reach the caller's sink (the console)"
    assert warnings.showwarning is to_stderr   # put back after the run
