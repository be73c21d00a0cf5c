"""Key conversion between diffusers models and the original ("single file") SD layout.

Every mapping is generated from the diffusers key names and a few
architecture numbers (layers per block, number of blocks), never from a fixed table, so
the same code converts real SD and the tiny test models. Conversions only rename, split
(SD2 fused q/k/v) or reshape (VAE attention 1x1 convs); values are never changed, which
makes the round trip bit-exact.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
EMA_PREFIX = "model_ema."

# Unused OpenCLIP tensors kept for other tools: copied through or fabricated.
OPENCLIP_LOGIT_SCALE = 4.6052  # ln(1/0.07), OpenCLIP's initial value


class ConversionError(ValueError):
    """A key that has no place in the other layout (names the key)."""


# --------------------------------------------------------------------------- U-Net

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _rename_first(rest: str, table: Mapping[str, str]) -> str:
    """Rename the leading module name of ``rest`` (``norm1.weight`` -> ``in_layers.0.weight``)."""
    for src, dst in table.items():
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src):]
    return rest


def unet_layers_per_block(diffusers_keys: Iterable[str]) -> int:
    """lpb = number of resnets in the first down block."""
    found = {int(m.group(1)) for k in diffusers_keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
    if not found:
        raise ConversionError("U-Net has no down_blocks.0.resnets.*: not an SD U-Net")
    return max(found) + 1


def unet_key_to_original(key: str, lpb: int, up_with_attention: set[int]) -> str:
    """One diffusers U-Net key -> original key (without the ``model.diffusion_model.`` prefix)."""
    n = lpb + 1
    simple = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
    }
    for src, dst in simple.items():
        if key.startswith(src):
            return dst + key[len(src):]
    if m := re.match(r"mid_block\.resnets\.(\d)\.(.+)$", key):
        return f"middle_block.{2 * int(m.group(1))}.{_rename_first(m.group(2), _UNET_RESNET)}"
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key):
        i, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if kind == "resnets":
            return f"input_blocks.{n * i + j + 1}.0.{_rename_first(rest, _UNET_RESNET)}"
        return f"input_blocks.{n * i + j + 1}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
        return f"input_blocks.{n * (int(m.group(1)) + 1)}.0.op.{m.group(2)}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key):
        i, kind, j, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        if kind == "resnets":
            return f"output_blocks.{n * i + j}.0.{_rename_first(rest, _UNET_RESNET)}"
        return f"output_blocks.{n * i + j}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key):
        i = int(m.group(1))
        slot = 2 if i in up_with_attention else 1
        return f"output_blocks.{n * i + lpb}.{slot}.{m.group(2)}"
    raise ConversionError(f"U-Net key {key!r} has no place in the original SD layout")


def unet_key_map(diffusers_keys: Iterable[str]) -> dict[str, str]:
    """diffusers key -> original key (with prefix) for every key of a diffusers U-Net."""
    keys = list(diffusers_keys)
    lpb = unet_layers_per_block(keys)
    up_attn = {int(m.group(1)) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    return {k: UNET_PREFIX + unet_key_to_original(k, lpb, up_attn) for k in keys}


# --------------------------------------------------------------------------- VAE

_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_ATTN_OLD = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_VAE_CONV_ATTN = re.compile(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def vae_key_to_original(key: str, n_blocks: int) -> str:
    """One diffusers VAE key -> original key (without ``first_stage_model.``)."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    m = re.match(r"(encoder|decoder)\.(.+)$", key)
    if not m:
        raise ConversionError(f"VAE key {key!r} has no place in the original SD layout")
    side, rest = m.group(1), m.group(2)
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out.{rest[len('conv_norm_out.'):]}"
    if m := re.match(r"mid_block\.resnets\.(\d)\.(.+)$", rest):
        return f"{side}.mid.block_{int(m.group(1)) + 1}.{_rename_first(m.group(2), _VAE_RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)$", rest):
        return f"{side}.mid.attn_1.{_rename_first(_rename_first(m.group(1), _VAE_ATTN_OLD), _VAE_ATTN)}"
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", rest):
        return f"{side}.down.{m.group(1)}.block.{m.group(2)}.{_rename_first(m.group(3), _VAE_RESNET)}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)$", rest):
        return f"{side}.down.{m.group(1)}.downsample.{m.group(2)}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", rest):
        i = n_blocks - 1 - int(m.group(1))  # the original numbers decoder blocks bottom-up
        return f"{side}.up.{i}.block.{m.group(2)}.{_rename_first(m.group(3), _VAE_RESNET)}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", rest):
        return f"{side}.up.{n_blocks - 1 - int(m.group(1))}.upsample.{m.group(2)}"
    raise ConversionError(f"VAE key {key!r} has no place in the original SD layout")


def vae_key_map(diffusers_keys: Iterable[str]) -> dict[str, str]:
    keys = list(diffusers_keys)
    ups = {int(m.group(1)) for k in keys if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    n_blocks = max(ups) + 1 if ups else 4
    return {k: VAE_PREFIX + vae_key_to_original(k, n_blocks) for k in keys}


def normalize_old_vae_names(sd: Mapping) -> dict:
    """Old diffusers VAE attention names (query/key/value/proj_attn) -> current ones."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"(.*mid_block\.attentions\.0\.)(query|key|value|proj_attn)(\..+)$", k)
        out[m.group(1) + _VAE_ATTN_OLD[m.group(2)] + m.group(3) if m else k] = v
    return out


def _vae_value_to_original(orig_key: str, value):
    # diffusers keeps these four as Linear (C, C); the original uses 1x1 convs (C, C, 1, 1).
    if _VAE_CONV_ATTN.search(orig_key) and value.ndim == 2:
        return value.reshape(*value.shape, 1, 1)
    return value


def _vae_value_from_original(orig_key: str, value, target_ndim: int):
    if _VAE_CONV_ATTN.search(orig_key) and value.ndim == 4 and target_ndim == 2:
        return value.reshape(value.shape[0], value.shape[1])
    return value


# --------------------------------------------------------------------------- text encoders


def strip_text_model_prefix(key: str) -> str:
    """HF CLIP names with or without ``text_model.`` -> without (transformers >= 5.6 style)."""
    return key[len("text_model."):] if key.startswith("text_model.") else key


def adapt_text_keys(sd: Mapping, model_keys: Iterable[str]) -> dict:
    """Rename HF CLIP keys to the naming this model instance uses (with or without ``text_model.``).

    transformers >= 5.6 builds ``CLIPTextModel`` without the ``text_model.`` level while a
    model loaded from an old folder (or older transformers) keeps it.
    """
    wants_prefix = any(k.startswith("text_model.") for k in model_keys)
    out = {}
    for k, v in sd.items():
        bare = strip_text_model_prefix(k)
        out["text_model." + bare if wants_prefix else bare] = v
    return out


def _openclip_name(bare: str) -> str | None:
    """HF CLIP key (no ``text_model.``) -> OpenCLIP key, except fused q/k/v (None)."""
    fixed = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
    }
    if bare in fixed:
        return fixed[bare]
    if bare.startswith("final_layer_norm."):
        return "ln_final." + bare[len("final_layer_norm."):]
    m = re.match(r"encoder\.layers\.(\d+)\.(.+)$", bare)
    if not m:
        raise ConversionError(f"text encoder key {bare!r} has no place in the OpenCLIP layout")
    i, rest = m.group(1), m.group(2)
    if re.match(r"self_attn\.[qkv]_proj\.", rest):
        return None
    rest = _rename_first(
        rest,
        {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
         "self_attn.out_proj": "attn.out_proj"},
    )
    return f"transformer.resblocks.{i}.{rest}"


def text_sd1_to_original(sd: Mapping) -> dict:
    return {
        SD1_TEXT_PREFIX + "text_model." + strip_text_model_prefix(k): v
        for k, v in sd.items()
        if not k.endswith("position_ids")
    }


def text_sd2_to_original(sd: Mapping, extras: Mapping | None = None) -> dict:
    """HF CLIP (SD2) -> OpenCLIP keys with fused in_proj, plus the unused tensors.

    ``extras`` (original-layout tensors from the source file: the last resblock,
    ``text_projection``, ``logit_scale``) are copied through; missing ones are fabricated
    with the right shapes, as kohya does, so other tools find what they expect.
    """
    import torch

    bare = {strip_text_model_prefix(k): v for k, v in sd.items() if not k.endswith("position_ids")}
    out: dict = {}
    layers = sorted({int(m.group(1)) for k in bare if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    for k, v in bare.items():
        name = _openclip_name(k)
        if name is not None:
            out[SD2_TEXT_PREFIX + name] = v
    for i in layers:
        base = f"encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            parts = [bare[f"{base}{p}_proj.{kind}"] for p in "qkv"]
            out[f"{SD2_TEXT_PREFIX}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(parts, 0)
    extras = dict(extras or {})
    width = bare["embeddings.token_embedding.weight"].shape[1]
    dtype = bare["embeddings.token_embedding.weight"].dtype
    last = len(layers)
    unused = f"{SD2_TEXT_PREFIX}transformer.resblocks.{last}."
    src = f"{SD2_TEXT_PREFIX}transformer.resblocks.{last - 1}."
    extra_last = {k: v for k, v in extras.items() if k.startswith(unused)}
    if extra_last:
        out.update(extra_last)
    elif layers:
        out.update({unused + k[len(src):]: v.clone() for k, v in list(out.items()) if k.startswith(src)})
    proj = extras.get(SD2_TEXT_PREFIX + "text_projection")
    out[SD2_TEXT_PREFIX + "text_projection"] = proj if proj is not None else torch.eye(width, dtype=dtype)
    scale = extras.get(SD2_TEXT_PREFIX + "logit_scale")
    out[SD2_TEXT_PREFIX + "logit_scale"] = scale if scale is not None else torch.tensor(OPENCLIP_LOGIT_SCALE, dtype=dtype)
    return out


def text_sd2_from_original(part: Mapping, num_layers: int) -> tuple[dict, dict]:
    """OpenCLIP keys (prefix stripped) -> (HF CLIP keys without ``text_model.``, unused extras).

    Resblocks at index >= ``num_layers`` (SD2's last one) and the projection are returned
    as extras (with the full original prefix) so a later save can copy them through.
    """
    out: dict = {}
    extras: dict = {}
    reverse_first = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
                     "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}
    for k, v in part.items():
        if k == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = v
        elif k == "positional_embedding":
            out["embeddings.position_embedding.weight"] = v
        elif k.startswith("ln_final."):
            out["final_layer_norm." + k[len("ln_final."):]] = v
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", k):
            i, rest = int(m.group(1)), m.group(2)
            if i >= num_layers:
                extras[SD2_TEXT_PREFIX + k] = v
                continue
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                q, kk, vv = v.chunk(3, dim=0)
                for name, t in zip("qkv", (q, kk, vv), strict=True):
                    out[f"encoder.layers.{i}.self_attn.{name}_proj.{kind}"] = t.clone()
            else:
                out[f"encoder.layers.{i}.{_rename_first(rest, reverse_first)}"] = v
        elif k in ("text_projection", "logit_scale"):
            extras[SD2_TEXT_PREFIX + k] = v
        elif k.startswith("attn_mask"):
            continue
        else:
            raise ConversionError(f"unexpected SD2 text encoder key {SD2_TEXT_PREFIX + k!r}")
    return out, extras


# --------------------------------------------------------------------------- whole checkpoints


def diffusers_to_original(unet_sd: Mapping, vae_sd: Mapping, text_sd: Mapping, *, v2: bool,
                          text_extras: Mapping | None = None) -> dict:
    """Three diffusers state dicts -> one original-layout state dict."""
    out: dict = {}
    for k, orig in unet_key_map(unet_sd.keys()).items():
        out[orig] = unet_sd[k]
    for k, orig in vae_key_map(vae_sd.keys()).items():
        out[orig] = _vae_value_to_original(orig, vae_sd[k])
    out.update(text_sd2_to_original(text_sd, text_extras) if v2 else text_sd1_to_original(text_sd))
    return out


def split_original(sd: Mapping) -> dict[str, dict]:
    """Group an original-layout state dict by part; prefixes are stripped.

    Returns ``unet``, ``vae``, ``text_sd1``, ``text_sd2``, ``ema`` (the ``model_ema.*``
    tensors, prefix kept) and ``other`` (DDPM buffers and anything else; ignored).
    """
    parts: dict[str, dict] = {n: {} for n in ("unet", "vae", "text_sd1", "text_sd2", "ema", "other")}
    for k, v in sd.items():
        for name, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("text_sd1", SD1_TEXT_PREFIX),
                             ("text_sd2", SD2_TEXT_PREFIX)):
            if k.startswith(prefix):
                parts[name][k[len(prefix):]] = v
                break
        else:
            parts["ema" if k.startswith(EMA_PREFIX) else "other"][k] = v
    return parts


def ema_unet_part(ema: Mapping, unet_original_keys: Iterable[str]) -> dict:
    """The EMA U-Net in the same (prefix-stripped) names as the live U-Net.

    LDM stores EMA copies as ``model_ema.diffusion_model`` + the key with its dots removed.
    Returns {} when any U-Net key has no EMA copy.
    """
    out = {}
    for k in unet_original_keys:
        ema_key = "model_ema.diffusion_model" + k.replace(".", "")
        if ema_key not in ema:
            return {}
        out[k] = ema[ema_key]
    return out


def unet_from_original(part: Mapping, model_keys: Iterable[str]) -> dict:
    """Original U-Net tensors (prefix stripped) -> diffusers names of ``model_keys``.

    Raises ConversionError naming the first missing or unexpected original key.
    """
    forward = unet_key_map(model_keys)
    out = {}
    for dk, ok in forward.items():
        bare = ok[len(UNET_PREFIX):]
        if bare not in part:
            raise ConversionError(f"missing U-Net tensor {ok!r} (needed for diffusers {dk!r})")
        out[dk] = part[bare]
    extra = set(part) - {ok[len(UNET_PREFIX):] for ok in forward.values()}
    if extra:
        raise ConversionError(f"unexpected U-Net tensor {UNET_PREFIX + sorted(extra)[0]!r} "
                              f"({len(extra)} in all): the architecture is not the one inferred")
    return out


def vae_from_original(part: Mapping, model_state: Mapping) -> dict:
    """Original VAE tensors (prefix stripped) -> diffusers names, 1x1 convs reshaped."""
    forward = vae_key_map(model_state.keys())
    out = {}
    for dk, ok in forward.items():
        bare = ok[len(VAE_PREFIX):]
        if bare not in part:
            raise ConversionError(f"missing VAE tensor {ok!r} (needed for diffusers {dk!r})")
        out[dk] = _vae_value_from_original(ok, part[bare], model_state[dk].ndim)
    return out
