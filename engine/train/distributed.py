"""Several processes, one run (docs/many-gpus.md).

Two things make N processes train the run one process would:
- **One global batch, split** (engine/data/parts.py). Every random draw (noise, timesteps, crops,
  flips, caption shuffles) is keyed by the global batch and the sample's place in it, never by the
  process: a process draws for the whole global batch and keeps its rows (:func:`rows_of`).
- **One decision per step.** Stop, save-now, sample-now and pause reach one process (the dashboard
  runs in the main one; a signal may hit any one); :class:`ControlAgreement` combines every
  process's requests in one small collective per step over a CPU (gloo) side group, so all act on
  the same step, and the GPUs never wait for it.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

# torch is imported inside the functions: the runner imports this module before any training

DEFAULT_TIMEOUT_MINUTES = 60   # caching shares, a preview on the main process: a wait may be long


def is_distributed() -> bool:
    """Started by torchrun or accelerate launch with more than one process (their environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch, or a plain single process: the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def use_local_gpu() -> None:
    """In a process of a multi-GPU run, make its own GPU (LOCAL_RANK) the current one before any
    CUDA work: the checks before training would otherwise all open a context on GPU 0."""
    import torch

    if is_distributed() and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def ddp_timeout_minutes(train) -> float:
    """How long a process waits for the others (kohya's ``--ddp_timeout``, in minutes)."""
    value = getattr(train, "ddp_timeout", None)
    return float(value) if value else DEFAULT_TIMEOUT_MINUTES


def leave_process_group() -> None:
    """End this process's part in a multi-process run: destroy its process groups while Python
    is still whole. Left to the interpreter's exit, gloo's worker threads may still hold finished
    work whose tensors are freed during finalization, and the process aborts ("terminate called
    without an active exception", exit -6) after the run ended well (pytorch/pytorch#190489).
    Nothing to do in a process that never joined one (torch is not imported for it)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rows_of(tensor, part: tuple[int, int, int]):
    """This process's rows of a tensor drawn for the whole global batch (``part`` = start, end,
    count, as ``Batch.part``)."""
    start, end, count = part
    return tensor if (start, end) == (0, count) else tensor[start:end]


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
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(flags, dtype=torch.int32)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return tensor.tolist()

    def agree(self, control) -> Agreed:
        """The step boundary's decision (consumes this process's save and sample requests)."""
        local = [int(control.stop_requested), int(control.take_save_request()),
                 int(control.take_sample_request()), int(control.paused)]
        return Agreed(*(bool(v) for v in self._combined(local)))

    def stop_agreed(self, stop: bool) -> bool:
        """Whether any process asks for a stop (all of them wait here for the others)."""
        return bool(self._combined([int(stop)])[0])

    def hold_while_paused(self, control, poll_s: float = 0.2, on_poll=None) -> bool:
        """Wait together until the pause ends; True when a stop ended it. ``on_poll`` runs at each
        look (the main process reads sdft watch's requests there)."""
        while True:
            if self.group is None:
                control.wait_while_paused(poll_s)
            else:
                time.sleep(poll_s)
            if on_poll is not None:
                on_poll()
            stop, paused = self._combined([int(control.stop_requested), int(control.paused)])
            if stop or not paused:
                return bool(stop)

    def from_main(self, value):
        """The main process's ``value`` in every process (a small object: a folder's path)."""
        if self.group is None:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0, group=self.group)
        return holder[0]

    def barrier(self) -> None:
        if self.group is not None:
            import torch.distributed as dist

            dist.barrier(group=self.group)
