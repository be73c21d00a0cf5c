"""How long a run trains: the one place steps and epochs are resolved.

``max_train_epochs`` wins over ``max_train_steps``; an epoch is every global batch of the dataset
once (the processes of a multi-GPU run each train a part of every one), grouped by gradient
accumulation. The data
pipeline (a fractional ``token_warmup_step``), the learning-rate schedule, the loop and preflight
all read the result instead of working it out again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    batches_per_epoch: int       # global micro-batches per epoch (each process trains a part of each)
    steps_per_epoch: int
    total_steps: int
    total_epochs: int


def resolve_schedule(train, batches_per_epoch: int) -> Schedule:
    """The run's schedule from the ``[train]`` table and the dataset's global batches per epoch
    (every process takes a part of each: engine/data/parts.py)."""
    if batches_per_epoch == 0:
        raise ValueError("the dataset yields no batches: check the image folders and metadata files")
    steps_per_epoch = math.ceil(batches_per_epoch / train.gradient_accumulation_steps)
    total = train.max_train_epochs * steps_per_epoch if train.max_train_epochs else train.max_train_steps
    return Schedule(batches_per_epoch, steps_per_epoch, total, math.ceil(total / steps_per_epoch))


def epochs_between_saves(save, schedule: Schedule) -> int | None:
    """Epochs between model saves: ``save.n_epoch_ratio`` spreads about N saves over the run
    (kohya's floor(epochs / N), at least 1) and replaces ``save.every_n_epochs``."""
    if save.n_epoch_ratio:
        return max(1, schedule.total_epochs // save.n_epoch_ratio)
    return save.every_n_epochs


