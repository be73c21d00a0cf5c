"""One micro-batch's forward pass: latents, noise, the U-Net's prediction and the loss.

The objective's maths are pure functions in objective.py; this module applies them to a batch
with the run's parts (models, tables, precision).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from engine.families import family_of
from engine.train import objective as obj
from engine.train.context import RunParts
from engine.train.distributed import rows_of


def latents_of(parts: RunParts, batch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled latents: from the cache, or encoded now (live subsets) with the posterior sample
    drawn from the step's generator, so live runs resume exactly too."""
    device = parts.device
    if batch.latents is not None:
        z = batch.latents.to(device, non_blocking=True).float()   # pinned by the loader on a GPU
    else:
        vae = parts.components.model.vae
        if next(vae.parameters()).device != device:
            vae.to(device)
        with torch.no_grad():
            pixels = batch.pixels.to(device, non_blocking=True).to(parts.precision.vae_dtype)
            posterior = vae.encode(pixels).latent_dist
            mean, std = posterior.mean.float(), posterior.std.float()
        on = generator.device if generator is not None else mean.device
        count = getattr(batch, "part", (0, 0, 0))[2] or mean.shape[0]
        xi = torch.randn((count, *mean.shape[1:]), generator=generator, device=on)   # the global batch's draw
        z = mean + std * rows_of(xi, _part(batch, count)).to(mean.device)
    return z * parts.components.noise.latent_scale


def tokens_of(parts: RunParts, batch):
    """The batch's tokens: tokenized by the loader thread already, or now."""
    if batch.tokens is not None:
        return batch.tokens
    return parts.components.prompt_encoder.tokenize(batch.captions)


def cached_text(parts: RunParts, batch):
    """The batch's text-encoder outputs from the cache (cache.text_encoder_outputs) on the device,
    read by the loader thread or now (a validation batch); None without a cache."""
    cache = parts.components.text_cache
    if cache is None:
        return None
    text = getattr(batch, "text", None)
    return (text if text is not None else cache.lookup(batch.captions)).to(parts.device)


def unet_dtype(parts: RunParts) -> torch.dtype:
    return next(parts.components.model.unet.parameters()).dtype


def compute_loss(parts: RunParts, batch, generator: torch.Generator) -> torch.Tensor:
    """The training objective for one micro-batch: its mean loss, weighted by the batch's share of
    the global batch when several processes share it (engine/data/parts.py)."""
    return weighted_mean(sample_losses(parts, batch, generator), batch)


def sample_losses(parts: RunParts, batch, generator: torch.Generator) -> torch.Tensor:
    """Each sample's loss. Noise and timesteps are drawn for the whole global batch, as one process
    would draw them, and this process keeps its rows."""
    t_cfg, tables = parts.cfg.train, parts.components.noise
    x0 = latents_of(parts, batch, generator)
    count = getattr(batch, "part", (0, 0, 0))[2] or x0.shape[0]
    part = _part(batch, count)
    means = global_means(parts, x0, part) if tables.noise_options.adaptive_noise_scale is not None else None
    noise = obj.make_noise(x0, tables.noise_options, generator, count, means)
    timesteps = obj.sample_timesteps(count, t_cfg.min_timestep, t_cfg.max_timestep, generator).to(parts.device)
    noise_in = obj.perturb_input_noise(noise, tables.noise_options, generator)
    noise, noise_in, timesteps = (rows_of(t, part) for t in (noise, noise_in, timesteps))
    return losses_at(parts, batch, x0, noise, noise_in, timesteps)


def weighted_mean(losses: torch.Tensor, batch) -> torch.Tensor:
    weight = getattr(batch, "weight", 1.0)
    mean = losses.mean()
    return mean if weight == 1.0 else mean * weight


def _part(batch, count: int) -> tuple[int, int, int]:
    part = getattr(batch, "part", None)
    return part if part and part[2] else (0, count, count)


def global_means(parts: RunParts, x0: torch.Tensor, part: tuple[int, int, int]) -> torch.Tensor | None:
    """Adaptive noise's per-sample latent means for the whole global batch: this process's own when
    it holds the whole batch (None: make_noise takes them from x0), else gathered from every process
    (one small collective per micro-batch, only with adaptive_noise_scale on several processes)."""
    start, end, count = part
    if (start, end) == (0, count):
        return None
    from engine.data.parts import rank_part

    accelerator = parts.accelerator
    world = accelerator.num_processes
    width = -(-count // world)
    local = x0.float().mean(dim=(2, 3), keepdim=True).abs()[: end - start]
    padded = torch.zeros((width, *local.shape[1:]), device=local.device)
    padded[: local.shape[0]] = local
    gathered = accelerator.gather(padded)
    rows = [gathered[r * width: r * width + (e - s)] for r in range(world) for s, e in [rank_part(count, world, r)]]
    return torch.cat(rows)


def losses_at(parts: RunParts, batch, x0: torch.Tensor, noise: torch.Tensor, noise_in: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
    """Each sample's weighted loss, given its latent, noise (target and input) and timestep:
    the U-Net's prediction against the target, masked (masked loss), then min-SNR and the other
    weights. The training step and the validation loss (validation.py) both call this."""
    c, tables = parts.components, parts.components.noise
    noisy = obj.add_noise(x0, noise_in, timesteps, tables.cumprod)
    dtype = unet_dtype(parts)
    with parts.accelerator.autocast():
        text = cached_text(parts, batch)
        if text is None:
            with nullcontext() if c.train_te and torch.is_grad_enabled() else torch.no_grad():
                text = c.prompt_encoder.encode(tokens_of(parts, batch), parts.device, parts.precision.weight_dtype
                                               if not c.train_te else None)
        context, extra = family_of(c.model).unet_inputs(c.model, batch, text, dtype)   # SD1/SD2: no extra
        pred = parts.bundle.unet(noisy.to(dtype), timesteps, context, **extra).sample
    target = obj.target_for(x0, noise, timesteps, tables.cumprod, tables.v_prediction)
    elements = obj.element_loss(pred, target, timesteps, tables.loss_options, tables.cumprod)
    elements = obj.apply_mask(elements, getattr(batch, "masks", None))
    weights = obj.loss_weights(timesteps, tables.snr, tables.loss_options, tables.v_prediction)
    return obj.sample_losses(elements, weights)
