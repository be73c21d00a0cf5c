"""The learning benchmark's evaluator: one set of scores for any trained model, whoever trained it.

* **Validation loss**: the held-out images' latents, each at the fixed timesteps of sdft's
  validation loss (engine/train/validation.py) with fixed noise per (image, timestep), against
  the model's own target (epsilon or v). Lower is better; it is comparable across trainers
  because nothing in it comes from the trainer.
* **Prompt adherence**: for each concept's caption, M samples with classifier-free guidance;
  each sample goes to the concept whose nearest training latent is closest (latent space: the
  random decoder makes pixels meaningless, engine/bench/model.py). The share of samples that
  land on the prompted concept, against chance 1/K; and how far the samples lie from the data
  (``sample_distance``). Measured twice: through sdft's preview sampler (its own prompt
  encoding, engine/train/sampling.py) and through diffusers' pipeline (StableDiffusionPipeline,
  StableDiffusionXLPipeline for SDXL: the adapter's ``sampling_pipeline``) with the pipeline's
  own prompt encoding.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from engine.train import objective as obj
from engine.train.validation import validation_seed, validation_timesteps


@dataclass(frozen=True)
class SamplingPlan:
    """How adherence samples are drawn: the same for every model and both samplers."""

    samples_per_concept: int = 8
    steps: int = 20
    guidance_scale: float = 5.0
    sampler: str = "euler"
    seed: int = 0


@torch.no_grad()
def encode_latents(model, paths, side: int) -> torch.Tensor:
    """The images' scaled latents (posterior means: the bench's VAE has a point posterior)."""
    from engine.bench.model import load_pixels

    vae = model.vae
    mean = vae.encode(load_pixels(paths, side).to(vae.dtype)).latent_dist.mean.float()
    return mean * vae.config.scaling_factor


def prompt_encoder_for(model, clip_skip: int):
    """The training recipe's prompt encoder (75 tokens, this clip skip) on the model's text encoder."""
    from engine.families import family_of

    return family_of(model).prompt_encoder(model, max_token_length=75, clip_skip=clip_skip, weighted=False,
                                           warn=lambda _text: None)


def unet_text_inputs(model, prompt_encoder, captions: list[str], side: int) -> tuple[torch.Tensor, dict]:
    """The U-Net's text states and other inputs for ``captions``, as the family's adapter builds
    them in training; SDXL's size numbers are those of an unbucketed ``side`` x ``side`` image
    (the benchmark trains without buckets), which diffusers' pipeline also passes at that size."""
    from types import SimpleNamespace

    from engine.families import family_of

    family = family_of(model)
    batch = SimpleNamespace(size_conditioning=None)
    if family.size_conditioning:
        from engine.families.sdxl.conditioning import unbucketed_conditioning

        batch.size_conditioning = [unbucketed_conditioning((side, side))] * len(captions)
    return family.unet_inputs(model, batch, prompt_encoder(captions, "cpu"), torch.float32)


@torch.no_grad()
def validation_loss(model, prompt_encoder, latents: torch.Tensor, captions: list[str], seed: int = 0) -> float:
    """Mean L2 loss of the U-Net's prediction over every (held-out image, fixed timestep)."""
    cumprod = obj.alphas_cumprod().float()
    side = latents.shape[-1] * 2 ** (len(model.vae.config.block_out_channels) - 1)   # each VAE level halves it
    context, extra = unet_text_inputs(model, prompt_encoder, captions, side)
    losses = []
    for t in validation_timesteps(0, 1000):
        noise = torch.cat([torch.randn((1, *latents.shape[1:]),
                                       generator=torch.Generator().manual_seed(validation_seed(seed, i, t)))
                           for i in range(len(latents))])
        steps = torch.full((len(latents),), t, dtype=torch.long)
        pred = model.unet(obj.add_noise(latents, noise, steps, cumprod), steps, context, **extra).sample
        target = obj.target_for(latents, noise, steps, cumprod, model.v_parameterization)
        losses.append(((pred.float() - target) ** 2).mean(dim=(1, 2, 3)))
    return float(torch.cat(losses).mean())


def nearest_concepts(samples: torch.Tensor, train_latents: torch.Tensor, train_concepts: torch.Tensor,
                     count: int) -> torch.Tensor:
    """Each sample's concept: the one owning the training latent nearest to it (L2)."""
    distances = torch.cdist(samples.flatten(1).double(), train_latents.flatten(1).double())
    per_concept = torch.stack([distances[:, train_concepts == k].min(dim=1).values for k in range(count)], dim=1)
    return per_concept.argmin(dim=1)


def sample_distance(samples: torch.Tensor, train_latents: torch.Tensor, held_out: torch.Tensor) -> float:
    """How far samples lie from the training latents (mean distance to the nearest one), in units of
    the held-out images' distance: near 1, samples look like unseen images of the concepts; far
    above it, they are off the data (a wrong target can keep the right concept nearest, not near)."""
    def mean_nearest(points: torch.Tensor) -> torch.Tensor:
        return torch.cdist(points.flatten(1).double(), train_latents.flatten(1).double()).min(dim=1).values.mean()

    return float(mean_nearest(samples) / mean_nearest(held_out))


def adherence(predicted: torch.Tensor, wanted: torch.Tensor, count: int) -> dict:
    """Accuracy, chance and, per prompted concept, how many samples landed on each concept."""
    confusion = torch.zeros((count, count), dtype=torch.long)
    for w, p in zip(wanted.tolist(), predicted.tolist(), strict=True):
        confusion[w, p] += 1
    return {"accuracy": float((predicted == wanted).double().mean()), "chance": 1.0 / count,
            "confusion": confusion.tolist()}


def _prompts(captions: list[str], plan: SamplingPlan) -> tuple[list[str], torch.Tensor]:
    prompts = [c for c in captions for _ in range(plan.samples_per_concept)]
    wanted = torch.arange(len(captions)).repeat_interleave(plan.samples_per_concept)
    return prompts, wanted


def _scheduler(model, plan: SamplingPlan):
    from engine.train.sampling import make_scheduler

    return make_scheduler(plan.sampler, model.noise_scheduler.config)


@torch.no_grad()
def sdft_sampler_latents(model, prompt_encoder, prompts: list[str], plan: SamplingPlan, side: int) -> torch.Tensor:
    """Samples through sdft's preview sampler: the training encoder's embeddings, diffusers' loop."""
    from engine.families import family_of
    from engine.train.sampling import guided_latents, preview_pipeline

    pipe = preview_pipeline(model, model.unet, _scheduler(model, plan))
    return guided_latents(pipe, prompt_encoder, prompts, [None] * len(prompts), device="cpu", width=side,
                          height=side, steps=plan.steps, guidance_scale=plan.guidance_scale,
                          generator=torch.Generator().manual_seed(plan.seed), family=family_of(model)).float()


@contextmanager
def _final_layer_norm_where_diffusers_looks(text_encoder):
    """diffusers' pipeline reads ``text_encoder.text_model.final_layer_norm`` for clip skip;
    transformers 5's CLIPTextModel keeps the norm on the model itself (no ``text_model``).
    Point the old name at the model for the call, outside the module tree."""
    added = not hasattr(text_encoder, "text_model")
    if added:
        object.__setattr__(text_encoder, "text_model", text_encoder)
    try:
        yield
    finally:
        if added:
            object.__delattr__(text_encoder, "text_model")


@torch.no_grad()
def diffusers_pipeline_latents(model, prompts: list[str], clip_skip: int, plan: SamplingPlan,
                               side: int) -> torch.Tensor:
    """Samples through the family's diffusers pipeline (StableDiffusionPipeline, or
    StableDiffusionXLPipeline for SDXL) with the pipeline's own prompt encoding (its ``clip_skip``
    counts skipped layers: sdft's 2 is its 1; SDXL's is 1, none skipped)."""
    from engine.train.sampling import preview_pipeline

    pipe = preview_pipeline(model, model.unet, _scheduler(model, plan))
    with _final_layer_norm_where_diffusers_looks(model.text_encoder):
        return pipe(prompt=prompts, width=side, height=side, num_inference_steps=plan.steps,
                    guidance_scale=plan.guidance_scale, clip_skip=(clip_skip - 1) or None,
                    generator=torch.Generator().manual_seed(plan.seed), output_type="latent").images.float()


def score_model(model, dataset, clip_skip: int, plan: SamplingPlan = SamplingPlan(), *,
                samplers=("sdft", "diffusers")) -> dict:
    """Every score of ``model`` (a LoadedModel) on ``dataset`` (engine.bench.concepts.ConceptDataset)."""
    encoder = prompt_encoder_for(model, clip_skip)
    for module in (model.unet, model.text_encoder, model.vae):
        module.eval()
    held_out = encode_latents(model, [i.path for i in dataset.held_out], dataset.side)
    scores = {"validation_loss": validation_loss(model, encoder, held_out, [i.caption for i in dataset.held_out])}
    train = encode_latents(model, [i.path for i in dataset.train], dataset.side)
    owners = torch.tensor([i.concept for i in dataset.train])
    prompts, wanted = _prompts([c.caption for c in dataset.concepts], plan)
    count = len(dataset.concepts)
    for name in samplers:
        samples = (sdft_sampler_latents(model, encoder, prompts, plan, dataset.side) if name == "sdft"
                   else diffusers_pipeline_latents(model, prompts, clip_skip, plan, dataset.side))
        scores[f"adherence_{name}"] = {**adherence(nearest_concepts(samples, train, owners, count), wanted, count),
                                        "sample_distance": sample_distance(samples, train, held_out)}
    return scores
