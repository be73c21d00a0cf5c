"""A run that diverges stops instead of saving NaNs (docs/precision.md, "When a run diverges").

Each step notes, on the device, the first step whose loss or gradient norm was not finite (no
read: the GPU keeps running). The note is read where the weights are about to be used or the
figures are read anyway: each logging interval, and before a model or state is saved, a preview
sampled or the validation loss computed; those also check that the trained weights are finite
(an update can overflow them while the loss that caused it was still finite). Under fp16 the
gradient scaler skips steps with inf/NaN gradients by design; there a run has diverged when it
skipped ``SKIPPED_IN_A_ROW`` steps in a row.

A diverged run raises :class:`Diverged`: the runner ends it as failed (exit 3) with the step, the
likely cause and the last good state, and writes nothing more.
"""

from __future__ import annotations

import functools

import torch

SKIPPED_IN_A_ROW = 25


class Diverged(RuntimeError):
    """Training produced non-finite numbers: the message names the step and the likely cause."""

    def __init__(self, message: str, first_step: int | None):
        super().__init__(message)
        self.first_step = first_step


class DivergenceWatch:
    """Notes bad steps on the device; :meth:`check` reads the note and raises Diverged. ``bundle``
    is the run's OptimizerBundle (its trained parameters and LR schedule)."""

    def __init__(self, cfg, mixed_precision: str, bundle, device: torch.device, scaler=None):
        self.cfg, self.mixed_precision, self.bundle = cfg, mixed_precision, bundle
        self.scaler = scaler
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.tripped: Diverged | None = None

    def note(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        """After optimizer step ``step`` (1-based): remember it if its loss or gradient norm was
        not finite (device-side; a scaler's skips are its own business, see the module doc)."""
        if self.scaler is not None:
            return
        bad = ~torch.isfinite(loss.detach().float().sum())
        if grad_norm is not None:
            bad = bad | ~torch.isfinite(torch.as_tensor(grad_norm, device=bad.device).float())
        first = self.first_bad
        self.first_bad = torch.where(bad & (first < 0), torch.full_like(first, step), first)

    def check(self, step: int, weights: bool = True) -> None:
        """Raise Diverged if a bad step was noted, the fp16 scaler keeps skipping, or (``weights``)
        a trained weight is not finite. Reads the device: call it where a read happens anyway."""
        if self.tripped is not None:
            raise self.tripped
        first = int(self.first_bad)
        what = None
        if first >= 0:
            what = f"the loss or the gradient became NaN or infinite at step {first}"
        elif weights and not _all_finite(self.bundle.trained_params):
            what = f"the trained weights hold NaN or infinite values by step {step}"
            first = step
        else:
            skipped = getattr(self.bundle.lr_scheduler, "skipped_in_a_row", 0)
            if skipped >= SKIPPED_IN_A_ROW:
                what = (f"fp16's gradient scaler skipped the last {skipped} steps in a row (their gradients "
                        "overflowed at every scale)")
                first = step - skipped + 1
        if what is None:
            return
        cause = likely_cause(self.cfg, self.mixed_precision)
        self.tripped = Diverged(f"training diverged: {what} (noticed at step {step}). {cause} Nothing was saved "
                                "from that step on.", first)
        raise self.tripped


def _all_finite(params) -> bool:
    """Whether every weight is finite, in one fused call: a tensor's largest absolute value
    (its inf-norm, which cannot overflow) is finite exactly when all of its values are, and is
    inf or NaN otherwise. One isfinite per weight cost more than the tiny model's step. On a
    sharded run each process checks its own shards as plain tensors, then the processes agree."""
    shards = [p for p in params if hasattr(p, "to_local")]
    tensors = [t for t in (p.to_local() if hasattr(p, "to_local") else p for p in params) if t.numel()]
    finite = True   # an empty tensor has no inf-norm, and no NaN
    if tensors:
        with torch.no_grad():   # a read: no graph
            largest = torch._foreach_norm(tensors, float("inf"))
        finite = bool(torch.isfinite(torch.stack(largest)).all())
    if shards:
        from engine.train.sharding import every_process_agrees

        finite = every_process_agrees(finite, shards[0].device_mesh)
    return finite


def checked(method):
    """For a method of an object holding ``self.parts`` (RunParts) that uses the trained weights
    (save, sample, validate): the run's DivergenceWatch checks first."""
    @functools.wraps(method)
    def wrapper(self, ctx, *args, **kwargs):
        watch = getattr(self.parts, "watch", None)
        if watch is not None:
            watch.check(ctx.step)
        return method(self, ctx, *args, **kwargs)
    return wrapper


def likely_cause(cfg, mixed_precision: str) -> str:
    """Why a run goes NaN, most likely first: a learning rate above the optimizer's usual range
    (engine/registry/optimizers.py), fp16's narrow range, or the data."""
    from engine.registry.optimizers import find

    o = cfg.optimizer
    entry = find(o.type)
    lr = max(o.learning_rate, o.learning_rate_te or 0.0)
    if entry is not None and entry.lr_range and lr > entry.lr_range[1]:
        return (f"Likely cause: learning_rate = {lr:g} is above {entry.name}'s usual range "
                f"({entry.lr_range[0]:g} to {entry.lr_range[1]:g}); lower it.")
    if mixed_precision == "fp16":
        return ('Likely cause: fp16\'s narrow range; use mixed_precision = "bf16" on a GPU that has it, or '
                "a lower learning rate.")
    return ("Likely causes: a learning rate too high for this model and optimizer (lower it, or add a "
            "warm-up), or a broken image or latent (sdft prepare checks the data).")
