"""Preview images during training, encoded with the training text encoder.

kohya samples through a different prompt encoder than it trains with; sdft passes the
training encoder's embeddings (same chunking, clip skip, padding) to the pipeline, so a
sample shows what the model learned. RNG state is saved and restored around sampling so
samples never change the training run.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from engine.atomic import atomic_path
from engine.events import SampleGridSaved, SampleSaved
from engine.families import family_of
from engine.families.base import Family
from engine.train.divergence import checked
from engine.train.optimizer_bundle import shards
from engine.train.optimizers import with_evaluation_weights
from engine.train.prompts import load_prompts


@contextmanager
def preserved_rng():
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def make_scheduler(name: str, base_config):
    """The diffusers scheduler of a sampler name (engine/registry/samplers.py) on the model's
    training schedule; ValueError for a name the table lacks (the check refuses those first)."""
    import diffusers

    from engine.registry.samplers import sampler_entry, scheduler_config

    cls = getattr(diffusers, sampler_entry(name).scheduler)
    return cls.from_config(scheduler_config(name, base_config))


class Sampler:
    def __init__(self, parts, should_stop=lambda: False):
        self.parts = parts
        self.should_stop = should_stop   # a stop interrupts sampling at the next image
        cfg = parts.cfg
        self.prompts = load_prompts(cfg.sample.prompts, base_dir=cfg.base_dir,
                                    default_size=parts.components.default_side)
        self.folder = parts.run_dir / "samples"

    @checked
    @with_evaluation_weights
    def sample(self, ctx) -> list[str]:
        """Every prompt's image at this step (the main process samples and writes; with sharding every
        process runs the sampler, as each holds a share of the weights); RNG states are preserved."""
        p = self.parts
        sharded = shards(p.cfg, p.accelerator)
        if not self.prompts or not (p.is_main or sharded):
            return []
        b, model = p.bundle, p.components.model
        unet = p.accelerator.unwrap_model(b.unet)
        use_ema = b.ema is not None and p.cfg.sample.use_ema
        was_training = unet.training
        saved = []
        vae = model.vae
        vae.to(p.device)
        if use_ema:
            b.ema.swap()
        try:
            unet.eval()
            with preserved_rng(), torch.no_grad():
                for index, prompt in enumerate(self.prompts):
                    if not sharded and self.should_stop():   # sharded: the others would wait for it
                        p.say(f"sampling stopped after {index} of {len(self.prompts)} image(s): a stop was requested")
                        break
                    saved.append(self._one(ctx, unet, index, prompt))
        finally:
            if use_ema:
                b.ema.swap()
            unet.train(was_training)
            if not p.cfg.sample.prompts:
                vae.to("cpu")
        if saved and p.is_main:
            self._grid(ctx, saved)
        return saved if p.is_main else []

    def _grid(self, ctx, saved: list[str]) -> None:
        """Every prompt of this sampling point in one image beside the single ones (docs/run-folder.md)."""
        from engine.train.sample_grid import Cell, grid_path, make_grid, save_grid

        cells = [Cell(Path(path), f"{index + 1}: {prompt.prompt}")
                 for index, (path, prompt) in enumerate(zip(saved, self.prompts, strict=False))]
        path = save_grid(make_grid(cells, title=f"step {ctx.step}"),
                         grid_path(self.folder, self.parts.cfg.train.output_name, ctx.step))
        self.parts.sink.emit(SampleGridSaved(path=str(path), step=ctx.step, count=len(cells)))

    def _one(self, ctx, unet, index: int, prompt) -> str:
        p, model, cfg = self.parts, self.parts.components.model, self.parts.cfg
        self.folder.mkdir(parents=True, exist_ok=True)
        scheduler = make_scheduler(prompt.sampler or cfg.sample.sampler, model.noise_scheduler.config)
        pipe = preview_pipeline(model, unet, scheduler)
        seed = prompt.seed if prompt.seed is not None else ctx.seed + index
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with p.accelerator.autocast():
            latents = guided_latents(
                pipe, p.components.prompt_encoder, [prompt.prompt], [prompt.negative], device=p.device,
                width=prompt.width, height=prompt.height, steps=prompt.steps or cfg.sample.steps,
                guidance_scale=prompt.scale, generator=generator, family=family_of(model))
        image = _decode(model.vae, pipe.image_processor, latents)   # outside autocast: in memory.vae_dtype
        path = self.folder / f"{cfg.train.output_name}_s{ctx.step:08d}_{index:02d}.png"
        if not p.is_main:
            return str(path)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        p.sink.emit(SampleSaved(path=str(path), prompt=prompt.prompt, step=ctx.step, index=index))
        return str(path)


def preview_pipeline(model, unet, scheduler):
    """The family's diffusers pipeline around the model's parts and ``unet`` (the trained one,
    maybe unwrapped)."""
    return family_of(model).sampling_pipeline(model, unet, scheduler)


def guided_latents(pipe, prompt_encoder, prompts: list[str], negatives: list[str | None], *, device,
                   width: int, height: int, steps: int, guidance_scale: float, generator,
                   family=None) -> torch.Tensor:
    """Latents of ``prompts`` (one each) with classifier-free guidance against ``negatives`` (None:
    the empty caption), both encoded by the training encoder (``prompt_encoder``: same chunking,
    clip skip and padding as training); ``family`` (default SD's) turns them into the pipeline's
    arguments (SDXL adds the pooled embeddings). The learning benchmark scores these (engine/bench)."""
    from engine.models.text_encoding import encode_prompts_for_sampling

    dtype = next(pipe.unet.parameters()).dtype
    positive, negative = encode_prompts_for_sampling(prompt_encoder, prompts, negatives, device, dtype)
    text = (family or Family()).pipeline_text(positive, negative)
    return pipe(
        **text, width=width, height=height,
        num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator, output_type="latent",
    ).images


@torch.no_grad()
def _decode(vae, image_processor, latents):
    """Latents to a PIL image in the VAE's own dtype: ``memory.vae_dtype`` may differ from the
    U-Net's, and the pipeline would decode in the U-Net's (a dtype error without autocast)."""
    dtype = next(vae.parameters()).dtype
    pixels = vae.decode(latents.to(dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return image_processor.postprocess(pixels.float(), output_type="pil")[0]
