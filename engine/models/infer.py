"""Architecture configs for a single-file checkpoint, read from its tensor shapes.

Real SD files match a built-in config exactly. Other sizes (the tiny test models, pruned
or experimental variants) are described from shapes: channels, layers per block, which
blocks have attention, context width, projection kind, text width/depth. What shapes
cannot tell (attention head counts, GroupNorm groups) comes from the ``sdft.*_config``
metadata we write on save, else from SD's conventions (head width 64, 32 groups).
"""

from __future__ import annotations

import json
import re
from typing import Mapping

from engine.models.configs import builtin_config, family_for

UNET_META = "sdft.unet_config"
VAE_META = "sdft.vae_config"
TEXT_META = "sdft.text_config"
SCHEDULER_META = "sdft.scheduler_config"   # the source model's inference scheduler, kept across formats


def _meta_config(metadata: Mapping[str, str] | None, key: str) -> dict | None:
    if not metadata or key not in metadata:
        return None
    try:
        value = json.loads(metadata[key])
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _indices(keys, pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in keys if (m := rx.match(k))}


def _groups(channels) -> int:
    """SD uses 32 groups; for other widths the largest power of two <= 32 that divides all."""
    for g in (32, 16, 8, 4, 2, 1):
        if all(c % g == 0 for c in channels):
            return g
    return 1


def infer_unet_config(part: Mapping, *, v2: bool, v_parameterization: bool,
                      metadata: Mapping[str, str] | None = None) -> dict:
    """UNet2DConditionModel config for original U-Net tensors (``model.diffusion_model.`` stripped)."""
    keys = list(part.keys())
    n_inputs = max(_indices(keys, r"input_blocks\.(\d+)\.")) + 1
    n_levels = len(_indices(keys, r"input_blocks\.(\d+)\.0\.op\.weight")) + 1
    lpb = n_inputs // n_levels - 1
    step = lpb + 1
    channels = [int(part[f"input_blocks.{step * i + 1}.0.out_layers.3.weight"].shape[0]) for i in range(n_levels)]
    down_attn = [f"input_blocks.{step * i + 1}.1.norm.weight" in part for i in range(n_levels)]
    up_attn = [f"output_blocks.{step * i}.1.norm.weight" in part for i in range(n_levels)]
    k_keys = [k for k in keys if k.endswith("attn2.to_k.weight")]
    context = int(part[k_keys[0]].shape[1]) if k_keys else None
    proj = [k for k in keys if k.endswith("proj_in.weight")]
    linear = bool(proj) and part[proj[0]].ndim == 2
    depth = len(_indices(keys, r"input_blocks\.1\.1\.transformer_blocks\.(\d+)\.")) or 1

    family = family_for(v2, v_parameterization)
    cfg = builtin_config(family, "unet")
    inferred = dict(
        in_channels=int(part["input_blocks.0.0.weight"].shape[1]),
        out_channels=int(part["out.2.weight"].shape[0]),
        layers_per_block=lpb,
        block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        cross_attention_dim=context if context is not None else cfg["cross_attention_dim"],
        use_linear_projection=linear,
        transformer_layers_per_block=depth,
    )
    is_builtin = all(cfg.get(k) == v for k, v in inferred.items() if k != "transformer_layers_per_block") and depth == 1
    saved = _meta_config(metadata, UNET_META)
    if saved is not None:
        cfg.update(saved)
    elif not is_builtin:
        # Heads: SD1 uses 8 per block, SD2 a head width of 64; fall back to those conventions.
        cfg["attention_head_dim"] = 8 if not v2 else [max(1, c // 64) for c in channels]
        cfg["norm_num_groups"] = _groups(channels)
    cfg.update(inferred)
    if depth == 1:
        cfg.pop("transformer_layers_per_block", None)
    return cfg


def infer_vae_config(part: Mapping, *, v2: bool, v_parameterization: bool,
                     metadata: Mapping[str, str] | None = None) -> dict:
    """AutoencoderKL config for original VAE tensors (``first_stage_model.`` stripped)."""
    keys = list(part.keys())
    levels = sorted(_indices(keys, r"encoder\.down\.(\d+)\."))
    channels = [int(part[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels]
    lpb = len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    cfg = builtin_config(family_for(v2, v_parameterization), "vae")
    inferred = dict(
        in_channels=int(part["encoder.conv_in.weight"].shape[1]),
        out_channels=int(part["decoder.conv_out.weight"].shape[0]),
        latent_channels=int(part["post_quant_conv.weight"].shape[0]),
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        layers_per_block=lpb,
    )
    is_builtin = all(cfg.get(k) == v for k, v in inferred.items())
    saved = _meta_config(metadata, VAE_META)
    if saved is not None:
        cfg.update(saved)
    elif not is_builtin:
        cfg["norm_num_groups"] = _groups(channels)
    cfg.update(inferred)
    return cfg


def infer_text_config(hf_sd: Mapping, *, v2: bool, metadata: Mapping[str, str] | None = None) -> dict:
    """CLIPTextConfig dict for HF CLIP tensors (no ``text_model.`` prefix)."""
    width = int(hf_sd["embeddings.token_embedding.weight"].shape[1])
    layers = len(_indices(hf_sd.keys(), r"encoder\.layers\.(\d+)\."))
    cfg = builtin_config(family_for(v2, False), "text_encoder")
    inferred = dict(
        vocab_size=int(hf_sd["embeddings.token_embedding.weight"].shape[0]),
        hidden_size=width,
        intermediate_size=int(hf_sd["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=layers,
        max_position_embeddings=int(hf_sd["embeddings.position_embedding.weight"].shape[0]),
    )
    is_builtin = all(cfg.get(k) == v for k, v in inferred.items())
    saved = _meta_config(metadata, TEXT_META)
    if saved is not None:
        cfg.update({k: v for k, v in saved.items() if not k.startswith("_")})
    elif not is_builtin:
        cfg["num_attention_heads"] = max(1, width // 64) if width % 64 == 0 else 1
        cfg["projection_dim"] = width
    cfg.update(inferred)
    return cfg


def sd2_text_layers(part: Mapping, metadata: Mapping[str, str] | None = None) -> int:
    """How many OpenCLIP resblocks the HF model uses: SD2 skips the last one.

    Real SD2 files hold 24 resblocks and use 23. Files we write keep that convention
    (one extra resblock); ``sdft.text_config`` says the exact count when present.
    """
    saved = _meta_config(metadata, TEXT_META)
    if saved and "num_hidden_layers" in saved:
        return int(saved["num_hidden_layers"])
    n = len(_indices(part.keys(), r"transformer\.resblocks\.(\d+)\."))
    width = int(part["token_embedding.weight"].shape[1]) if "token_embedding.weight" in part else 0
    if width == 1024 and n == 23:
        return 23  # a file with the unused last block already dropped
    return max(1, n - 1)
