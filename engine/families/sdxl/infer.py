"""SDXL architecture configs for a single file, read from its tensor shapes.

A full-size SDXL file matches SDXL base 1.0's configs (``configs/``) exactly. Other sizes
(the tiny test models) are described from shapes: channels, layers per block, which levels
have attention and how many transformer layers each stacks, the context width, the added
embedding's input width, each text encoder's width, depth and projection. What shapes cannot
tell (attention heads, GroupNorm groups) comes from the ``sdft.*_config`` metadata sdft
writes on save, else from SDXL's conventions (64-wide heads, 32 groups), as
``engine/models/infer.py`` does for SD.
"""

from __future__ import annotations

from typing import Mapping

from engine.families.sdxl.conditioning import TIME_ID_COUNT, VAE_SCALE_FACTOR
from engine.families.sdxl.configs import builtin_config
from engine.models.config_check import CHECKS
from engine.models.errors import ModelLoadError
from engine.models.infer import TEXT_META, UNET_META, VAE_META, _groups, _indices, _meta_config, infer_vae_config

TEXT_2_META = "sdft.text_config_2"   # TE2's config; TE1's is SD's sdft.text_config


def _with_saved(cfg: dict, inferred: dict, metadata, key: str, component: str, path) -> dict:
    """``cfg`` (built-in) updated with the file's saved config, then with what shapes say;
    a saved value no model can have is named with its metadata key."""
    saved = _meta_config(metadata, key)
    if saved is not None:
        cfg.update({k: v for k, v in saved.items() if not k.startswith("_")})
    cfg.update(inferred)
    problems = CHECKS[component](cfg)
    if problems:
        name, why = problems[0]
        raise ModelLoadError(f"{path}: the metadata {key} gives {name} = {cfg.get(name)!r}, which {why}; remove "
                             "the key from the file (sdft then reads the architecture from the tensor shapes)")
    return cfg


def infer_unet_config(part: Mapping, *, te2_projection: int, metadata=None, path="") -> dict:
    """UNet2DConditionModel config for SDXL's U-Net tensors (``model.diffusion_model.`` stripped)."""
    keys = list(part)
    n_inputs = max(_indices(keys, r"input_blocks\.(\d+)\.")) + 1
    n_levels = len(_indices(keys, r"input_blocks\.(\d+)\.0\.op\.weight")) + 1
    step = n_inputs // n_levels
    channels = [int(part[f"input_blocks.{step * i + 1}.0.out_layers.3.weight"].shape[0]) for i in range(n_levels)]
    depth = [len(_indices(keys, rf"input_blocks\.{step * i + 1}\.1\.transformer_blocks\.(\d+)\."))
             for i in range(n_levels)]
    up_attention = [f"output_blocks.{step * i}.1.norm.weight" in part for i in range(n_levels)]
    k_keys = [k for k in keys if k.endswith("attn2.to_k.weight")]
    added = int(part["label_emb.0.0.weight"].shape[1])
    cfg = builtin_config("unet")
    inferred = dict(
        in_channels=int(part["input_blocks.0.0.weight"].shape[1]),
        out_channels=int(part["out.2.weight"].shape[0]),
        layers_per_block=step - 1,
        block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention],
        transformer_layers_per_block=[max(1, d) for d in depth],
        cross_attention_dim=int(part[k_keys[0]].shape[1]) if k_keys else cfg["cross_attention_dim"],
        projection_class_embeddings_input_dim=added,
        addition_time_embed_dim=(added - te2_projection) // TIME_ID_COUNT,
    )
    if _meta_config(metadata, UNET_META) is None and any(cfg.get(k) != v for k, v in inferred.items()):
        cfg["attention_head_dim"] = [max(1, c // 64) for c in channels]   # SDXL's 64-wide heads
        cfg["norm_num_groups"] = _groups(channels)
    return _with_saved(cfg, inferred, metadata, UNET_META, "unet", path)


def te1_shapes(state: Mapping) -> dict:
    """What TE1's tensors (transformers' names, no ``text_model.``) say of its config."""
    return dict(
        vocab_size=int(state["embeddings.token_embedding.weight"].shape[0]),
        hidden_size=int(state["embeddings.token_embedding.weight"].shape[1]),
        intermediate_size=int(state["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=len(_indices(state, r"encoder\.layers\.(\d+)\.")),
        max_position_embeddings=int(state["embeddings.position_embedding.weight"].shape[0]),
    )


def te2_shapes(part: Mapping) -> dict:
    """What TE2's OpenCLIP tensors (``conditioner.embedders.1.model.`` stripped) say of its
    config; SDXL uses all of bigG's layers (SD2 dropped the last)."""
    return dict(
        vocab_size=int(part["token_embedding.weight"].shape[0]),
        hidden_size=int(part["token_embedding.weight"].shape[1]),
        intermediate_size=int(part["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        num_hidden_layers=len(_indices(part, r"transformer\.resblocks\.(\d+)\.")),
        max_position_embeddings=int(part["positional_embedding"].shape[0]),
        projection_dim=int(part["text_projection"].shape[1]),   # stored (width, projection)
    )


def infer_text_config(inferred: dict, *, second: bool, metadata=None, path="") -> dict:
    """CLIPTextConfig dict for TE1 (``second`` False) or TE2 from what their shapes say."""
    cfg = builtin_config("text_encoder_2" if second else "text_encoder")
    key = TEXT_2_META if second else TEXT_META
    if _meta_config(metadata, key) is None and any(cfg.get(k) != v for k, v in inferred.items()):
        width = inferred["hidden_size"]
        cfg["num_attention_heads"] = width // 64 if width % 64 == 0 else 1
        cfg["projection_dim"] = inferred.get("projection_dim", width)
    cfg = _with_saved(cfg, inferred, metadata, key, "text_encoder", path)
    return {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}


def infer_sdxl_vae_config(part: Mapping, *, metadata=None, path="") -> dict:
    """SD's VAE architecture read from the shapes (``engine/models/infer.py``), on SDXL's
    config: its scale (0.13025, whatever a saved config says) and fp32 upcast."""
    shapes = infer_vae_config(part, v2=False, v_parameterization=False)
    inferred = {k: shapes[k] for k in ("in_channels", "out_channels", "latent_channels", "block_out_channels",
                                       "down_block_types", "up_block_types", "layers_per_block")}
    cfg = builtin_config("vae")
    if _meta_config(metadata, VAE_META) is None and any(cfg.get(k) != v for k, v in inferred.items()):
        cfg["norm_num_groups"] = _groups(inferred["block_out_channels"])
    cfg = _with_saved(cfg, inferred, metadata, VAE_META, "vae", path)
    return dict(cfg, scaling_factor=VAE_SCALE_FACTOR)
