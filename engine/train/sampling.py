"""Preview images during training, encoded with the training text encoder.

kohya samples through a different prompt encoder than it trains with; sdft passes the
training encoder's embeddings (same chunking, clip skip, padding) to the pipeline, so a
sample shows what the model learned. RNG state is saved and restored around sampling so
samples never change the training run.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch

from engine.atomic import atomic_path
from engine.events import SampleSaved
from engine.train.prompts import load_prompts

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
}


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
    import diffusers

    cls = getattr(diffusers, SCHEDULERS.get(name, "DDIMScheduler"))
    return cls.from_config(base_config)


class Sampler:
    def __init__(self, trainer):
        self.trainer = trainer
        cfg = trainer.cfg
        size = 768 if (trainer.model.v2 and trainer.v_prediction) else 512
        self.prompts = load_prompts(cfg.sample.prompts, base_dir=cfg.base_dir, default_size=size)
        self.folder = trainer.run_dir / "samples"

    def sample(self) -> list[str]:
        t = self.trainer
        if not self.prompts or not t.is_main:
            return []
        from diffusers import StableDiffusionPipeline

        from engine.models.text_encoding import encode_prompts_for_sampling

        unet = t.accelerator.unwrap_model(t.unet)
        use_ema = t.ema is not None and t.cfg.sample.use_ema
        was_training = unet.training
        saved = []
        vae = t.model.vae
        vae.to(t.device)
        if use_ema:
            t.ema.swap()
        try:
            unet.eval()
            with preserved_rng(), torch.no_grad():
                for index, prompt in enumerate(self.prompts):
                    self.folder.mkdir(parents=True, exist_ok=True)
                    scheduler = make_scheduler(prompt.sampler or t.cfg.sample.sampler, t.model.noise_scheduler.config)
                    pipe = StableDiffusionPipeline(
                        vae=vae, text_encoder=t.model.text_encoder, tokenizer=t.model.tokenizer, unet=unet,
                        scheduler=scheduler, safety_checker=None, feature_extractor=None,
                        requires_safety_checker=False,
                    )
                    pipe.set_progress_bar_config(disable=True)
                    dtype = next(unet.parameters()).dtype
                    positive, negative = encode_prompts_for_sampling(
                        t.prompt_encoder, [prompt.prompt], [prompt.negative], t.device, dtype)
                    seed = prompt.seed if prompt.seed is not None else t.seed + index
                    generator = torch.Generator(device="cpu").manual_seed(seed)
                    with t.accelerator.autocast():
                        image = pipe(
                            prompt_embeds=positive, negative_prompt_embeds=negative,
                            width=prompt.width, height=prompt.height,
                            num_inference_steps=prompt.steps or t.cfg.sample.steps,
                            guidance_scale=prompt.scale, generator=generator,
                        ).images[0]
                    path = self.folder / f"{t.cfg.train.output_name}_s{t.global_step:08d}_{index:02d}.png"
                    with atomic_path(path) as tmp:
                        image.save(tmp, format="PNG")
                    saved.append(str(path))
                    t.sink.emit(SampleSaved(path=str(path), prompt=prompt.prompt, step=t.global_step, index=index))
        finally:
            if use_ema:
                t.ema.swap()
            unet.train(was_training)
            if not t.cfg.sample.prompts:
                vae.to("cpu")
        return saved
