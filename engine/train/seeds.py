"""The run's seed: the file's, or one drawn once and then kept for the run's whole life.

No torch at import, so the wizard can draw the seed it writes into a new run file.
"""

from __future__ import annotations

import random


def new_seed() -> int:
    """A fresh random seed (what an unset ``train.seed`` becomes)."""
    return random.SystemRandom().randrange(2 ** 31)


def resolve_seed(seed: int | None) -> int:
    return seed if seed is not None else new_seed()


def seed_global_generators(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices) with the run's seed, as
    kohya's ``set_seed`` does: code that draws from them (an optimizer class the run names) then
    repeats from run to run, and a resume restores where they were (engine/train/saves/state.py)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_in_effect(config, resume: str | None) -> int | None:
    """The file's seed; when the file sets none and the run resumes, the seed the state was
    trained with (the run goes on exactly as it started); None means draw a new one."""
    if config.train.seed is not None:
        return config.train.seed
    value = resume or config.train.resume
    if not value:
        return None
    from engine.train.saves.state import find_state_folder, read_counters

    try:
        folder = find_state_folder(value, config.run_dir(), config.base_dir)
        return read_counters(folder).seed if folder is not None else None
    except (OSError, ValueError, TypeError, KeyError):
        return None   # a bad state folder: the trainer reports it with its own message
