"""Several processes, one run (docs/many-gpus.md).

Two things make N processes train the run one process would:
- **One global batch, split.** An epoch is planned at the global micro-batch (the dataset's batch
  size times the processes), exactly as one process would plan it, and each process takes its
  contiguous part of every global batch (:func:`rank_part`). Every random draw (noise, timesteps,
  crops, flips, caption shuffles) is keyed by the global batch and the sample's place in it, never
  by the process, and each process's loss is weighted by its share, so the gradient the processes
  average is the one process's gradient over the same samples.
- **One decision per step.** Stop, save-now, sample-now and pause reach one process (the dashboard
  runs in the main one; a signal may hit any one); :class:`ControlAgreement` combines every
  process's requests in one small collective per step over a CPU (gloo) side group, so all act on
  the same step, and the GPUs never wait for it.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass

import torch

DEFAULT_TIMEOUT_MINUTES = 60   # caching shares, a preview on the main process: a wait may be long


def rank_part(count: int, processes: int, rank: int) -> tuple[int, int]:
    """The items ``[start, end)`` of a global batch of ``count`` that process ``rank`` trains:
    contiguous, the first ``count % processes`` processes one more. Empty when there are fewer
    items than processes (that process then runs a weightless copy of an item, see
    :func:`part_weight`, so the gradient averaging still meets every process)."""
    base, extra = divmod(count, processes)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def part_weight(trained: int, count: int, processes: int) -> float:
    """What a process's mean loss is multiplied by so that the average over processes (what the
    gradient averaging computes) is the mean over the whole global batch: its share of the items
    times the number of processes. 1.0 when the batch splits evenly; 0.0 for an empty part."""
    return trained * processes / count


@dataclass(frozen=True)
class Agreed:
    """What every process does at this step boundary."""
    stop: bool = False
    save: bool = False
    sample: bool = False
    pause: bool = False


class ControlAgreement:
    """One process: the RunControl's own requests. Several: each process's requests combined
    (any process may ask for a stop; save, sample and pause come from the main process's UI)."""

    def __init__(self, processes: int = 1, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES):
        self.processes = processes
        self.group = None
        if processes > 1:
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=timeout_minutes))

    def _combined(self, flags: list[int]) -> list[int]:
        if self.group is None:
            return flags
        import torch.distributed as dist

        tensor = torch.tensor(flags, dtype=torch.int32)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return tensor.tolist()

    def agree(self, control) -> Agreed:
        """The step boundary's decision (consumes this process's save and sample requests)."""
        local = [int(control.stop_requested), int(control.take_save_request()),
                 int(control.take_sample_request()), int(control.paused)]
        return Agreed(*(bool(v) for v in self._combined(local)))

    def hold_while_paused(self, control, poll_s: float = 0.2) -> bool:
        """Wait together until the pause ends; True when a stop ended it."""
        while True:
            if self.group is None:
                control.wait_while_paused(poll_s)
            else:
                time.sleep(poll_s)
            stop, paused = self._combined([int(control.stop_requested), int(control.paused)])
            if stop or not paused:
                return bool(stop)

    def barrier(self) -> None:
        if self.group is not None:
            import torch.distributed as dist

            dist.barrier(group=self.group)
