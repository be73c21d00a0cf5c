"""SDXL base 1.0's configurations, shipped as JSON so nothing is downloaded.

``unet`` (UNet2DConditionModel with the "text_time" added embedding), ``text_encoder`` (CLIP
ViT-L, a CLIPTextModel), ``text_encoder_2`` (OpenCLIP bigG, a CLIPTextModelWithProjection),
``vae`` (SD's architecture, scale 0.13025) and ``scheduler`` (Euler, as the published
pipeline ships it) carry stabilityai/stable-diffusion-xl-base-1.0's values, with one
deliberate difference: the text encoders' BOS/EOS/pad ids are the tokenizers' real ones
(49406 / 49407; TE2 pads with "!", id 0) where the published configs carry transformers'
placeholders (0 / 2 / 1), which make transformers pool at the largest id instead of at EOS.

Single files are loaded into these configs (or into configs read from their shapes when
they are smaller, such as the tiny test models: ``engine/families/sdxl/infer.py``), and
``write_config_folder`` lays them out as a weightless diffusers folder, what diffusers'
``from_single_file(..., config=folder)`` needs offline.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Mapping

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")


@cache
def _read(component: str) -> str:
    if component not in COMPONENTS:
        raise KeyError(f"unknown SDXL component {component!r}; expected one of {', '.join(COMPONENTS)}")
    return resources.files(__name__).joinpath(f"{component}.json").read_text("utf-8")


def builtin_config(component: str) -> dict:
    """A fresh copy of one of SDXL base 1.0's configurations (callers may edit it)."""
    return copy.deepcopy(json.loads(_read(component)))


def scheduler_config(*, v_prediction: bool = False, zero_terminal_snr: bool = False) -> dict:
    """SDXL's inference scheduler (Euler over SD's schedule) for this prediction type."""
    cfg = builtin_config("scheduler")
    cfg["prediction_type"] = "v_prediction" if v_prediction else "epsilon"
    if zero_terminal_snr:
        cfg["rescale_betas_zero_snr"] = True
    return cfg


def _public(cfg: Mapping) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def write_config_folder(dest: str | Path, *, configs: Mapping[str, Mapping] | None = None,
                        scheduler: Mapping | None = None, write_tokenizers: bool = True) -> Path:
    """A weightless SDXL diffusers folder: model_index.json, each part's config, the scheduler
    and both tokenizers (CLIP's BPE; the second pads with "!"). ``configs`` override the
    built-in ones by part name (a model whose shapes differ, such as a tiny test model)."""
    from engine.atomic import write_text

    dest = Path(dest)
    given = dict(configs or {})
    part_class = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}
    for part in ("unet", "vae"):
        cfg = _public(given.get(part) or builtin_config(part))
        write_text(dest / part / "config.json", json.dumps(dict(cfg, _class_name=part_class[part]), indent=2,
                                                           sort_keys=True) + "\n")
    text_class = {"text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection"}
    for part, cls in text_class.items():
        cfg = _public(given.get(part) or builtin_config(part))
        cfg.update(architectures=[cls], model_type="clip_text_model")
        write_text(dest / part / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    sched = dict(scheduler) if scheduler else builtin_config("scheduler")
    sched = dict(_public(sched), _class_name=sched.get("_class_name", "EulerDiscreteScheduler"))
    write_text(dest / "scheduler" / "scheduler_config.json", json.dumps(sched, indent=2, sort_keys=True) + "\n")
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", sched["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    write_text(dest / "model_index.json", json.dumps(index, indent=2) + "\n")
    if write_tokenizers:
        from engine.models.tokenizer import build_clip_tokenizer, save_tokenizer

        save_tokenizer(build_clip_tokenizer(v2=False), dest / "tokenizer")
        save_tokenizer(build_clip_tokenizer(v2=True), dest / "tokenizer_2")
    return dest
