"""Shared latent caches are safe: one manifest per run folder, a run registers before its first
write, and `sdft cache prune` refuses while any registered run is live, wherever it is."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_run_lock import ENV, HOLD

from engine.data.cache_prune import manifest_path, referenced_keys, register_run, write_manifest
from engine.train.cache_cli import cache_command
from engine.vocabulary import ExitCode


def _run_file(folder, output_dir: str, cache_dir) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text("{}")
    (folder / "img").mkdir(exist_ok=True)
    run = folder / "run.toml"
    run.write_text(f'[model]\npretrained_model_name_or_path = "m"\n[train]\noutput_dir = "{output_dir}"\n'
                   f'output_name = "same"\n[cache]\ncache_dir = "{cache_dir}"\n[[datasets]]\n'
                   '[[datasets.subsets]]\nimage_dir = "img"\nmetadata_file = "meta.json"\n', encoding="utf-8")
    return run


def _entry(cache, key: str):
    (cache / key[:2]).mkdir(parents=True, exist_ok=True)
    path = cache / key[:2] / f"{key}.safetensors"
    path.write_bytes(b"x")
    return path


def test_two_runs_of_one_name_in_different_folders_keep_their_own_manifests(tmp_path):
    cache = tmp_path / "shared"
    a, b = tmp_path / "one" / "same", tmp_path / "two" / "same"
    write_manifest(cache, a, ["a" * 64])
    write_manifest(cache, b, ["b" * 64])
    assert manifest_path(cache, a) != manifest_path(cache, b)
    assert referenced_keys(cache) == {"a" * 64, "b" * 64}
    assert json.loads(manifest_path(cache, b).read_text())["run_dir"] == str(b)


def test_prune_refuses_while_a_run_in_another_output_dir_is_live(tmp_path, capsys):
    cache = tmp_path / "shared"
    mine = _run_file(tmp_path / "a", "out-a", cache)
    theirs = tmp_path / "b" / "out-b" / "same"          # same output_name, another output_dir
    register_run(cache, theirs)                          # what a run does before its first write
    stale = _entry(cache, "c" * 64)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(theirs)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cache_command(["prune", str(mine)]) == ExitCode.BUSY
        err = capsys.readouterr().err
        assert str(theirs) in err and f"PID {holder.pid}" in err
        assert stale.exists()
    finally:
        holder.kill()
        holder.wait()
    assert cache_command(["prune", str(mine)]) == 0
    assert not stale.exists()


@pytest.mark.parametrize("resumed_keys", [[], ["d" * 64]])
def test_registering_keeps_the_keys_a_run_used_before(tmp_path, resumed_keys):
    cache, run_dir = tmp_path / "shared", tmp_path / "runs" / "x"
    if resumed_keys:
        write_manifest(cache, run_dir, resumed_keys)
    register_run(cache, run_dir)
    assert referenced_keys(cache) == set(resumed_keys)


def test_training_registers_on_the_cache_before_its_first_entry(tmp_path, tiny_sd1, monkeypatch):
    from train_helpers import make_run

    from engine.data import cache as cache_module
    from engine.runner import run_training

    config = make_run(tmp_path, tiny_sd1, steps=1)
    seen = []
    real = cache_module.LatentCache.prepare

    def prepare(self, *args, **kwargs):
        seen.append(list((self.cache_dir / "runs").glob("*.json")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cache_module.LatentCache, "prepare", prepare)
    assert run_training(config).status == "completed"
    manifest = manifest_path(tmp_path / "runs" / ".latent-cache", tmp_path / "runs" / "t")
    assert seen == [[manifest]], "the run's manifest existed before it cached anything"
    assert len(json.loads(manifest.read_text())["keys"]) == 6
