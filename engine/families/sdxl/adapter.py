"""The SDXL adapter: it owns what this folder provides (detection, loading, the VAE scale, the
native side, text encoding, the U-Net's inputs, the preview pipeline's class) and is refused
by the registry (engine/registry/families.py) until the training loop works for SDXL.
What is left to wire is listed in docs/sdxl.md."""

from __future__ import annotations

from engine.families.base import Family
from engine.families.sdxl.conditioning import VAE_SCALE_FACTOR
from engine.families.sdxl.plan import SDXL_PLAN

# What tells an SDXL source: kohya's and Stability AI's single files keep both text encoders
# under conditioner.embedders.*; a diffusers U-Net takes the "text_time" added embedding.
SINGLE_FILE_MARK = "conditioner.embedders."
FOLDER_MARK = "text_time"


class _SDXL(Family):
    name, label = "sdxl", "SDXL"
    vae_scale = VAE_SCALE_FACTOR
    plan = SDXL_PLAN   # plan.py: counted and measured on the built-in configs

    def recognises(self, view) -> bool:
        if view.tensors:
            return any(k.startswith(SINGLE_FILE_MARK) for k in view.tensors)
        return view.unet_config.get("addition_embed_type") == FOLDER_MARK

    def native_side(self, v_prediction: bool) -> int:
        return 1024

    def load(self, source: str, **options):
        """An ``SdxlModel`` (load.py): SD's ``LoadedModel`` plus ``text_encoder_2`` and
        ``tokenizer_2``; ``options`` are ``engine.models.load.load_model``'s."""
        from engine.families.sdxl.load import load_sdxl

        return load_sdxl(source, **options)

    def prompt_encoder(self, model, *, max_token_length, clip_skip, weighted, warn=None):
        """kohya's SDXL encoding (text_encoding.py): fixed layers, so no clip skip; weighted
        captions are not built yet."""
        from engine.families.sdxl.text_encoding import SdxlPromptEncoder

        if clip_skip != 1:
            raise ValueError(f"model.clip_skip = {clip_skip}: SDXL reads fixed layers of both text encoders "
                             "(kohya's sdxl_train.py ignores clip skip); remove the setting")
        if weighted:
            raise ValueError("train.weighted_captions: not available for SDXL yet; remove the setting")
        return SdxlPromptEncoder(model.text_encoder, model.text_encoder_2, max_token_length=max_token_length,
                                 tokenizer=model.tokenizer)

    def unet_inputs(self, model, batch, text, dtype):
        """Both encoders' states side by side; the pooled text and the six size and crop numbers
        the data pipeline recorded per image (``batch.size_conditioning``, conditioning.py) as
        diffusers' ``added_cond_kwargs``. The numbers stay fp32: exact, where bf16 is not."""
        from engine.families.sdxl.conditioning import add_time_ids

        conditions = getattr(batch, "size_conditioning", None)
        if not conditions:
            raise ValueError("an SDXL batch needs each image's size and crop conditioning, recorded when "
                             "it is bucketed; this batch has none")
        time_ids = add_time_ids(conditions, device=text.pooled.device)
        return text.states.to(dtype), {"added_cond_kwargs": {"text_embeds": text.pooled.to(dtype),
                                                             "time_ids": time_ids}}

    def sampling_pipeline(self, model, unet, scheduler):
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=unet, scheduler=scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


SDXL = _SDXL()
