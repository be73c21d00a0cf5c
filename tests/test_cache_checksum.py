"""Each cached latent carries a checksum of its arrays: garbled but finite values are caught."""

from __future__ import annotations

import torch
from data_helpers import run_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_data_pipeline import TOML, dataset, vae  # noqa: F401 - shared fixtures

from engine.data.pipeline import TrainingData


def _cache_and_garble_first_entry(cfg, encoder, garble):
    """Cache every latent, then change the first entry's ``mean`` in place, keeping its metadata
    (checksum included). Returns (the first data, the entry, its metadata, the garbled tensors)."""
    first = TrainingData.from_config(cfg, log=lambda s: None)
    first.prepare_latents(encoder, "cpu")
    victim = first._latents[0]
    with safe_open(str(victim.file), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(victim.file))
    tensors["mean"] = garble(tensors["mean"])
    save_file(tensors, str(victim.file), metadata=meta)
    return first, victim, meta, tensors


def test_a_garbled_but_finite_entry_is_re_encoded_with_a_warning_naming_its_image(dataset, vae):  # noqa: F811
    cfg = run_config(dataset, TOML)
    # finite, right shape: only the checksum sees it
    first, victim, meta, tensors = _cache_and_garble_first_entry(cfg, vae, lambda mean: mean * 1.5 + 0.25)
    assert len(meta["sdft.tensors_sha256"]) == 64
    lines = []
    again = TrainingData.from_config(cfg, log=lines.append)
    again.prepare_latents(vae, "cpu")
    assert (again.cache_result.encoded, again.cache_result.reused) == (1, len(first._latents) - 1)
    image = first.items[0].path
    assert any("damaged" in line and str(image) in line and "checksum" in line for line in lines), lines
    restored = load_file(str(victim.file))
    assert torch.equal(restored["mean"], load_file(str(again._latents[0].file))["mean"])
    assert not torch.equal(restored["mean"], tensors["mean"])


def test_entries_without_a_checksum_from_older_versions_are_still_reused(dataset, vae):  # noqa: F811
    cfg = run_config(dataset, TOML)
    first = TrainingData.from_config(cfg, log=lambda s: None)
    first.prepare_latents(vae, "cpu")
    for latent in first._latents.values():
        with safe_open(str(latent.file), "pt") as fh:
            meta = {k: v for k, v in fh.metadata().items() if k != "sdft.tensors_sha256"}
        save_file(load_file(str(latent.file)), str(latent.file), metadata=meta)
    again = TrainingData.from_config(cfg, log=lambda s: None)
    again.prepare_latents(vae, "cpu")
    assert again.cache_result.encoded == 0


def test_verify_exists_trusts_the_files_and_full_checks_them(dataset, vae):  # noqa: F811
    cfg = run_config(dataset, TOML)
    _first, victim, _meta, tensors = _cache_and_garble_first_entry(cfg, vae, lambda mean: mean + 0.5)
    trusting = run_config(dataset, TOML, cache={"verify": "exists"})
    again = TrainingData.from_config(trusting, log=lambda s: None)
    again.prepare_latents(vae, "cpu")
    assert again.cache_result.encoded == 0, "exists: the file is used as it is"
    assert torch.equal(load_file(str(victim.file))["mean"], tensors["mean"])
    checking = TrainingData.from_config(cfg, log=lambda s: None)
    checking.prepare_latents(vae, "cpu")
    assert checking.cache_result.encoded == 1, "full: the checksum catches it"


def test_a_float16_cache_is_not_served_to_a_float32_run(dataset, vae):  # noqa: F811
    half = run_config(dataset, TOML, cache={"dtype": "float16"})
    first = TrainingData.from_config(half, log=lambda s: None)
    first.prepare_latents(vae, "cpu")
    assert first.cache_result.encoded == len(first._latents)
    full = TrainingData.from_config(run_config(dataset, TOML), log=lambda s: None)
    full.prepare_latents(vae, "cpu")
    assert full.cache_result.reused == 0, "the float32 run encodes its own entries"
    again = TrainingData.from_config(run_config(dataset, TOML, cache={"dtype": "float16"}), log=lambda s: None)
    again.prepare_latents(vae, "cpu")
    assert again.cache_result.encoded == 0, "and the float16 ones stay for float16 runs"
