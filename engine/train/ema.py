"""Exponential moving average of the trained weights (kohya has none; users expect it).

The decay warms up as diffusers' ``EMAModel(use_ema_warmup=True)`` does, with its defaults
(``inv_gamma = 1``, ``power = 2/3``): ``1 - (1 + n / inv_gamma) ** -power`` after ``n`` earlier
updates, capped by ``train.ema_decay``. A flat 0.9999 from the first step would leave a 1,600-step
run's average holding 0.9999 ** 1600, about 85%, of the weights it started from.

The update count is a function of the global step, so a resumed run continues the same average
with no extra state; the average is saved keyed by parameter name.
"""

from __future__ import annotations

import torch

from engine.train.weight_update import pieces_of

WARMUP_INV_GAMMA = 1.0
WARMUP_POWER = 2 / 3


class EMAStateError(ValueError):
    """A saved average that does not fit the parameters being trained."""


def warmup_decay(update: int, cap: float, inv_gamma: float = WARMUP_INV_GAMMA,
                 power: float = WARMUP_POWER) -> float:
    """The decay of the ``update``-th update (1-based), as diffusers' ``EMAModel.get_decay``
    computes it with warm-up on: 0 for the first (the average starts at the trained weights)."""
    earlier = update - 1
    if earlier <= 0:
        return 0.0
    return min(1 - (1 + earlier / inv_gamma) ** -power, cap)


# Shadow tensors updated together: one foreach kernel per piece instead of one per tensor; with
# the average in CPU memory a piece is also what is staged on the GPU at a time (about 256 MB).
PIECE_ELEMENTS = 1 << 26


class EMA:
    def __init__(self, named_parameters, decay: float = 0.9999, update_every: int = 1, cpu_offload: bool = False):
        named = list(named_parameters)
        self.names = [name for name, _p in named]
        if len(set(self.names)) != len(self.names):
            raise ValueError("EMA parameter names must be distinct")
        self.params = [p for _name, p in named]
        self.decay = decay
        self.update_every = update_every
        # Offloaded from a GPU: the average lives in pinned memory, so the copies to and from the
        # GPU are queued like kernels instead of stopping the CPU (as diffusers' --offload_ema).
        self.offloaded = cpu_offload and any(p.device.type == "cuda" for p in self.params)
        device = torch.device("cpu") if cpu_offload else None
        self.shadow = [p.detach().to(device=device or p.device, dtype=torch.float32, copy=True) for p in self.params]
        if self.offloaded:
            self.shadow = [s.pin_memory() for s in self.shadow]
        self.pieces = pieces_of(list(zip(self.shadow, self.params, strict=True)), PIECE_ELEMENTS, size=lambda pair: pair[0].numel())

    def decay_at(self, step: int) -> float:
        """The decay applied at global step ``step`` (an update step)."""
        return warmup_decay(step // self.update_every, self.decay)

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step % self.update_every:
            return
        weight = 1.0 - self.decay_at(step)
        for piece in self.pieces:
            shadows = [s for s, _p in piece]
            live = [p.detach() if p.dtype == torch.float32 else p.detach().float() for _s, p in piece]
            if not self.offloaded:
                torch._foreach_lerp_(shadows, live, weight)
                continue
            staged = [s.to(p.device, non_blocking=True) for s, p in zip(shadows, live, strict=True)]
            torch._foreach_lerp_(staged, live, weight)
            for s, done in zip(shadows, staged, strict=True):
                s.copy_(done, non_blocking=True)

    def _settled(self) -> None:
        """Before the CPU reads an offloaded average: the queued copies back have arrived."""
        if self.offloaded:
            torch.cuda.synchronize()

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and EMA weights (call twice to restore): samples/saves from EMA."""
        self._settled()
        for s, p in zip(self.shadow, self.params, strict=True):
            live = p.detach().clone()
            p.copy_(s.to(p.device, p.dtype))
            s.copy_(live.to(s.device, torch.float32))

    def state_dict(self) -> dict:
        """The average by parameter name, whole (a sharded run's shards are gathered: every process
        calls this)."""
        self._settled()
        return {name: s.full_tensor() if hasattr(s, "full_tensor") else s for name, s in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, state: dict) -> str | None:
        """Restore a saved average. States of older sdft versions keyed it by position ("0",
        "1", ...) and kept it without warm-up: those load by position when the count and shapes
        fit (the note returned says so), else EMAStateError says what differs."""
        if set(state) == set(self.names):
            tensors, note = [state[name] for name in self.names], None
        elif set(state) == {str(i) for i in range(len(self.names))}:
            tensors = [state[str(i)] for i in range(len(self.names))]
            note = ("the state's EMA comes from an older sdft (kept without decay warm-up, keyed by "
                    "position); it continues with warm-up from here")
        else:
            missing = sorted(set(self.names) - set(state))[:3]
            raise EMAStateError(
                f"the state's EMA holds {len(state)} tensors that do not match the {len(self.names)} "
                f"trained parameters (missing e.g. {', '.join(missing) or '-'}); resume without "
                "train.ema, or start the run over")
        for name, s, saved in zip(self.names, self.shadow, tensors, strict=True):
            if saved.shape != s.shape:
                raise EMAStateError(f"the state's EMA of {name} has shape {tuple(saved.shape)}, the "
                                    f"parameter {tuple(s.shape)}; start the run over or resume without train.ema")
        for s, saved in zip(self.shadow, tensors, strict=True):
            if hasattr(s, "full_tensor"):   # a sharded run: this process's shard of the whole average
                from engine.train.sharding import shard_like

                saved = shard_like(s, saved)
            s.copy_(saved)
        return note
