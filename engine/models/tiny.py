"""Tiny random Stable Diffusion models, for the demo and the tests.

They keep the real SD layout at toy widths: the U-Net has SD's four down/up blocks
(cross-attention ×3 + plain) with two layers per block, the VAE has four blocks so latents
are image/8 with 4 channels, the text model is a 2-layer CLIP over CLIP's real vocabulary.
SD1 and SD2 flavours differ as the real ones do: SD2 uses linear projections, GELU, pads
with "!" and predicts v. Nothing is downloaded; weights are random (seeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Widths chosen so a CPU step at 256 px takes well under a second on one core.
TINY_UNET_CHANNELS = (32, 32, 64, 64)
TINY_VAE_CHANNELS = (16, 32, 32, 32)
TINY_TEXT_WIDTH = {"sd1": 32, "sd2": 48}     # stands in for 768 (SD1) / 1024 (SD2)
TINY_GROUPS = 8


@dataclass(frozen=True)
class TinySpec:
    flavour: str = "sd1"            # "sd1" | "sd2"
    seed: int = 0
    unet_layers_per_block: int = 2  # SD's real value
    vae_layers_per_block: int = 1
    text_layers: int = 2

    @property
    def v2(self) -> bool:
        return self.flavour == "sd2"


def tiny_unet_config(spec: TinySpec) -> dict:
    v2 = spec.v2
    return dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=spec.unet_layers_per_block,
        block_out_channels=TINY_UNET_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=TINY_TEXT_WIDTH[spec.flavour],
        # SD1: 8 heads everywhere; SD2: a fixed head width, so heads grow with channels.
        attention_head_dim=(2, 2, 4, 4) if v2 else 8,
        use_linear_projection=v2,
        upcast_attention=v2,
        norm_num_groups=TINY_GROUPS,
    )


def tiny_vae_config(spec: TinySpec) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=TINY_VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=spec.vae_layers_per_block,
        norm_num_groups=TINY_GROUPS,
        sample_size=64,
        scaling_factor=0.18215,
    )


def tiny_text_config(spec: TinySpec) -> dict:
    width = TINY_TEXT_WIDTH[spec.flavour]
    return dict(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu" if spec.v2 else "quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0 if spec.v2 else 49407,
        projection_dim=width,
    )


def scheduler_config(v_prediction: bool) -> dict:
    """SD's training schedule: DDPM, scaled_linear 0.00085-0.012, 1000 steps."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )


def build_tiny_components(spec: TinySpec = TinySpec()) -> dict:
    """U-Net, VAE, text encoder, tokenizer and scheduler, randomly initialised from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(spec.seed)
    unet = UNet2DConditionModel(**tiny_unet_config(spec))
    vae = AutoencoderKL(**tiny_vae_config(spec))
    text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(spec)))
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(v2=spec.v2),
        scheduler=DDPMScheduler(**scheduler_config(v_prediction=spec.v2)),
    )


def save_tiny_model(out_dir: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Build a tiny model and save it as a diffusers folder (model_index.json + parts)."""
    from diffusers import StableDiffusionPipeline

    parts = build_tiny_components(spec)
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
