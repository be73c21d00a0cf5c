"""SDXL's single-file key layout, as kohya's ``library/sdxl_model_util.py`` writes it.

* U-Net: the original LDM layout under ``model.diffusion_model.`` (SD's names, three
  blocks; the pooled-text and size embedding ``add_embedding.linear_1/2`` is
  ``label_emb.0.0`` / ``label_emb.0.2``);
* TE1 (CLIP ViT-L): transformers' own names under ``conditioner.embedders.0.transformer.``;
* TE2 (OpenCLIP bigG): OpenCLIP's names under ``conditioner.embedders.1.model.``, q/k/v
  fused into ``attn.in_proj_weight`` / ``in_proj_bias``, ``text_projection`` stored as
  OpenCLIP's (width, projection) matrix, the transpose of transformers' Linear weight, and
  ``logit_scale`` copied through when the source had one (kohya writes it only then);
* VAE: SD's original layout under ``first_stage_model.`` (attention as 1x1 convs).

On ``text_projection`` kohya's loader and writer do *not* transpose (bigG's projection is
square, so nothing fails): a file kohya read and wrote keeps whatever layout it had, but
kohya's in-memory model holds the transpose of Stability AI's matrix. Stability AI's
files, diffusers' ``from_single_file`` and ComfyUI all transpose, and so does sdft
(docs/sdxl.md, "text_projection").

The SD1/SD2 converters in ``engine/models/convert.py`` already derive the U-Net and VAE
names from the diffusers keys and the block counts; SDXL reuses them and adds what SD has
not got. Conversions only rename, split, fuse, transpose or reshape: the round trip is
bit-exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from engine.models.convert import (
    UNET_PREFIX,
    VAE_PREFIX,
    ConversionError,
    _openclip_name,
    _vae_value_to_original,
    strip_text_model_prefix,
    vae_from_original,
    vae_key_map,
)
from engine.models.convert import (
    unet_key_map as sd_unet_key_map,
)

TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."
_ADD_EMBEDDING = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
_TE2_PROJECTION = "text_projection.weight"


# ----------------------------------------------------------------------------- U-Net


def unet_key_map(diffusers_keys: Iterable[str]) -> dict[str, str]:
    """diffusers key → single-file key for every key of an SDXL U-Net."""
    keys = list(diffusers_keys)
    out = {}
    for key in keys:
        for src, dst in _ADD_EMBEDDING.items():
            if key.startswith(src):
                out[key] = UNET_PREFIX + dst + key[len(src):]
    out.update(sd_unet_key_map([k for k in keys if k not in out]))
    return out


def _unet_from_single_file(part: Mapping, model_keys: Iterable[str]) -> dict:
    forward = unet_key_map(model_keys)
    out = {}
    for dk, ok in forward.items():
        if ok not in part:
            raise ConversionError(f"missing U-Net tensor {ok!r} (needed for diffusers {dk!r})")
        out[dk] = part[ok]
    extra = set(part) - set(forward.values())
    if extra:
        raise ConversionError(
            f"unexpected U-Net tensor {sorted(extra)[0]!r} ({len(extra)} in all): the U-Net is "
            "not the SDXL architecture its config describes"
        )
    return out


# ----------------------------------------------------------------------------- text encoders


def te1_to_single_file(sd: Mapping) -> dict:
    """TE1 keeps transformers' names (with ``text_model.``, as kohya's files have them)."""
    return {
        TE1_PREFIX + "text_model." + strip_text_model_prefix(k): v
        for k, v in sd.items()
        if not k.endswith("position_ids")
    }


def te2_to_single_file(sd: Mapping, logit_scale=None) -> dict:
    """TE2 (``CLIPTextModelWithProjection``) → OpenCLIP names, fused q/k/v, projection transposed."""
    import torch

    bare = {strip_text_model_prefix(k): v for k, v in sd.items() if not k.endswith("position_ids")}
    if _TE2_PROJECTION not in bare:
        raise ConversionError("SDXL's second text encoder has no text_projection.weight: "
                              "it must be a CLIPTextModelWithProjection")
    out = {TE2_PREFIX + "text_projection": bare.pop(_TE2_PROJECTION).t().contiguous()}
    for k, v in bare.items():
        name = _openclip_name(k)
        if name is not None:
            out[TE2_PREFIX + name] = v
    layers = sorted({int(m.group(1)) for k in bare if (m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.", k))})
    for i in layers:
        attn = f"encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            fused = torch.cat([bare[f"{attn}{p}_proj.{kind}"] for p in "qkv"], dim=0)
            out[f"{TE2_PREFIX}transformer.resblocks.{i}.attn.in_proj_{kind}"] = fused
    if logit_scale is not None:
        out[TE2_PREFIX + "logit_scale"] = logit_scale
    return out


def _te1_from_single_file(part: Mapping) -> dict:
    """Single-file TE1 tensors (full keys) → transformers names without ``text_model.``."""
    return {
        strip_text_model_prefix(k[len(TE1_PREFIX):]): v
        for k, v in part.items()
        if not k.endswith("position_ids")
    }


def _te2_from_single_file(part: Mapping, model_keys: Iterable[str]) -> tuple[dict, object]:
    """Single-file TE2 tensors (full keys) → (transformers names without ``text_model.``, logit_scale)."""
    wanted = [strip_text_model_prefix(k) for k in model_keys if not k.endswith("position_ids")]
    out: dict = {}
    used = {TE2_PREFIX + "logit_scale"}
    for key in wanted:
        if key == _TE2_PROJECTION:
            source = TE2_PREFIX + "text_projection"
            value = _take(part, source, key).t().contiguous()
        elif m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            source = f"{TE2_PREFIX}transformer.resblocks.{m.group(1)}.attn.in_proj_{m.group(3)}"
            value = _take(part, source, key).chunk(3, dim=0)["qkv".index(m.group(2))].clone()
        else:
            source = TE2_PREFIX + _openclip_name(key)
            value = _take(part, source, key)
        used.add(source)
        out[key] = value
    # OpenCLIP's attention mask is a buffer, and ComfyUI's files carry a position_ids buffer
    # here (kohya's converter drops it too): neither is a weight.
    extra = sorted(k for k in set(part) - used
                   if not k.startswith(TE2_PREFIX + "attn_mask") and not k.endswith("position_ids"))
    if extra:
        raise ConversionError(
            f"unexpected text encoder 2 tensor {extra[0]!r} ({len(extra)} in all): the file's "
            "OpenCLIP bigG has another shape than its config"
        )
    return out, part.get(TE2_PREFIX + "logit_scale")


def _take(part: Mapping, source: str, target: str):
    if source not in part:
        raise ConversionError(f"missing tensor {source!r} (needed for diffusers {target!r})")
    return part[source]


# ----------------------------------------------------------------------------- whole files


@dataclass
class SdxlStateDicts:
    """An SDXL model's four diffusers state dicts (text encoders without ``text_model.``)."""

    unet: dict
    vae: dict
    text_encoder: dict
    text_encoder_2: dict
    logit_scale: object = None           # OpenCLIP's, kept to be written back
    other: dict = field(default_factory=dict)   # tensors outside the four parts (ignored)


def diffusers_to_single_file(unet_sd: Mapping, vae_sd: Mapping, te1_sd: Mapping, te2_sd: Mapping,
                             *, logit_scale=None) -> dict:
    """Four diffusers state dicts → one SDXL single-file state dict in kohya's layout."""
    out: dict = {}
    for k, orig in unet_key_map(unet_sd.keys()).items():
        out[orig] = unet_sd[k]
    for k, orig in vae_key_map(vae_sd.keys()).items():
        out[orig] = _vae_value_to_original(orig, vae_sd[k])
    out.update(te1_to_single_file(te1_sd))
    out.update(te2_to_single_file(te2_sd, logit_scale))
    return out


def single_file_to_diffusers(sd: Mapping, *, unet_keys: Iterable[str], vae_state: Mapping,
                             te2_keys: Iterable[str]) -> SdxlStateDicts:
    """An SDXL single file → diffusers state dicts for models with these keys.

    ``vae_state`` is the target VAE's state dict (its shapes decide the attention reshape);
    TE1's names need no model. Raises ConversionError naming the first missing or
    unexpected tensor.
    """
    parts: dict[str, dict] = {"unet": {}, "vae": {}, "te1": {}, "te2": {}, "other": {}}
    for k, v in sd.items():
        for name, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("te1", TE1_PREFIX), ("te2", TE2_PREFIX)):
            if k.startswith(prefix):
                parts[name][k] = v
                break
        else:
            parts["other"][k] = v
    for name, prefix in (("unet", UNET_PREFIX), ("te1", TE1_PREFIX), ("te2", TE2_PREFIX)):
        if not parts[name]:
            raise ConversionError(f"no {prefix}* tensors: this is not an SDXL single file")
    vae_part = {k[len(VAE_PREFIX):]: v for k, v in parts["vae"].items()}
    te2, logit_scale = _te2_from_single_file(parts["te2"], te2_keys)
    return SdxlStateDicts(
        unet=_unet_from_single_file(parts["unet"], unet_keys),
        vae=vae_from_original(vae_part, vae_state),
        text_encoder=_te1_from_single_file(parts["te1"]),
        text_encoder_2=te2,
        logit_scale=logit_scale,
        other=parts["other"],
    )
