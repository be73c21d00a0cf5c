"""Tiny random SDXL models, for the tests (the SD1/SD2 kit is engine/models/tiny.py).

They keep SDXL's real layout at toy widths: a three-block U-Net (plain, cross-attention,
cross-attention down; the mirror up) whose deepest blocks stack more transformer layers,
with ``addition_embed_type = "text_time"``; CLIP ViT-L's stand-in (TE1, 12 layers so that
kohya's ``hidden_states[11]`` is its penultimate layer as in the real model) and OpenCLIP
bigG's stand-in (TE2, with a text projection); SD's four-block VAE with SDXL's scale; two
tokenizers over CLIP's vocabulary, the second padding with "!". Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.families.sdxl.conditioning import TIME_ID_COUNT, VAE_SCALE_FACTOR

TINY_UNET_CHANNELS = (32, 64, 64)        # stands in for (320, 640, 1280)
TINY_TRANSFORMER_LAYERS = (1, 1, 2)      # stands in for (1, 2, 10)
TINY_TE1_WIDTH = 32                      # stands in for 768
TINY_TE2_WIDTH = 48                      # stands in for 1280
TINY_TIME_EMBED_DIM = 8                  # stands in for 256 (addition_time_embed_dim)
TINY_GROUPS = 8


@dataclass(frozen=True)
class TinySdxlSpec:
    seed: int = 0
    v_prediction: bool = False
    te1_layers: int = 12   # CLIP ViT-L's count: kohya reads hidden_states[11]
    te2_layers: int = 2


def tiny_unet_config(spec: TinySdxlSpec) -> dict:
    return dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=TINY_UNET_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=TINY_TRANSFORMER_LAYERS,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=TINY_TE1_WIDTH + TINY_TE2_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_TIME_EMBED_DIM,
        # pooled TE2 output + six size/crop numbers, each embedded in addition_time_embed_dim
        projection_class_embeddings_input_dim=TINY_TE2_WIDTH + TIME_ID_COUNT * TINY_TIME_EMBED_DIM,
        norm_num_groups=TINY_GROUPS,
    )


def tiny_vae_config() -> dict:
    from engine.models.tiny import TinySpec
    from engine.models.tiny import tiny_vae_config as sd_vae_config

    # SDXL's VAE has SD's architecture; only the scale differs (and it overflows in fp16).
    return dict(sd_vae_config(TinySpec()), scaling_factor=VAE_SCALE_FACTOR, force_upcast=True)


def _text_config(width: int, layers: int, act: str, pad_token_id: int) -> dict:
    return dict(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
        projection_dim=width,
    )


def tiny_te1_config(spec: TinySdxlSpec) -> dict:
    return _text_config(TINY_TE1_WIDTH, spec.te1_layers, "quick_gelu", pad_token_id=49407)


def tiny_te2_config(spec: TinySdxlSpec) -> dict:
    return _text_config(TINY_TE2_WIDTH, spec.te2_layers, "gelu", pad_token_id=0)


def scheduler_config(v_prediction: bool) -> dict:
    """SDXL base's scheduler folder: Euler over SD's training schedule (0.00085-0.012, 1000 steps)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )


def build_tiny_sdxl_components(spec: TinySdxlSpec = TinySdxlSpec()) -> dict:
    """The seven parts of a ``StableDiffusionXLPipeline``, randomly initialised from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(spec.seed)
    return dict(
        unet=UNet2DConditionModel(**tiny_unet_config(spec)),
        vae=AutoencoderKL(**tiny_vae_config()),
        text_encoder=CLIPTextModel(CLIPTextConfig(**tiny_te1_config(spec))),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**tiny_te2_config(spec))),
        tokenizer=build_clip_tokenizer(v2=False),    # CLIP ViT-L: pads with <|endoftext|>
        tokenizer_2=build_clip_tokenizer(v2=True),   # bigG: the same BPE, pads with "!"
        scheduler=EulerDiscreteScheduler(**scheduler_config(spec.v_prediction)),
    )


def save_tiny_sdxl_model(out_dir: str | Path, spec: TinySdxlSpec = TinySdxlSpec()) -> Path:
    """Build a tiny SDXL model and save it as a diffusers folder (model_index.json + parts)."""
    from diffusers import StableDiffusionXLPipeline

    from engine.models.tokenizer import save_tokenizer

    parts = build_tiny_sdxl_components(spec)
    out = Path(out_dir)
    StableDiffusionXLPipeline(**parts).save_pretrained(out, safe_serialization=True)
    # Older stacks read vocab.json / merges.txt, which transformers 5 no longer writes.
    save_tokenizer(parts["tokenizer"], out / "tokenizer")
    save_tokenizer(parts["tokenizer_2"], out / "tokenizer_2")
    return out


def save_tiny_sdxl_file(path: str | Path, spec: TinySdxlSpec = TinySdxlSpec(), *, fmt: str = "safetensors",
                        precision: str = "float") -> Path:
    """Build a tiny SDXL model and save it as one file (``fmt``: "safetensors" or "ckpt") in
    kohya's layout, as sdft saves (save.py), so its metadata names the tiny sizes and it loads
    back exactly."""
    from types import SimpleNamespace

    from engine.families.sdxl.save import save_sdxl

    parts = build_tiny_sdxl_components(spec)
    model = SimpleNamespace(**parts, scheduler_config=dict(parts["scheduler"].config), logit_scale=None,
                            zero_terminal_snr=False)
    return save_sdxl(path, model, v_prediction=spec.v_prediction, fmt=fmt, precision=precision)
