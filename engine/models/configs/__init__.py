"""Built-in model configurations, shipped as JSON so nothing is downloaded.

Three families: ``sd1`` (SD 1.x), ``sd2-base`` (SD 2.x 512 px, epsilon) and ``sd2-768-v``
(SD 2.x 768 px, v-prediction). Each has ``unet``, ``vae``, ``text_encoder`` (a transformers
CLIPTextConfig) and ``scheduler`` (DDIM, as the published pipelines ship it).

``write_config_folder`` lays these out as a diffusers folder without weights: that is what
diffusers' ``from_single_file(..., config=folder)`` needs offline, and the skeleton our
diffusers-format saver fills with weights.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

FAMILIES = ("sd1", "sd2-base", "sd2-768-v")
COMPONENTS = ("unet", "vae", "text_encoder", "scheduler")


def family_for(v2: bool, v_parameterization: bool) -> str:
    """The built-in family closest to a model: SD2 + v-prediction means the 768-v family."""
    if not v2:
        return "sd1"
    return "sd2-768-v" if v_parameterization else "sd2-base"


@lru_cache(maxsize=None)
def _read(family: str, component: str) -> str:
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    if component not in COMPONENTS:
        raise KeyError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    return resources.files(__name__).joinpath(family).joinpath(f"{component}.json").read_text("utf-8")


def builtin_config(family: str, component: str) -> dict:
    """A fresh copy of one built-in configuration (callers may edit it)."""
    return copy.deepcopy(json.loads(_read(family, component)))


def scheduler_config(v2: bool, v_parameterization: bool, **overrides) -> dict:
    """SD's noise schedule with the given prediction type."""
    cfg = builtin_config(family_for(v2, False), "scheduler")
    cfg["prediction_type"] = "v_prediction" if v_parameterization else "epsilon"
    cfg.update(overrides)
    return cfg


def _strip_private(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}


def write_config_folder(
    dest: str | Path,
    *,
    v2: bool,
    v_parameterization: bool,
    unet: dict | None = None,
    vae: dict | None = None,
    text_encoder: dict | None = None,
    write_tokenizer: bool = True,
    scheduler_overrides: dict | None = None,
    scheduler: dict | None = None,
    tokenizer=None,
) -> Path:
    """Write a weightless diffusers pipeline folder (configs, tokenizer, scheduler).

    ``unet``/``vae``/``text_encoder`` override the built-in configurations (for models whose
    shapes differ from real SD, such as the tiny test models). ``scheduler`` is a complete
    scheduler config with its ``_class_name`` (a source model's own), else SD's DDIM;
    ``tokenizer`` a transformers tokenizer to write, else CLIP's built-in one.
    """
    from engine.atomic import write_text

    dest = Path(dest)
    family = family_for(v2, v_parameterization)
    configs = {
        "unet": unet if unet is not None else builtin_config(family, "unet"),
        "vae": vae if vae is not None else builtin_config(family, "vae"),
        "text_encoder": text_encoder if text_encoder is not None else builtin_config(family, "text_encoder"),
    }
    configs["unet"] = dict(_strip_private(configs["unet"]), _class_name="UNet2DConditionModel")
    configs["vae"] = dict(_strip_private(configs["vae"]), _class_name="AutoencoderKL")
    te = {k: v for k, v in configs["text_encoder"].items() if not k.startswith("_")}
    te.setdefault("architectures", ["CLIPTextModel"])
    te.setdefault("model_type", "clip_text_model")
    configs["text_encoder"] = te
    names = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json"}
    for part, cfg in configs.items():
        write_text(dest / part / names[part], json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if scheduler is None:
        scheduler = scheduler_config(v2, v_parameterization, **dict(scheduler_overrides or {}))
    else:
        scheduler = dict(_strip_private(scheduler), **dict(scheduler_overrides or {}))
    write_text(dest / "scheduler" / "scheduler_config.json", json.dumps(scheduler, indent=2, sort_keys=True) + "\n")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler.get("_class_name", "DDIMScheduler")],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    write_text(dest / "model_index.json", json.dumps(index, indent=2) + "\n")
    if write_tokenizer:
        from engine.models.tokenizer import build_clip_tokenizer, save_tokenizer

        save_tokenizer(tokenizer if tokenizer is not None else build_clip_tokenizer(v2=v2), dest / "tokenizer")
    return dest
