"""An optimizer class a run can name (``optimizer.type = "tests.noisy_optimizer.NoisySGD"``) that
draws from torch's global generator, as some third-party optimizers do: its runs resume exactly
only if the state restores that generator (tests/test_resume_global_rng.py)."""

from __future__ import annotations

import torch


class NoisySGD(torch.optim.SGD):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.add_(torch.randn_like(p.grad), alpha=1e-3)
        return super().step(closure)
