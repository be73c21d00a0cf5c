"""Exponential moving average of the trained weights (kohya has none; users expect it)."""

from __future__ import annotations

import torch


class EMA:
    def __init__(self, parameters, decay: float = 0.9999, update_every: int = 1, cpu_offload: bool = False):
        self.params = [p for p in parameters]
        self.decay = decay
        self.update_every = update_every
        device = torch.device("cpu") if cpu_offload else None
        self.shadow = [p.detach().to(device=device or p.device, dtype=torch.float32, copy=True) for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step % self.update_every:
            return
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().to(s.device, torch.float32), 1.0 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and EMA weights (call twice to restore): samples/saves from EMA."""
        for s, p in zip(self.shadow, self.params):
            live = p.detach().clone()
            p.copy_(s.to(p.device, p.dtype))
            s.copy_(live.to(s.device, torch.float32))

    def state_dict(self) -> dict:
        return {f"{i}": s for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        for i, s in enumerate(self.shadow):
            s.copy_(state[f"{i}"])
