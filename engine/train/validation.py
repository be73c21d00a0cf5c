"""The validation loss: the held-out images (engine/data/holdout.py) scored as a step hook.

Comparable across steps, runs and resumes: each image is scored at kohya's four fixed
timesteps (``linspace(min_timestep, max_timestep, 6)[1:-1]``: 200, 400, 600, 800 by default)
with noise from a generator seeded by (validation seed, image index, timestep), never by the
training RNG, and with no augmentation (engine/data/pipeline.py, ``load_validation_batch``).
The Python, numpy and torch RNG states are restored afterwards and the models put back in
their mode, so validating changes nothing training draws. The figure is the mean of every
(image, timestep) loss, weighted and masked as training weights its loss; it goes out as a
``ValidationMetrics`` event (events.jsonl, the trackers as ``validation/loss``, the dashboard).

Cadence, as kohya's ``train_network.py``: every ``train.validate_every_n_steps`` steps, and at
the end of every ``train.validate_every_n_epochs``-th epoch (every epoch when it is unset).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import numpy as np
import torch

from engine.events import ValidationMetrics
from engine.train import forward
from engine.train import objective as obj
from engine.train.context import RunParts, StepContext, StepHook
from engine.train.divergence import checked

NUM_VALIDATION_TIMESTEPS = 4   # kohya's NUM_VALIDATION_TIMESTEPS


def validation_timesteps(min_timestep: int, max_timestep: int) -> list[int]:
    """kohya's fixed timesteps: the inner points of ``linspace(min, max, 4 + 2)`` as integers."""
    points = np.linspace(min_timestep, max_timestep, NUM_VALIDATION_TIMESTEPS + 2, dtype=int)[1:-1]
    return [int(t) for t in points]


def validation_seed(seed: int, item: int, timestep: int) -> int:
    """The noise seed of one image at one timestep: a pure function of the three."""
    digest = hashlib.blake2b(f"validation/{seed}/{item}/{timestep}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2 ** 63)


@contextmanager
def evaluating(modules):
    """Every submodule in eval mode inside, each back to its own mode after."""
    saved = [(m, m.training) for module in modules if module is not None for m in module.modules()]
    try:
        for m, _mode in saved:
            m.training = False
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def _batch_losses(parts: RunParts, batch, refs: tuple[int, ...], seed: int, timesteps: list[int]) -> list[float]:
    """Each (image, timestep) loss of one validation batch."""
    tables = parts.components.noise
    first = torch.Generator().manual_seed(validation_seed(seed, refs[0], -1))
    x0 = forward.latents_of(parts, batch, first)   # live batches: a fixed posterior draw
    out = []
    for t in timesteps:
        noise, noise_in = [], []
        for j, item in enumerate(refs):
            generator = torch.Generator().manual_seed(validation_seed(seed, item, t))
            eps = obj.make_noise(x0[j:j + 1], tables.noise_options, generator)
            noise.append(eps)
            noise_in.append(obj.perturb_input_noise(eps, tables.noise_options, generator))
        steps = torch.full((x0.shape[0],), t, dtype=torch.long, device=parts.device)
        losses = forward.losses_at(parts, batch, x0, torch.cat(noise), torch.cat(noise_in), steps)
        out.extend(float(v) for v in losses.float().cpu())
    return out


def validation_loss(parts: RunParts, seed: int) -> float | None:
    """The mean loss over the held-out images (None when there are none)."""
    from engine.train.sampling import preserved_rng

    plan = parts.data.validation_plan()
    limit = parts.cfg.train.max_validation_steps
    if limit:
        plan = plan[:limit]
    if not plan:
        return None
    t = parts.cfg.train
    timesteps = validation_timesteps(t.min_timestep, t.max_timestep)
    c = parts.components
    losses: list[float] = []
    with preserved_rng(), torch.no_grad(), evaluating([parts.bundle.unet, *c.text_encoders.values(), c.hypernetwork]):
        for ref in plan:
            batch = parts.data.load_validation_batch(ref, seed)
            losses += _batch_losses(parts, batch, ref.items, seed, timesteps)
    return sum(losses) / len(losses)


class ValidationHook(StepHook):
    """The validation loss on its cadence; one figure per step at most."""

    def __init__(self, parts: RunParts, seed: int):
        self.parts = parts
        self.seed = seed
        self.last_step: int | None = None
        self.active = parts.data.num_validation_images > 0

    def on_step(self, ctx: StepContext) -> None:
        every = ctx.parts.cfg.train.validate_every_n_steps
        if self.active and every and ctx.step % every == 0:
            self.validate(ctx)

    def on_epoch(self, ctx: StepContext) -> None:
        t = ctx.parts.cfg.train
        every = t.validate_every_n_epochs
        if self.active and (ctx.epoch % every == 0 if every else True):
            self.validate(ctx)

    @checked
    def validate(self, ctx: StepContext) -> None:
        if self.last_step == ctx.step:
            return
        self.last_step = ctx.step
        loss = validation_loss(self.parts, self.seed)
        if loss is not None and self.parts.is_main:
            self.parts.sink.emit(ValidationMetrics(step=ctx.step, epoch=ctx.event_epoch, figures={"loss": loss}))
