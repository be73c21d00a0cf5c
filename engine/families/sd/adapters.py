"""The SD1 and SD2 adapters. They differ in the text encoder (CLIP ViT-L vs OpenCLIP ViT-H,
which engine/models tells apart by the ``v2`` flag), the native side of the 768-v models and
the planner's figures; everything else is shared and delegates to engine/models."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from engine.families.base import Family, PlanCoefficients

# SD's VAE scale (the LDM paper's 1 / std of the latents).
SD_VAE_SCALE = 0.18215


class StableDiffusion(Family):
    vae_scale = SD_VAE_SCALE
    v2: bool

    def recognises(self, view) -> bool:
        from engine.models.detect import CONV_IN_KEY, detect_v2_folder, detect_v2_single_file

        if view.tensors:
            if CONV_IN_KEY not in view.tensors or any(k.startswith("conditioner.") for k in view.tensors):
                return False   # not an LDM checkpoint, or SDXL's layout
            return detect_v2_single_file(view.tensors)[0] == self.v2
        unet = view.unet_config
        if not unet or unet.get("addition_embed_type"):
            return False
        width = unet.get("cross_attention_dim")
        if not isinstance(width, int):
            return False
        return detect_v2_folder(width, str(view.text_config.get("hidden_act", "quick_gelu")))[0] == self.v2

    def native_side(self, v_prediction: bool) -> int:
        return 512

    def load(self, source: str, **options):
        """The SD loader (engine/models/load.py); ``options`` are ``load_model``'s, ``v2`` among
        them: a setting overrides what it detects, so the model may belong to the other SD family
        (``LoadedModel.family`` says which)."""
        from engine.models.load import load_model

        return load_model(source, **options)

    def refusals(self, cfg) -> list[tuple[str, str, str]]:
        """SDXL's own keys: SD has one text encoder and its U-Net's blocks differ."""
        out = []
        for key in ("learning_rate_te1", "learning_rate_te2"):
            if getattr(cfg.optimizer, key) is not None:
                out.append((f"optimizer.{key}", f"{self.label} has one text encoder; {key} sets one of SDXL's two",
                            "use optimizer.learning_rate_te"))
        if cfg.optimizer.block_lr is not None:
            out.append(("optimizer.block_lr", "block_lr sets kohya's 23 U-Net blocks of SDXL; SD's U-Net has "
                        "other blocks (kohya's fine_tune.py has no block_lr)", "use optimizer.learning_rate"))
        if cfg.cache.text_encoder_outputs != "none":
            out.append(("cache.text_encoder_outputs", "text-encoder output caching is built for SDXL (kohya "
                        "offers it for SDXL only); SD's one text encoder costs little per step", "remove the setting"))
        return out

    def prompt_encoder(self, model, *, max_token_length, clip_skip, weighted, warn=None):
        from engine.models.text_encoding import PromptEncoder

        return PromptEncoder(model.tokenizer, model.text_encoder, max_token_length=max_token_length,
                             clip_skip=clip_skip, v2=self.v2, weighted=weighted, warn=warn)

    def save(self, path, model, *, v_prediction, fmt, precision, trained: Mapping | None = None,
             metadata: Mapping[str, str] | None = None, epoch=0, global_step=0,
             scheduler_overrides: Mapping | None = None) -> Path:
        from engine.models.save import save_model

        parts = {"unet": model.unet, "text_encoder": model.text_encoder, **(trained or {})}
        return save_model(path, unet=parts["unet"], text_encoder=parts["text_encoder"], vae=model.vae, v2=self.v2,
                          v_parameterization=v_prediction, fmt=fmt, precision=precision, metadata=metadata,
                          epoch=epoch, global_step=global_step, text_extras=getattr(model, "text_extras", None),
                          scheduler_config=getattr(model, "scheduler_config", None),
                          tokenizer=getattr(model, "tokenizer", None), scheduler_overrides=scheduler_overrides)

    def sampling_pipeline(self, model, unet, scheduler):
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


# The planner's activation figures for SD's U-Net, per 512² sample (fake-tensor measurements of
# diffusers' SD 1.5 U-Net with PyTorch's MemTracker; SD 2.x's U-Net differs little; engine/plan/
# estimate.py's docstring gives the published figures they reproduce): held at the end of the
# forward pass, and what is left when every gradient exists.
SD_ACTIVATIONS = {("amp", False): 1.245e9, ("fp32", False): 1.871e9, ("half", False): 0.936e9,
                  ("amp", True): 0.184e9, ("fp32", True): 0.30e9, ("half", True): 0.14e9}
SD_ACTIVATION_TAIL = {False: 0.50e9, True: 0.18e9}
# Sampling: the U-Net's forward without gradients, per 512² image in 16 bit (measured as above).
SD_SAMPLING_PER_IMAGE = 0.07e9
# A trained CLIP text encoder's activations per 77-token chunk: tens of MB (an estimate).
SD_TEXT_ACTIVATION_PER_CHUNK = 0.03e9


class _SD1(StableDiffusion):
    name, label, v2 = "sd1", "SD 1.x", False
    plan = PlanCoefficients(
        unet_params=859_520_964, text_params=(123_060_480,),          # CLIP ViT-L/14 text tower
        attention_levels=((1, 8, 5), (4, 8, 5)),                      # 8 heads everywhere
        hypernetwork_widths=(320, 640, 768, 1280),
        largest_param=29_491_200, largest_text_param=37_945_344,
        adafactor_state_bytes=2.1295, shard_unit_params=49_164_800,
        activation_side=512, activations=SD_ACTIVATIONS, activation_tail=SD_ACTIVATION_TAIL,
        sampling_per_image=SD_SAMPLING_PER_IMAGE, text_activation_per_chunk=(SD_TEXT_ACTIVATION_PER_CHUNK,),
    )


class _SD2(StableDiffusion):
    name, label, v2 = "sd2", "SD 2.x", True
    plan = PlanCoefficients(
        unet_params=865_910_724, text_params=(340_387_840,),          # OpenCLIP ViT-H/14 text tower
        attention_levels=((1, 5, 5), (4, 10, 5)),                     # 64-wide heads: 320/64, 640/64
        hypernetwork_widths=(320, 640, 1024, 1280),
        largest_param=29_491_200, largest_text_param=50_593_792,
        adafactor_state_bytes=1.8851, shard_unit_params=49_164_800,
        activation_side=512, activations=SD_ACTIVATIONS, activation_tail=SD_ACTIVATION_TAIL,
        sampling_per_image=SD_SAMPLING_PER_IMAGE, text_activation_per_chunk=(SD_TEXT_ACTIVATION_PER_CHUNK,),
    )

    def native_side(self, v_prediction: bool) -> int:
        return 768 if v_prediction else 512   # SD 2.x 768-v; SD 2.x base is a 512 model


SD1 = _SD1()
SD2 = _SD2()
