"""Is a diffusers folder's component config plausible? Checked before a model is built.

diffusers and transformers build whatever a ``config.json`` says and fail deep inside with
messages that name neither file nor key (``AssertionError``, "look at the above report!"), or
build a model no checkpoint fits. ``--check``, training and ``sdft convert`` read each config
here first: a wrong value is named with its file and key and what it should be. No torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.models.errors import ModelLoadError


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _int_list(value, length: int | None = None) -> bool:
    return (isinstance(value, list) and bool(value) and all(_positive_int(v) for v in value)
            and (length is None or len(value) == length))


def _unet_problems(c: dict) -> list[tuple[str, str]]:
    out = []
    blocks = c.get("block_out_channels", [320, 640, 1280, 1280])
    if not _int_list(blocks):
        return [("block_out_channels", "must be a non-empty list of positive integers")]
    for key in ("down_block_types", "up_block_types"):
        if key in c and (not isinstance(c[key], list) or len(c[key]) != len(blocks)):
            out.append((key, f"must list one block per entry of block_out_channels ({len(blocks)})"))
    for key in ("in_channels", "out_channels", "layers_per_block", "sample_size"):
        if key in c and not (_positive_int(c[key]) or (key == "layers_per_block" and _int_list(c[key]))):
            out.append((key, "must be a positive integer"))
    context = c.get("cross_attention_dim", 768)
    if not (_positive_int(context) or _int_list(context, len(blocks))):
        out.append(("cross_attention_dim", "must be a positive integer (768 for SD 1.x, 1024 for SD 2.x)"))
    heads = c.get("attention_head_dim", 8)
    if not (_positive_int(heads) or _int_list(heads, len(blocks))):
        out.append(("attention_head_dim", "must be a positive integer or one per block"))
    out += _groups(c, blocks)
    return out


def _vae_problems(c: dict) -> list[tuple[str, str]]:
    blocks = c.get("block_out_channels", [128, 256, 512, 512])
    if not _int_list(blocks):
        return [("block_out_channels", "must be a non-empty list of positive integers")]
    out = [(key, "must be a positive integer") for key in ("in_channels", "out_channels", "latent_channels",
                                                           "layers_per_block", "sample_size")
           if key in c and not _positive_int(c[key])]
    return out + _groups(c, blocks)


def _text_problems(c: dict) -> list[tuple[str, str]]:
    out = [(key, "must be a positive integer") for key in ("hidden_size", "num_attention_heads",
                                                           "num_hidden_layers", "intermediate_size", "vocab_size")
           if key in c and not _positive_int(c[key])]
    hidden, heads = c.get("hidden_size", 768), c.get("num_attention_heads", 12)
    if _positive_int(hidden) and _positive_int(heads) and hidden % heads:
        out.append(("num_attention_heads", f"must divide hidden_size ({hidden})"))
    positions = c.get("max_position_embeddings", 77)
    if not (_positive_int(positions) and positions >= 77):
        out.append(("max_position_embeddings", "must be at least 77 (CLIP's prompt length)"))
    return out


def _groups(c: dict, blocks: list[int]) -> list[tuple[str, str]]:
    groups = c.get("norm_num_groups", 32)
    if not _positive_int(groups) or any(b % groups for b in blocks):
        return [("norm_num_groups", f"must be a positive integer dividing every block_out_channels ({blocks})")]
    return []


CHECKS = {"unet": _unet_problems, "unet_ema": _unet_problems, "vae": _vae_problems,
          "text_encoder": _text_problems, "text_encoder_2": _text_problems}


def check_component_config(folder: Path, component: str) -> dict:
    """The parsed ``<folder>/<component>/config.json``; ModelLoadError naming the file and key
    when it cannot be read or a value is implausible."""
    path = Path(folder) / component / "config.json"
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot be read as JSON ({exc}); copy it again from the original model") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: must hold one JSON object of settings")
    problems = CHECKS.get(component, lambda _c: [])(config)
    if problems:
        key, why = problems[0]
        more = f" (and {len(problems) - 1} more: {', '.join(k for k, _ in problems[1:])})" if len(problems) > 1 else ""
        raise ModelLoadError(f"{path}: {key} = {json.dumps(config.get(key))} {why}{more}; this config does not "
                             "describe a Stable Diffusion component: copy it again from the original model")
    return config
