"""How a global batch splits across the processes of a run (docs/many-gpus.md).

An epoch is planned at the global batch (a dataset's batch size times the processes) as one process
would plan it; each process trains a contiguous part of every global batch and weights its mean
loss by its share, so the gradient the processes average is one process's gradient over the same
samples (engine/train/distributed.py has the rest).
"""

from __future__ import annotations


def rank_part(count: int, processes: int, rank: int) -> tuple[int, int]:
    """The items ``[start, end)`` of a global batch of ``count`` that process ``rank`` trains:
    contiguous, the first ``count % processes`` processes one more. Empty when there are fewer
    items than processes (that process then runs a weightless copy of an item, so the gradient
    averaging still meets every process)."""
    base, extra = divmod(count, processes)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def part_weight(trained: int, count: int, processes: int) -> float:
    """What a process's mean loss is multiplied by so that the average over processes (what the
    gradient averaging computes) is the mean over the whole global batch: its share of the items
    times the number of processes. 1.0 when the batch splits evenly; 0.0 for an empty part."""
    return trained * processes / count
