"""The diffusion training objective as pure tensor functions.

Noise, timesteps, noisy inputs, targets, element losses and loss weights. Everything
here is deterministic given its ``generator``; the trainer seeds one per optimizer step,
which is what makes resume exact. Maths runs in fp32 whatever the model's precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------ schedule


def alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                   zero_terminal_snr: bool = False) -> torch.Tensor:
    """ᾱ_t of SD's scaled-linear DDPM schedule, optionally rescaled to zero terminal SNR."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2
    cumprod = torch.cumprod(1.0 - betas, dim=0)
    if zero_terminal_snr:
        cumprod = _rescale_zero_terminal_snr(cumprod)
    return cumprod


def _rescale_zero_terminal_snr(cumprod: torch.Tensor) -> torch.Tensor:
    s = cumprod.sqrt()
    s0, sT = s[0].clone(), s[-1].clone()
    s = (s - sT) * s0 / (s0 - sT)
    return s ** 2


def snr_table(cumprod: torch.Tensor) -> torch.Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t); computed after any rescale (unlike kohya)."""
    return cumprod / (1.0 - cumprod)


# ------------------------------------------------------------------ noise


@dataclass(frozen=True)
class NoiseOptions:
    noise_offset: float = 0.0
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float = 0.0
    ip_noise_gamma_random_strength: bool = False


def make_noise(x0: torch.Tensor, opts: NoiseOptions, generator: torch.Generator, count: int | None = None,
               means: torch.Tensor | None = None) -> torch.Tensor:
    """ε ~ N(0, I) with noise offset, then multi-resolution noise, for ``count`` samples (default
    x0's; a process of a multi-process run draws for the whole global batch and keeps its rows,
    engine/train/distributed.py), on the generator's device. Adaptive noise scales each offset by
    its latent's mean: ``means`` gives all ``count`` of them when x0 holds only some."""
    b, c, h, w = x0.shape
    count = b if count is None else count
    on = generator.device
    noise = torch.randn((count, c, h, w), generator=generator, dtype=torch.float32, device=on)
    if opts.noise_offset:
        offset = torch.tensor(opts.noise_offset, dtype=torch.float32, device=on)
        if opts.noise_offset_random_strength:
            offset = offset * torch.rand((), generator=generator, device=on)
        if opts.adaptive_noise_scale is not None:
            if means is None:
                means = x0.float().mean(dim=(2, 3), keepdim=True).abs()
            offset = torch.clamp(offset + opts.adaptive_noise_scale * means.to(on), min=0.0)
        noise = noise + offset * torch.randn((count, c, 1, 1), generator=generator, device=on)
    if opts.multires_noise_iterations:
        noise = _add_multires_noise(noise, opts.multires_noise_iterations, opts.multires_noise_discount, generator)
    return noise.to(x0.device)


def host_generator(generator: torch.Generator) -> torch.Generator:
    """A CPU generator for draws whose value Python needs (a layer's size): the generator itself on
    a CPU; on a GPU one seeded alike, so no draw waits for the device."""
    if generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(generator.initial_seed())


def _add_multires_noise(noise: torch.Tensor, iterations: int, discount: float,
                        generator: torch.Generator) -> torch.Tensor:
    b, c, h, w = noise.shape
    host = host_generator(generator)
    for i in range(iterations):
        r = 2.0 + 2.0 * torch.rand((), generator=host).item()
        size = (max(1, math.floor(h / r ** i)), max(1, math.floor(w / r ** i)))
        layer = torch.randn((b, c, *size), generator=generator, device=generator.device)
        noise = noise + discount ** i * F.interpolate(layer, size=(h, w), mode="bilinear", align_corners=False)
        if min(size) == 1:
            break
    return noise / noise.std()


def sample_timesteps(batch: int, min_timestep: int, max_timestep: int, generator: torch.Generator) -> torch.Tensor:
    """Integers uniform in [min, max); all equal ``min`` when min == max. On the generator's device."""
    if min_timestep == max_timestep:
        return torch.full((batch,), min_timestep, dtype=torch.long, device=generator.device)
    return torch.randint(min_timestep, max_timestep, (batch,), generator=generator, device=generator.device)


def perturb_input_noise(noise: torch.Tensor, opts: NoiseOptions, generator: torch.Generator) -> torch.Tensor:
    """Input perturbation: ε_in = ε + γ·ξ'; ε itself stays the target."""
    if not opts.ip_noise_gamma:
        return noise
    on = generator.device
    gamma = opts.ip_noise_gamma
    if opts.ip_noise_gamma_random_strength:
        gamma = gamma * torch.rand((), generator=generator, device=on)
    return noise + (gamma * torch.randn(noise.shape, generator=generator, device=on)).to(noise.device)


def _gather(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return table.to(t.device)[t].float().view(-1, 1, 1, 1)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε."""
    a = _gather(cumprod, t)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def target_for(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cumprod: torch.Tensor,
               v_prediction: bool) -> torch.Tensor:
    """ε, or v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 for v-prediction."""
    if not v_prediction:
        return noise
    a = _gather(cumprod, t)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


# ------------------------------------------------------------------ loss


@dataclass(frozen=True)
class LossOptions:
    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    min_snr_gamma: float = 0.0
    scale_v_pred_loss_like_noise_pred: bool = False
    debiased_estimation_loss: bool = False


def huber_c_per_sample(t: torch.Tensor, opts: LossOptions, cumprod: torch.Tensor) -> torch.Tensor:
    """Per-sample Huber c."""
    if opts.huber_schedule == "constant":
        return torch.full(t.shape, opts.huber_c * opts.huber_scale, dtype=torch.float32, device=t.device)
    if opts.huber_schedule == "exponential":
        alpha = -math.log(opts.huber_c) / 1000.0
        return torch.exp(-alpha * t.float()) * opts.huber_scale
    a = cumprod.to(t.device)[t].float()
    sigma = ((1 - a) / a).sqrt()
    return (1 - opts.huber_c) / (1 + sigma) ** 2 + opts.huber_c


def element_loss(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, opts: LossOptions,
                 cumprod: torch.Tensor) -> torch.Tensor:
    delta = pred.float() - target.float()
    if opts.loss_type == "l2":
        return delta ** 2
    if opts.loss_type == "l1":
        return delta.abs()
    c = huber_c_per_sample(t, opts, cumprod).view(-1, 1, 1, 1)
    root = (delta ** 2 + c ** 2).sqrt() - c
    if opts.loss_type == "huber":
        return 2 * c * root
    if opts.loss_type == "smooth_l1":
        return 2 * root
    raise ValueError(f"unknown loss_type {opts.loss_type!r}")


def loss_weights(t: torch.Tensor, snr: torch.Tensor, opts: LossOptions, v_prediction: bool) -> torch.Tensor:
    """Per-sample weights, multiplied in this order: min-SNR, v-like-ε, debiased."""
    s = snr.to(t.device)[t].float()
    w = torch.ones_like(s)
    if opts.min_snr_gamma:
        gamma = opts.min_snr_gamma
        if v_prediction:
            w = w * torch.minimum(s, torch.full_like(s, gamma)) / (s + 1)
        else:
            w = w * torch.clamp(gamma / s, max=1.0)  # min(1, γ/SNR): SNR = 0 gives 1, not 0/0
    if opts.scale_v_pred_loss_like_noise_pred:
        capped = torch.clamp(s, max=1000.0)
        w = w * capped / (capped + 1)
    if opts.debiased_estimation_loss:
        clamped = torch.clamp(s, 1e-3, 1000.0)
        w = w * (1 / (clamped + 1) if v_prediction else 1 / clamped.sqrt())
    return w


def apply_mask(elements: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """Masked loss: each element times its latent pixel's mask (B, 1, h, w), as kohya's
    ``apply_masked_loss``; the mean over C,H,W stays over every pixel (kohya does not divide by
    the mask's area). None leaves the elements as they are."""
    if masks is None:
        return elements
    return elements * masks.to(elements.device, non_blocking=True).to(elements.dtype)


def sample_losses(elements: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over C,H,W, weighted."""
    return elements.mean(dim=(1, 2, 3)) * weights
