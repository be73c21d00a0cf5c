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
    size_conditioning = True
    # kohya's cached latents an SDXL run imports: only sdxl_train.py's "<stem>_WWWWxHHHH_sdxl.npz"
    # (the old "<stem>.npz" may hold SD latents; engine/data/kohya_npz.py)
    kohya_latents = ("_sdxl.npz",)
    plan = SDXL_PLAN   # plan.py: counted and measured on the built-in configs
    # CLIP ViT-L and OpenCLIP bigG, each with its own rate; 0 keeps one frozen (kohya's sdxl_train.py)
    text_encoder_rates = (("text_encoder", "learning_rate_te1"), ("text_encoder_2", "learning_rate_te2"))
    frozen_at_zero_rate = True

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

    def refusals(self, cfg) -> list[tuple[str, str, str]]:
        """What SDXL cannot take (docs/sdxl.md, "Training SDXL")."""
        out = []
        if cfg.optimizer.learning_rate_te is not None:
            out.append(("optimizer.learning_rate_te", "SDXL has two text encoders, each with its own rate",
                        "use optimizer.learning_rate_te1 and optimizer.learning_rate_te2 (kohya's sdxl_train.py)"))
        if cfg.train.mode == "hypernetwork":
            out.append(("train.mode", "hypernetworks are built for SD 1.x/2.x only (A1111's format hooks their "
                        "attention widths)", 'use train.mode = "full" for SDXL'))
        if cfg.model.clip_skip != 1:
            out.append(("model.clip_skip", f"= {cfg.model.clip_skip}: SDXL reads fixed layers of both text encoders "
                        "(kohya's sdxl_train.py ignores clip skip)", "remove the setting"))
        if cfg.train.weighted_captions:
            out.append(("train.weighted_captions", "caption weighting is not built for SDXL yet",
                        "remove the setting"))
        if cfg.cache.text_encoder_outputs != "none":
            out += self._text_cache_refusals(cfg)
        return out

    def _text_cache_refusals(self, cfg) -> list[tuple[str, str, str]]:
        """Cached text-encoder outputs need frozen encoders and one caption per image (caption
        dropout's empty caption is cached too), as kohya's ``is_text_encoder_output_cacheable``;
        wildcards pick a line per draw, which kohya's cache would freeze at one draw."""
        key = "cache.text_encoder_outputs"
        if self.trained_text_encoders(cfg):
            return [(key, "the outputs of a text encoder that trains change every step (kohya refuses it "
                          "too)", "set train.train_text_encoder = false, or both learning_rate_te1 and "
                          "learning_rate_te2 to 0")]
        out = []
        varying = (("shuffle_caption", lambda s: s.shuffle_caption),
                   ("caption_tag_dropout_rate", lambda s: s.caption_tag_dropout_rate > 0),
                   ("token_warmup_step", lambda s: s.token_warmup_step > 0),
                   ("enable_wildcard", lambda s: s.enable_wildcard))
        subsets = list(cfg.datasets.subsets) if cfg.datasets is not None else []
        for name, varies in varying:
            where = [s.key for s in subsets if varies(s)]
            if where:
                out.append((key, f"{name} ({', '.join(where)}) changes a caption on every draw, so its outputs "
                                 "cannot be encoded once", f"remove {name}, or cache.text_encoder_outputs"))
        return out

    def save(self, path, model, *, v_prediction, fmt, precision, trained=None, metadata=None, epoch=0,
             global_step=0, scheduler_overrides=None):
        """kohya's single-file keys or a diffusers folder (save.py); ``trained`` may hold
        "unet", "text_encoder" and "text_encoder_2"."""
        from engine.families.sdxl.save import save_sdxl

        return save_sdxl(path, model, v_prediction=v_prediction, fmt=fmt, precision=precision, trained=trained,
                         metadata=metadata, epoch=epoch, global_step=global_step,
                         scheduler_overrides=scheduler_overrides)

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

    def unet_block_of(self, model, name):
        """kohya's SDXL block (blocks.py) of a diffusers U-Net parameter."""
        from engine.families.sdxl.blocks import block_of

        return block_of(name, int(model.unet.config.layers_per_block))

    def unused_text_modules(self, model, role):
        """TE1's last layer and final LayerNorm: the U-Net reads its layer 11 (text_encoding.py),
        so kohya's sdxl_train.py freezes them when TE1 trains. TE2's last layer feeds the pooled
        embedding and trains."""
        if role != "text_encoder":
            return []
        te1 = model.text_encoder
        text_model = getattr(te1, "text_model", te1)   # transformers 5 flattened CLIPTextModel
        return [text_model.encoder.layers[-1], text_model.final_layer_norm]

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

    def pipeline_text(self, positive, negative):
        """StableDiffusionXLPipeline takes the pooled embeddings beside the states; it makes each
        image's size and crop numbers itself: (height, width), crop (0, 0), as kohya's sampler."""
        return {"prompt_embeds": positive.states, "pooled_prompt_embeds": positive.pooled,
                "negative_prompt_embeds": negative.states, "negative_pooled_prompt_embeds": negative.pooled}

    def sampling_pipeline(self, model, unet, scheduler):
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=unet, scheduler=scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


SDXL = _SDXL()
