"""How the optimizer's updates reach the weights (docs/precision.md).

One interface, three ways, chosen once per run by :func:`weight_update_for`:

* :class:`AllAtOnce`: the optimizer's own ``step()`` over every parameter after backward; the
  usual way, and the only one that works with fp16's gradient scaler.
* :class:`Rounded`: bf16 weights (``memory.full_bf16``) written back with stochastic
  rounding. The optimizer steps on fp32 working copies of a few parameters at a time; the result
  goes back to bf16 rounded up or down at random, in proportion to where it lies between the two
  neighbouring bf16 values. An update far below one bf16 step (lr 5e-6 against a step of 1e-4 at
  an ordinary weight) then moves the weight by the right amount on average, where rounding to
  nearest would drop it.
* :class:`FusedBackward`: each parameter is stepped inside backward as soon as its gradient is
  complete, and its gradient freed, so the whole model's gradients never exist at once (kohya's
  and OneTrainer's fused backward pass). bf16 weights are rounded as above.

The random bits of the rounding come from a generator seeded by the run's seed, the step and the
parameter's index, so a resumed run rounds exactly as an uninterrupted one, and every process of
a multi-GPU run rounds its (identical) weights identically.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

# Elements stepped together on fp32 copies (parameter, gradient and the rounding's random bits:
# 12 bytes each, so about 400 MB at a time). Larger pieces launch fewer kernels; smaller ones keep
# the transient low. The planner counts it (engine/plan/estimate.py).
PIECE_ELEMENTS = 1 << 25

FUSED_ONE_PROCESS = ("memory.fused_backward_pass runs in one process for now: each weight would be stepped "
                     "before the processes have averaged its gradient. Train on one GPU, or turn it off for "
                     "several")


def stochastic_round_(target: torch.Tensor, source: torch.Tensor, generator: torch.Generator) -> None:
    """``target`` (bf16) := ``source`` (fp32) rounded to one of its two bf16 neighbours, the upper one
    with probability equal to its distance from the lower over the gap: unbiased, so updates far
    below a bf16 step accumulate. A bf16 value is the upper 16 bits of an fp32 one; adding 16 random
    bits to the lower half before cutting it off carries into the upper half with that probability."""
    bits = source.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, source.shape, dtype=torch.int32, device=source.device, generator=generator)
    target.copy_(noise.add_(bits).bitwise_and_(-65536).view(torch.float32))


def rounding_seed(seed: int, step: int, index: int) -> int:
    """The rounding generator's seed for parameter ``index`` at optimizer step ``step``: a pure
    function (no rank: every process rounds its copy of a weight the same way)."""
    digest = hashlib.blake2b(f"{seed}/{step}/round".encode(), digest_size=8).digest()
    base = int.from_bytes(digest, "little")
    return (base + index * 0x9E3779B97F4A7C15) % (2 ** 63)


@contextmanager
def stepping_only(optimizer, params: list) -> None:
    """Inside, ``optimizer.step()`` sees only ``params``: each group keeps its hyperparameters and
    its states (keyed by parameter), only its list is cut. For optimizers whose update of a weight
    depends on nothing but that weight's gradient and state (``OptimizerEntry.per_parameter``)."""
    wanted = {id(p) for p in params}
    saved = [group["params"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) in wanted]
    try:
        yield
    finally:
        for group, kept in zip(optimizer.param_groups, saved, strict=True):
            group["params"] = kept


@contextmanager
def fp32_working_copies(params: list) -> None:
    """Each bf16 parameter, and its gradient, as fp32 while inside (the optimizer's maths and its
    newly made states are then fp32); the bf16 storage is put back on leaving, unchanged unless
    the caller wrote into it. Other parameters are left as they are."""
    swapped = []
    for p in params:
        if p.dtype != torch.bfloat16:
            continue
        grad = p.grad
        p.grad = None
        swapped.append((p, p.data))
        p.data = p.data.float()
        if grad is not None:
            p.grad = grad.float()
    try:
        yield [(p, stored) for p, stored in swapped]
    finally:
        for p, stored in swapped:
            p.grad = None
            p.data = stored


@dataclass
class StepOutcome:
    """What an optimizer step reports: the gradient norm before clipping (a device tensor or None)
    and, under fp16's gradient scaler, a device flag set when the step was skipped (inf/NaN)."""
    grad_norm: torch.Tensor | None = None
    skipped: torch.Tensor | None = None


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)   # accelerate wraps it


class WeightUpdate:
    """What the Trainer calls each optimizer step: :meth:`begin` before the step's first forward,
    :meth:`finish` after its last backward (clips, steps, and returns a StepOutcome).

    ``clip(params, max_norm)`` clips gradients to a norm and returns the norm before clipping
    (accelerate's ``clip_grad_norm_``, which unscales fp16 gradients first)."""

    steps_in_backward = False   # weights change during backward: a failure there leaves no clean state

    def __init__(self, optimizer, params: list, max_grad_norm: float = 0.0, clip=None):
        self.optimizer = optimizer
        self.params = params
        self.max_grad_norm = max_grad_norm
        self.clip = clip or torch.nn.utils.clip_grad_norm_
        self.step = self.seed = 0

    def begin(self, step: int, seed: int) -> None:
        self.step, self.seed = step, seed

    def finish(self) -> StepOutcome:
        raise NotImplementedError

    def close(self) -> None:
        """Undo anything installed on the parameters (a bench reuses one model for many runs)."""

    def _clipped_norm(self):
        if self.max_grad_norm <= 0:
            return None
        norm = self.clip(self.params, self.max_grad_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm   # sharded: one number


class AllAtOnce(WeightUpdate):
    """The optimizer's own step over every parameter, through accelerate's wrapper (and its
    gradient scaler under fp16)."""

    def __init__(self, optimizer, params: list, max_grad_norm: float = 0.0, clip=None, scaler=None):
        super().__init__(optimizer, params, max_grad_norm, clip)
        self.scaler = scaler

    def finish(self) -> StepOutcome:
        norm = self._clipped_norm()
        scale_before = self._scale()
        self.optimizer.step()
        skipped = None
        if scale_before is not None:
            # The scaler lowers its scale exactly when it found inf/NaN gradients and skipped the
            # step. Compared on the device, so the GPU keeps running (read later: lr_steps.py).
            skipped = self._scale() < scale_before
        return StepOutcome(norm, skipped)

    def _scale(self) -> torch.Tensor | None:
        scale = getattr(self.scaler, "_scale", None) if self.scaler is not None else None
        return scale.clone() if scale is not None else None


class Rounded(WeightUpdate):
    """bf16 weights stepped on fp32 copies and written back with stochastic rounding: a piece of
    parameters at a time when the optimizer's update is per parameter, else all at once."""

    def __init__(self, optimizer, params: list, max_grad_norm: float = 0.0, clip=None, *,
                 per_parameter: bool, piece_elements: int = PIECE_ELEMENTS):
        super().__init__(optimizer, params, max_grad_norm, clip)
        inner = _inner(optimizer)
        self.index = {id(p): i for i, p in enumerate(p for g in inner.param_groups for p in g["params"])}
        self.per_parameter = per_parameter
        self.pieces = pieces_of(params, piece_elements) if per_parameter else [list(params)]
        self.generators: dict[torch.device, torch.Generator] = {}

    def finish(self) -> StepOutcome:
        norm = self._clipped_norm()
        for piece in self.pieces:
            with_grads = [p for p in piece if p.grad is not None]
            if with_grads:
                self.step_rounded(with_grads)
        return StepOutcome(norm)

    @torch.no_grad()
    def step_rounded(self, params: list) -> None:
        """One optimizer step of ``params`` on fp32 copies, written back to bf16 with stochastic rounding."""
        inner = _inner(self.optimizer)
        with fp32_working_copies(params) as swapped:
            with stepping_only(inner, params) if self.per_parameter else nullcontext():
                inner.step()
            for p, stored in swapped:
                stochastic_round_(stored, p.data, self._generator(p))

    def _generator(self, p: torch.Tensor) -> torch.Generator:
        gen = self.generators.get(p.device)
        if gen is None:
            gen = self.generators[p.device] = torch.Generator(device=p.device)
        return gen.manual_seed(rounding_seed(self.seed, self.step, self.index[id(p)]))


def pieces_of(items: list, limit: int, size=lambda t: t.numel()) -> list[list]:
    """``items`` in order, cut into runs of at most ``limit`` elements by ``size`` (a larger one alone)."""
    pieces, current, total = [], [], 0
    for item in items:
        if current and total + size(item) > limit:
            pieces.append(current)
            current, total = [], 0
        current.append(item)
        total += size(item)
    if current:
        pieces.append(current)
    return pieces


class FusedBackward(Rounded):
    """Each parameter stepped inside backward as soon as its gradient is complete, then its
    gradient freed (bf16 ones with stochastic rounding unless ``rounding`` is off). Clipping is per
    parameter, as in kohya's fused backward pass: a norm over all gradients needs them all at once.
    The norm reported is still the whole model's, summed from each parameter's on the device."""

    steps_in_backward = True

    def __init__(self, optimizer, params: list, max_grad_norm: float = 0.0, *, rounding: bool = True):
        super().__init__(optimizer, params, max_grad_norm, per_parameter=True, piece_elements=1)
        self.rounding = rounding
        self.norm_sq: torch.Tensor | None = None
        self.handles = [p.register_post_accumulate_grad_hook(self._step_one) for p in params]

    @torch.no_grad()
    def _step_one(self, p: torch.Tensor) -> None:
        square = p.grad.detach().float().pow(2).sum()
        self.norm_sq = square if self.norm_sq is None else self.norm_sq + square
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p], self.max_grad_norm)
        if self.rounding and p.dtype == torch.bfloat16:
            self.step_rounded([p])
        else:
            inner = _inner(self.optimizer)
            with stepping_only(inner, [p]):
                inner.step()
        p.grad = None

    def finish(self) -> StepOutcome:
        norm = self.norm_sq.sqrt() if self.norm_sq is not None else None
        self.norm_sq = None
        return StepOutcome(norm)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def weight_update_for(memory, entry, optimizer, params: list, max_grad_norm: float, clip, scaler=None) -> WeightUpdate:
    """The run's WeightUpdate. ``memory`` is the [memory] table; ``entry`` the optimizer's registry
    entry (engine/registry/optimizers.py), whose ``per_parameter`` says whether it can step a part."""
    if memory.fused_backward_pass:
        return FusedBackward(optimizer, params, max_grad_norm, rounding=memory.stochastic_rounding)
    if memory.stochastic_rounding and any(p.dtype == torch.bfloat16 for p in params):
        return Rounded(optimizer, params, max_grad_norm, clip, per_parameter=entry.per_parameter)
    return AllAtOnce(optimizer, params, max_grad_norm, clip, scaler)
