"""The run's seed: the file's, or one drawn once and then kept for the run's whole life.

No torch here, so the wizard can draw the seed it writes into a new run file.
"""

from __future__ import annotations

import random


def new_seed() -> int:
    """A fresh random seed (what an unset ``train.seed`` becomes)."""
    return random.SystemRandom().randrange(2 ** 31)


def resolve_seed(seed: int | None) -> int:
    return seed if seed is not None else new_seed()
