"""`sdft cache encode RUN.toml`: encode a run's latents now, train later; training then reuses them."""

from __future__ import annotations

from train_helpers import make_run

from engine.events import ListSink
from engine.runner import run_training
from engine.train.cache_cli import cache_command


def test_encode_now_and_training_reuses_every_entry(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1, steps=1)
    assert cache_command(["encode", str(config)]) == 0
    assert "latents: 6 encoded, 0 already cached" in capsys.readouterr().out
    assert cache_command(["encode", str(config)]) == 0
    assert "latents: 0 encoded, 6 already cached" in capsys.readouterr().out
    sink = ListSink()
    assert run_training(config, sink=sink).status == "completed"
    texts = [e.text for e in sink.events if e.kind == "message"]
    assert any("latent cache: 6 reused" in t for t in texts), texts


def test_encode_needs_a_disk_cache(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1, steps=1, cache="memory")
    assert cache_command(["encode", str(config)]) == 2
    assert 'set cache.latents = "disk"' in capsys.readouterr().err
