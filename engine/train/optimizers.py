"""Optimizers and learning-rate schedules, from a small registry.

Each optimizer is a builder ``(param_groups, lr, args, device_type) -> torch.optim.Optimizer``.
Optional packages (bitsandbytes, prodigyopt) are imported only when chosen, and a missing
one gives a message that says what to install.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch


class OptionalPackageMissing(RuntimeError):
    pass


def _require(module: str, install: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OptionalPackageMissing(
            f"{purpose} needs the package '{module}', which is not installed: {exc}. "
            f"Install it with: pip install {install}"
        ) from None


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): sign of an
    interpolated momentum, decoupled weight decay. One state tensor per parameter."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                momentum = state["exp_avg"]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                update = momentum.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                momentum.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def _adamw(groups, lr, args, device_type):
    args = dict(args)
    if device_type == "cuda" and "fused" not in args and "foreach" not in args:
        args["fused"] = True  # one kernel for the whole update
    return torch.optim.AdamW(groups, lr=lr, **args)


def _adamw8bit(groups, lr, args, device_type):
    bnb = _require("bitsandbytes", "bitsandbytes (or sdft[bnb])", "AdamW8bit (use_8bit_adam)")
    return bnb.optim.AdamW8bit(groups, lr=lr, **args)


def _lion8bit(groups, lr, args, device_type):
    bnb = _require("bitsandbytes", "bitsandbytes (or sdft[bnb])", "Lion8bit")
    return bnb.optim.Lion8bit(groups, lr=lr, **args)


def _lion(groups, lr, args, device_type):
    return Lion(groups, lr=lr, **args)


def _adafactor(groups, lr, args, device_type):
    from transformers.optimization import Adafactor

    args = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **args}
    return Adafactor(groups, lr=lr, **args)


def _sgd_nesterov(groups, lr, args, device_type):
    args = {"momentum": 0.9, **args}
    return torch.optim.SGD(groups, lr=lr, nesterov=True, **args)


def _prodigy(groups, lr, args, device_type):
    prodigyopt = _require("prodigyopt", "prodigyopt", "The Prodigy optimizer")
    return prodigyopt.Prodigy(groups, lr=lr, **args)


OPTIMIZERS: dict[str, Callable] = {
    "AdamW": _adamw,
    "AdamW8bit": _adamw8bit,
    "Lion": _lion,
    "Lion8bit": _lion8bit,
    "Adafactor": _adafactor,
    "SGDNesterov": _sgd_nesterov,
    "Prodigy": _prodigy,
}


def build_optimizer(name: str, param_groups: Iterable[dict], lr: float, args: dict | None = None,
                    device_type: str = "cpu") -> torch.optim.Optimizer:
    try:
        builder = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}") from None
    try:
        return builder(list(param_groups), lr, dict(args or {}), device_type)
    except TypeError as exc:
        raise ValueError(f"optimizer.args do not fit {name}: {exc}") from None
