"""Which images are held out for the validation loss: every image of an ``is_val`` subset, and
``validation_split`` of each other subset's images, picked by a seeded shuffle (kohya's
``split_train_val``: shuffled with ``validation_seed``, else the run's seed; the first
``ceil(n·(1 − split))`` train, the rest validate). Held-out images never train; regularization
images (``is_reg``) are never held out, as in kohya."""

from __future__ import annotations

import math
import random
from typing import Callable


def validation_count(n: int, split: float) -> int:
    """How many of ``n`` images a split holds out: n − ceil(n·(1 − split)), so at least one
    image trains whenever split < 1 (a hair of slack absorbs float error, e.g. 10·0.7)."""
    if split <= 0 or n == 0:
        return 0
    return n - math.ceil(n * (1.0 - split) - 1e-9)


def hold_out(items: list, datasets: list, seed: int, log: Callable[[str], None]) -> int:
    """Mark the held-out items (``item.validation = True``); returns how many."""
    by_subset: dict[int, list] = {}
    for item in items:
        by_subset.setdefault(id(item.subset), []).append(item)
    held = 0
    notes = []
    for members in by_subset.values():
        sub, spec = members[0].subset, datasets[members[0].dataset]
        if sub.is_val:
            chosen = members
        elif sub.is_reg:
            continue
        else:
            count = validation_count(len(members), spec.validation_split)
            if not count:
                continue
            order = list(members)
            random.Random(spec.validation_seed if spec.validation_seed is not None else seed).shuffle(order)
            chosen = order[len(order) - count:]
        for item in chosen:
            item.validation = True
        held += len(chosen)
        notes.append(f"{sub.key}: {len(chosen)} of {len(members)}")
    if held:
        log(f"{held} image(s) held out for the validation loss ({'; '.join(notes)})")
    return held
