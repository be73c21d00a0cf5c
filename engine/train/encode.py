"""Encode a run's latents now and train later (``sdft cache encode RUN.toml``).

The latents a run would cache at its start, encoded by the same code (model load, dataset,
latent cache) without building the rest of training: on a GPU box the encoding can run while
the run file is still being edited, and the first training start then reuses every entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def encode_latents(config_path: str | Path, say: Callable[[str], None], progress=None):
    """Fill the run's disk cache; returns the cache result (encoded, reused, failed images).
    Raises ConfigError for a bad file, ValueError when the run does not cache to disk, and
    RunFolderBusy while a run of the same folder is live."""
    from engine.config.run_toml import load_run_config
    from engine.data.pipeline import TrainingData
    from engine.families import family_of
    from engine.runlock import RunLock
    from engine.train.components import cache_latents, default_side, load_base_model
    from engine.train.distributed import ControlAgreement
    from engine.train.precision import start_accelerator

    cfg = load_run_config(config_path)
    if cfg.cache.latents != "disk":
        raise ValueError(f'cache.latents = "{cfg.cache.latents}": only a disk cache outlives the command; '
                         'set cache.latents = "disk"')
    with RunLock(cfg.run_dir(), "sdft cache encode"):   # a live training run of this folder is caching too
        accelerator, precision = start_accelerator(cfg, say)
        model, noise = load_base_model(cfg, accelerator.device, say)
        side = default_side(model, noise)
        data = TrainingData.from_config(cfg, default_resolution=(side, side), family=family_of(model), log=say)
        cache_latents(data, model.vae, accelerator, precision, progress, ControlAgreement())
        return data.cache_result
