"""Save an SDXL model: one .safetensors / .ckpt file in kohya's layout, or a diffusers folder.

A single file holds exactly the tensors kohya's ``sdxl_model_util.save_stable_diffusion_checkpoint``
writes (``keys.diffusers_to_single_file``), so it loads in kohya's scripts, diffusers'
``StableDiffusionXLPipeline.from_single_file``, ComfyUI and A1111; a v-prediction model adds
the empty ``v_pred`` (and, with zero terminal SNR, ``ztsnr``) tensors NoobAI-XL's files carry,
without which ComfyUI and reForge sample it as epsilon (docs/sdxl.md, "v-prediction"). The
metadata is SD's (``engine/models/save.py``: modelspec as kohya writes it, sdft's architecture
details) with SDXL's architecture, 1024x1024 and the second text encoder's config. A folder
holds every part in one dtype and loads with ``StableDiffusionXLPipeline.from_pretrained``.
The models passed in are never modified; writes are atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from engine.atomic import atomic_dir, atomic_path
from engine.families.sdxl import keys as sk
from engine.families.sdxl.configs import scheduler_config, write_config_folder
from engine.families.sdxl.detect import V_PRED_MARK, ZTSNR_MARK, ZTSNR_META
from engine.families.sdxl.infer import TEXT_2_META
from engine.models.convert import strip_text_model_prefix
from engine.models.errors import ModelLoadError
from engine.models.infer import SCHEDULER_META
from engine.models.save import (
    DIFFUSERS_LOAD_DTYPE,
    FORMATS,
    build_metadata,
    cast_state,
    chmod_tree,
    config_dict,
    inference_scheduler,
    precision_dtype,
    state_of,
)

ARCHITECTURE = "stable-diffusion-xl-v1-base"   # kohya's sai_model_spec name for SDXL
RESOLUTION = "1024x1024"
TRAINABLE = ("unet", "text_encoder", "text_encoder_2")


def _parts(model, trained: Mapping | None) -> dict:
    unknown = sorted(set(trained or {}) - set(TRAINABLE))
    if unknown:
        raise ValueError(f"an SDXL save got trained parts {unknown}; SDXL trains {', '.join(TRAINABLE)}")
    parts = {"unet": model.unet, "text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2,
             "vae": model.vae}
    parts.update(trained or {})
    return parts


def _scheduler(model, *, v_prediction: bool, zero_terminal_snr: bool) -> dict:
    """The scheduler the saved model ships: its source's own class and settings (kept across
    formats), with the prediction type and zero terminal SNR it was trained for."""
    overrides = {"rescale_betas_zero_snr": True} if zero_terminal_snr else None
    kept = inference_scheduler(getattr(model, "scheduler_config", None), v2=False, v_parameterization=v_prediction,
                               overrides=overrides)
    if kept is None:
        return scheduler_config(v_prediction=v_prediction, zero_terminal_snr=zero_terminal_snr)
    return dict(kept, **(overrides or {}))


def _single_file_state(parts: dict, model, *, v_prediction: bool, zero_terminal_snr: bool, dtype) -> dict:
    import torch

    states = {name: state_of(module) for name, module in parts.items()}
    sd = sk.diffusers_to_single_file(states["unet"], states["vae"], states["text_encoder"], states["text_encoder_2"],
                                     logit_scale=getattr(model, "logit_scale", None))
    sd = cast_state(sd, dtype)
    if v_prediction:   # the marks ComfyUI and reForge read (detect.py)
        sd[V_PRED_MARK] = torch.tensor([])
        if zero_terminal_snr:
            sd[ZTSNR_MARK] = torch.tensor([])
    return sd


def _metadata(path: Path, parts: dict, *, v_prediction: bool, zero_terminal_snr: bool, scheduler: dict,
              epoch: int, global_step: int, extra: Mapping[str, str] | None) -> dict[str, str]:
    md = build_metadata(v2=False, v_parameterization=v_prediction, title=path.stem, unet=parts["unet"],
                        vae=parts["vae"], text_encoder=parts["text_encoder"], epoch=epoch, global_step=global_step,
                        architecture=ARCHITECTURE, resolution=RESOLUTION)
    md[TEXT_2_META] = json.dumps(config_dict(parts["text_encoder_2"]), sort_keys=True)
    md[ZTSNR_META] = str(bool(zero_terminal_snr)).lower()
    md[SCHEDULER_META] = json.dumps(scheduler, sort_keys=True)
    md.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items() if v is not None})
    return md


def _text_state(module) -> dict:
    """A text encoder's tensors with the ``text_model.`` level every transformers version reads
    (TE2's ``text_projection`` stays at the top)."""
    out = {}
    for k, v in state_of(module).items():
        if k.endswith("position_ids"):
            continue
        bare = strip_text_model_prefix(k)
        out[bare if bare.startswith("text_projection.") else "text_model." + bare] = v
    return out


def _save_folder(path: Path, parts: dict, model, *, scheduler: dict, dtype, safe: bool) -> None:
    import torch
    from safetensors.torch import save_file

    from engine.models.tokenizer import save_tokenizer

    configs = {name: config_dict(parts[name]) for name in ("unet", "vae")}
    for name in ("text_encoder", "text_encoder_2"):
        configs[name] = dict(config_dict(parts[name]), dtype=DIFFUSERS_LOAD_DTYPE, torch_dtype=DIFFUSERS_LOAD_DTYPE)
    with atomic_dir(path) as tmp:
        write_config_folder(tmp, configs=configs, scheduler=scheduler, write_tokenizers=False)
        for name, tokenizer in (("tokenizer", model.tokenizer), ("tokenizer_2", model.tokenizer_2)):
            save_tokenizer(tokenizer, tmp / name)
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            text = name.startswith("text")
            sd = cast_state(_text_state(parts[name]) if text else state_of(parts[name]), dtype)
            stem = ("model" if safe else "pytorch_model") if text else "diffusion_pytorch_model"
            if safe:
                save_file(sd, str(tmp / name / f"{stem}.safetensors"), metadata={"format": "pt"})
            else:
                torch.save(sd, tmp / name / f"{stem}.bin")
        chmod_tree(tmp)


def save_sdxl(path, model, *, v_prediction: bool, fmt: str, precision: str, trained: Mapping | None = None,
              metadata: Mapping[str, str] | None = None, epoch: int = 0, global_step: int = 0,
              scheduler_overrides: Mapping | None = None) -> Path:
    """Write ``model`` (an ``SdxlModel``, with the ``trained`` parts by role) in ``fmt``.

    Zero terminal SNR: ``scheduler_overrides["rescale_betas_zero_snr"]`` when given (the
    run's ``train.zero_terminal_snr``), else what the model was loaded with.
    """
    import torch

    path = Path(path)
    if fmt not in FORMATS:
        raise ModelLoadError(f"save.format = {fmt!r} is not a format; use one of {', '.join(FORMATS)}")
    dtype = precision_dtype(precision)
    parts = _parts(model, trained)
    overrides = dict(scheduler_overrides or {})
    zero_snr = bool(overrides.get("rescale_betas_zero_snr", getattr(model, "zero_terminal_snr", False)))
    scheduler = _scheduler(model, v_prediction=v_prediction, zero_terminal_snr=zero_snr)
    if fmt.startswith("diffusers"):
        _save_folder(path, parts, model, scheduler=scheduler, dtype=dtype, safe=fmt == "diffusers_safetensors")
        return path
    sd = _single_file_state(parts, model, v_prediction=v_prediction, zero_terminal_snr=zero_snr, dtype=dtype)
    md = _metadata(path, parts, v_prediction=v_prediction, zero_terminal_snr=zero_snr, scheduler=scheduler,
                   epoch=epoch, global_step=global_step, extra=metadata)
    with atomic_path(path) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata=md)
        else:   # kohya's .ckpt layout, with sdft's metadata beside it as SD's saver writes it
            torch.save({"state_dict": sd, "epoch": int(epoch), "global_step": int(global_step),
                        "sdft_metadata": md}, tmp)
    return path
