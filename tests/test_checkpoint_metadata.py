"""Saved models embed the run TOML only up to 64 KiB; beyond that its sha256 alone."""

from __future__ import annotations

import hashlib

from safetensors import safe_open
from train_helpers import make_run

from engine.train.saves.checkpoints import CONFIG_METADATA_LIMIT, config_metadata


def test_small_config_is_embedded_with_its_sha256():
    text = "[train]\nseed = 1\n"
    meta = config_metadata(text)
    assert meta == {"sdft.config": text, "sdft.config_sha256": hashlib.sha256(text.encode()).hexdigest()}


def test_config_over_the_limit_keeps_only_its_sha256():
    text = "# " + "x" * CONFIG_METADATA_LIMIT + "\n"
    meta = config_metadata(text)
    assert "sdft.config" not in meta and meta["sdft.config_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert "config.toml" in meta["sdft.config_omitted"]


def test_a_trained_model_with_a_huge_commented_run_file_stays_small(tmp_path, tiny_sd1):
    from engine.runner import run_training

    config = make_run(tmp_path, tiny_sd1, steps=1)
    config.write_text("# " + "comment " * 20_000 + "\n" + config.read_text())   # ~160 KB of comments
    result = run_training(config)
    assert result.status == "completed", result.message
    with safe_open(result.model_path, "pt") as fh:
        meta = fh.metadata()
    resolved = (tmp_path / "runs" / "t" / "config.toml").read_text(encoding="utf-8")
    assert "sdft.config" not in meta
    assert meta["sdft.config_sha256"] == hashlib.sha256(resolved.encode()).hexdigest()
    assert sum(len(v) for v in meta.values()) < CONFIG_METADATA_LIMIT
