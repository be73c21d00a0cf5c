"""One micro-batch's forward pass: latents, noise, the U-Net's prediction and the loss.

The objective's maths are pure functions in objective.py; this module applies them to a batch
with the run's parts (models, tables, precision).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from engine.train import objective as obj
from engine.train.context import RunParts


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
        xi = torch.randn(mean.shape, generator=generator, device=on)
        z = mean + std * xi.to(mean.device)
    return z * parts.components.noise.latent_scale


def tokens_of(parts: RunParts, batch):
    """The batch's tokens: tokenized by the loader thread already, or now."""
    if batch.tokens is not None:
        return batch.tokens
    return parts.components.prompt_encoder.tokenize(batch.captions)


def unet_dtype(parts: RunParts) -> torch.dtype:
    return next(parts.components.model.unet.parameters()).dtype


def compute_loss(parts: RunParts, batch, generator: torch.Generator) -> torch.Tensor:
    """The training objective for one micro-batch."""
    t_cfg, tables = parts.cfg.train, parts.components.noise
    x0 = latents_of(parts, batch, generator)
    noise = obj.make_noise(x0, tables.noise_options, generator)
    timesteps = obj.sample_timesteps(x0.shape[0], t_cfg.min_timestep, t_cfg.max_timestep, generator).to(parts.device)
    noise_in = obj.perturb_input_noise(noise, tables.noise_options, generator)
    return losses_at(parts, batch, x0, noise, noise_in, timesteps).mean()


def losses_at(parts: RunParts, batch, x0: torch.Tensor, noise: torch.Tensor, noise_in: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
    """Each sample's weighted loss, given its latent, noise (target and input) and timestep:
    the U-Net's prediction against the target, masked (masked loss), then min-SNR and the other
    weights. The training step and the validation loss (validation.py) both call this."""
    c, tables = parts.components, parts.components.noise
    noisy = obj.add_noise(x0, noise_in, timesteps, tables.cumprod)
    dtype = unet_dtype(parts)
    with parts.accelerator.autocast():
        with nullcontext() if c.train_te and torch.is_grad_enabled() else torch.no_grad():
            context = c.prompt_encoder.encode(tokens_of(parts, batch), parts.device, parts.precision.weight_dtype
                                              if not c.train_te else None)
        pred = parts.bundle.unet(noisy.to(dtype), timesteps, context.to(dtype)).sample
    target = obj.target_for(x0, noise, timesteps, tables.cumprod, tables.v_prediction)
    elements = obj.element_loss(pred, target, timesteps, tables.loss_options, tables.cumprod)
    elements = obj.apply_mask(elements, getattr(batch, "masks", None))
    weights = obj.loss_weights(timesteps, tables.snr, tables.loss_options, tables.v_prediction)
    return obj.sample_losses(elements, weights)
