"""Save a model: one file in the original SD layout (.safetensors / .ckpt) or a diffusers folder.

The models passed in are never modified (casting works on copies of the
tensors). Writes are atomic (a crash leaves the old file or none) and files get mode 0644.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from engine.atomic import atomic_dir, atomic_path
from engine.models import convert as cv
from engine.models.configs import family_for, write_config_folder
from engine.models.errors import ModelLoadError
from engine.models.infer import SCHEDULER_META, TEXT_META, UNET_META, VAE_META

FORMATS = ("safetensors", "ckpt", "diffusers", "diffusers_safetensors")
PRECISIONS = {"fp16": "float16", "bf16": "bfloat16", "float": "float32", "fp32": "float32",
              "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
ARCHITECTURE = {"sd1": "stable-diffusion-v1", "sd2-base": "stable-diffusion-v2-512",
                "sd2-768-v": "stable-diffusion-v2-768-v"}
IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"


def precision_dtype(precision: str):
    import torch

    try:
        return getattr(torch, PRECISIONS[precision])
    except KeyError:
        raise ModelLoadError(f"save.precision = {precision!r} is not a precision; use fp16, bf16 or float") from None


def cast_state(sd: Mapping, dtype) -> dict:
    """Detached CPU copies; floating tensors cast to ``dtype``, others (int ids) kept."""
    import torch

    out = {}
    for k, v in sd.items():
        v = v.detach().to("cpu")
        if torch.is_floating_point(v):
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def state_of(model) -> dict:
    """The model's state dict with wrapper prefixes removed (torch.compile, DDP)."""
    out = {}
    for k, v in model.state_dict().items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def config_dict(model) -> dict:
    cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("dtype", "torch_dtype", "transformers_version")}


def build_metadata(*, v2: bool, v_parameterization: bool, title: str, unet=None, vae=None, text_encoder=None,
                   epoch: int = 0, global_step: int = 0, extra: Mapping[str, str] | None = None,
                   architecture: str | None = None, resolution: str | None = None) -> dict[str, str]:
    """modelspec.* (as kohya writes it) and sdft.* metadata; ``extra`` (the trainer's) wins.
    ``architecture`` and ``resolution`` name another family's (SDXL's) instead of SD's."""
    from engine import __version__

    family = family_for(v2, v_parameterization)
    res = resolution or ("768x768" if family == "sd2-768-v" else "512x512")
    md = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": architecture or ARCHITECTURE[family],
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": title,
        "modelspec.resolution": res,
        "modelspec.date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if v_parameterization else "epsilon",
        "modelspec.implementation_version": f"sdft/{__version__}",
        "sdft.version": __version__,
        "sdft.v2": str(bool(v2)).lower(),
        "sdft.v_parameterization": str(bool(v_parameterization)).lower(),
        "sdft.epoch": str(int(epoch)),
        "sdft.global_step": str(int(global_step)),
    }
    # Architecture details that shapes cannot tell (head counts, norm groups): read back on load.
    for key, model in ((UNET_META, unet), (VAE_META, vae), (TEXT_META, text_encoder)):
        if model is not None:
            md[key] = json.dumps(config_dict(model), sort_keys=True)
    for k, v in (extra or {}).items():
        if v is None:
            continue
        md[str(k)] = v if isinstance(v, str) else (json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    return md


def chmod_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            os.chmod(Path(dirpath) / name, 0o644)


# The dtype a saved diffusers folder loads in when nobody asks for one. diffusers builds its
# parts in float32 whatever the files hold, while transformers >= 5 follows the text encoder
# config's ``dtype`` (else the weights'): float16 there would meet a float32 U-Net and fail.
DIFFUSERS_LOAD_DTYPE = "float32"


def inference_scheduler(source: Mapping | None, *, v2: bool, v_parameterization: bool,
                        overrides: Mapping | None = None) -> dict | None:
    """The scheduler config a saved model ships: the source model's own class and settings,
    with the prediction type it was trained for; None means SD's DDIM.

    When ``overrides`` need a setting the source's class does not take (zero terminal SNR
    on PNDM), DDIM is used instead, because that class would silently ignore it.
    """
    if not source or "_class_name" not in source:
        return None
    import inspect

    import diffusers

    cls = getattr(diffusers, str(source["_class_name"]), None)
    if cls is not None and overrides:
        accepted = inspect.signature(cls.__init__).parameters
        if any(k not in accepted for k in overrides):
            return None
    cfg = {k: v for k, v in source.items() if not k.startswith("_") or k == "_class_name"}
    cfg["prediction_type"] = "v_prediction" if v_parameterization else "epsilon"
    return cfg


def _save_diffusers(path: Path, *, unet, text_encoder, vae, v2, v_parameterization, dtype, safe: bool,
                    scheduler_overrides: Mapping | None = None, scheduler: Mapping | None = None,
                    tokenizer=None) -> None:
    import torch
    from safetensors.torch import save_file

    te_config = dict(config_dict(text_encoder), dtype=DIFFUSERS_LOAD_DTYPE, torch_dtype=DIFFUSERS_LOAD_DTYPE)
    with atomic_dir(path) as tmp:
        write_config_folder(tmp, v2=v2, v_parameterization=v_parameterization, unet=config_dict(unet),
                            vae=config_dict(vae), text_encoder=te_config,
                            scheduler_overrides=scheduler_overrides, scheduler=dict(scheduler) if scheduler else None,
                            tokenizer=tokenizer)
        # Text keys with the ``text_model.`` level: what every transformers version reads.
        text_sd = {"text_model." + cv.strip_text_model_prefix(k): v for k, v in state_of(text_encoder).items()
                   if not k.endswith("position_ids")}
        items = (
            ("unet", state_of(unet), "diffusion_pytorch_model"),
            ("vae", state_of(vae), "diffusion_pytorch_model"),
            ("text_encoder", text_sd, "model" if safe else "pytorch_model"),
        )
        for sub, sd, stem in items:
            sd = cast_state(sd, dtype)
            if safe:
                save_file(sd, str(tmp / sub / f"{stem}.safetensors"), metadata={"format": "pt"})
            else:
                torch.save(sd, tmp / sub / f"{stem}.bin")
        chmod_tree(tmp)


def save_model(path, *, unet, text_encoder, vae, v2: bool, v_parameterization: bool, fmt: str = "safetensors",
               precision: str = "fp16", metadata: dict[str, str] | None = None, epoch: int = 0,
               global_step: int = 0, text_extras: Mapping | None = None,
               scheduler_overrides: Mapping | None = None, scheduler_config: Mapping | None = None,
               tokenizer=None) -> Path:
    """Write the model; returns the path written.

    A diffusers folder holds every part in one dtype (``precision``) and loads with
    ``StableDiffusionPipeline.from_pretrained(folder)`` alone, on new and old transformers.
    ``scheduler_config`` is the source model's scheduler (kept, class included; a single file
    records it in its metadata), ``tokenizer`` its tokenizer (else CLIP's built-in one).
    ``scheduler_overrides`` go into the scheduler config (e.g. ``rescale_betas_zero_snr`` for
    a model trained with zero terminal SNR).
    """
    import torch

    path = Path(path)
    if fmt not in FORMATS:
        raise ModelLoadError(f"save.format = {fmt!r} is not a format; use one of {', '.join(FORMATS)}")
    dtype = precision_dtype(precision)
    scheduler = inference_scheduler(scheduler_config, v2=v2, v_parameterization=v_parameterization,
                                    overrides=scheduler_overrides)
    if fmt.startswith("diffusers"):
        _save_diffusers(path, unet=unet, text_encoder=text_encoder, vae=vae, v2=v2,
                        v_parameterization=v_parameterization, dtype=dtype, safe=fmt == "diffusers_safetensors",
                        scheduler_overrides=scheduler_overrides, scheduler=scheduler, tokenizer=tokenizer)
        return path
    sd = cv.diffusers_to_original(state_of(unet), state_of(vae), state_of(text_encoder), v2=v2,
                                  text_extras=text_extras)
    sd = cast_state(sd, dtype)
    md = build_metadata(v2=v2, v_parameterization=v_parameterization, title=path.stem, unet=unet, vae=vae,
                        text_encoder=text_encoder, epoch=epoch, global_step=global_step, extra=metadata)
    if scheduler is not None:
        md[SCHEDULER_META] = json.dumps(scheduler, sort_keys=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata=md)
    else:
        with atomic_path(path) as tmp:
            torch.save({"state_dict": sd, "epoch": int(epoch), "global_step": int(global_step),
                        "sdft_metadata": md}, tmp)
    return path
