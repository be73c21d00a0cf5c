"""Load an SDXL single file (.safetensors, or a .ckpt read with ``weights_only=True``).

kohya's ``sdxl_model_util`` files, Stability AI's and the community's (Pony, Illustrious,
NoobAI-XL) share one key layout (``keys.py``). The parts are built from SDXL base 1.0's
configs, or from configs read off the tensor shapes for other sizes (``infer.py``), on the
meta device, and the converted tensors are assigned into them (strict: a missing or extra
tensor is named). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from engine.families.sdxl import keys as sk
from engine.families.sdxl.detect import detect_zero_terminal_snr, resolve_prediction
from engine.families.sdxl.infer import (
    infer_sdxl_vae_config,
    infer_text_config,
    infer_unet_config,
    te1_shapes,
    te2_shapes,
)
from engine.models.checkpoint_io import read_state_dict
from engine.models.convert import UNET_PREFIX, VAE_PREFIX, ConversionError, adapt_text_keys, strip_text_model_prefix
from engine.models.detect import refuse_empty_or_lora
from engine.models.errors import ModelLoadError
from engine.models.load import (
    empty_model,
    fill_model,
    load_vae,
    recorded_scheduler,
    text_ctor,
    unet_ctor,
    vae_ctor,
)

CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
ADDED_EMBEDDING = UNET_PREFIX + "label_emb.0.0.weight"
# EDM models (Playground v2.5, EDM v-prediction) keep SDXL's layout but another noise process.
EDM_MARKS = ("edm_mean", "edm_std", "edm_vpred.sigma_max")
# SDXL's refiner has OpenCLIP bigG alone, as embedder 0.
REFINER_MARK = "conditioner.embedders.0.model."
REFINER_REASON = ("an SDXL refiner (OpenCLIP bigG alone, with aesthetic-score conditioning), which sdft does not "
                  "train (kohya's sdxl_train.py neither); use an SDXL base model")


def check_sdxl_file(sd: Mapping, path: str, *, separate_vae: bool) -> None:
    """Raise ModelLoadError for anything that is not a whole SDXL text-to-image checkpoint."""
    keys = list(sd)
    refuse_empty_or_lora(keys, path)
    if any(mark in sd for mark in EDM_MARKS):
        raise ModelLoadError(f"{path}: an EDM model (its {next(m for m in EDM_MARKS if m in sd)!r} key: Playground "
                             "v2.5 style), whose noise process sdft does not train; use an SDXL model trained "
                             "with SDXL's DDPM schedule")
    if any(k.startswith(REFINER_MARK) for k in keys):
        raise ModelLoadError(f"{path}: {REFINER_REASON}")
    if CONV_IN not in sd or ADDED_EMBEDDING not in sd:
        missing = CONV_IN if CONV_IN not in sd else ADDED_EMBEDDING
        raise ModelLoadError(f"{path}: no {missing!r}: the file has no SDXL U-Net; model.pretrained_model_name_or_path "
                             "needs a full SDXL checkpoint")
    channels = sd[CONV_IN].shape[1]
    if channels != 4:
        kind = {9: "an inpainting model", 8: "an instruct-pix2pix model"}.get(channels, "not a text-to-image model")
        raise ModelLoadError(f"{path}: {kind} ({channels} U-Net input channels); sdft trains plain "
                             "text-to-image SDXL models (4 input channels)")
    for prefix, what in ((sk.TE1_PREFIX, "first text encoder (CLIP ViT-L)"),
                         (sk.TE2_PREFIX, "second text encoder (OpenCLIP bigG)")):
        if not any(k.startswith(prefix) for k in keys):
            raise ModelLoadError(f"{path}: the checkpoint has no {what} ({prefix}*); it is incomplete: use a "
                                 "full SDXL checkpoint")
    if not separate_vae and not any(k.startswith(VAE_PREFIX) for k in keys):
        raise ModelLoadError(f"{path}: the checkpoint has a U-Net but no VAE ({VAE_PREFIX}*); set model.vae to "
                             "an SDXL VAE file or folder")


def _strip(sd: Mapping, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _configs(sd: Mapping, metadata: Mapping, path: Path, *, separate_vae: bool) -> dict:
    """Each part's config, from the shapes (and the metadata sdft wrote)."""
    te1 = {strip_text_model_prefix(k): v for k, v in _strip(sd, sk.TE1_PREFIX).items()}
    try:
        te2 = infer_text_config(te2_shapes(_strip(sd, sk.TE2_PREFIX)), second=True, metadata=metadata, path=path)
        return dict(
            unet=infer_unet_config(_strip(sd, UNET_PREFIX), te2_projection=te2["projection_dim"],
                                   metadata=metadata, path=path),
            text_encoder=infer_text_config(te1_shapes(te1), second=False, metadata=metadata, path=path),
            text_encoder_2=te2,
            vae=None if separate_vae else infer_sdxl_vae_config(_strip(sd, VAE_PREFIX), metadata=metadata, path=path),
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelLoadError(f"{path}: the SDXL checkpoint is incomplete or not SDXL-shaped (missing {exc}); "
                             "use a full SDXL checkpoint") from exc


def te2_state_for(model_keys, state: Mapping) -> dict:
    """TE2's converted tensors in the model's own names (``text_model.`` or not, as
    transformers builds it; ``text_projection`` stays at the top)."""
    body = {k: v for k, v in state.items() if not k.startswith("text_projection.")}
    out = adapt_text_keys(body, model_keys)
    out.update({k: v for k, v in state.items() if k.startswith("text_projection.")})
    return out


def load_single_file(path: Path, *, v_parameterization="auto", vae=None, allow_unsafe_pickle: bool = False,
                     use_ema: bool = False, report: list[str]) -> dict:
    """The parts of an SDXL single file, fp32, and what its marks and metadata say."""
    sd, metadata, info = read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle, report=report)
    check_sdxl_file(sd, str(path), separate_vae=vae is not None)
    source_dtype = str(sd[CONV_IN].dtype).replace("torch.", "")
    vd = resolve_prediction(v_parameterization, tensors=sd, metadata=metadata)
    zd = detect_zero_terminal_snr(tensors=sd, metadata=metadata)
    if vae is not None:
        sd = {k: v for k, v in sd.items() if not k.startswith(VAE_PREFIX)}
    configs = _configs(sd, metadata, path, separate_vae=vae is not None)
    ctors = dict(unet=unet_ctor(configs["unet"]), text_encoder=text_ctor(configs["text_encoder"]),
                 text_encoder_2=text_ctor(configs["text_encoder_2"], with_projection=True))
    if vae is None:
        ctors["vae"] = vae_ctor(configs["vae"])
    # Each part is built once, empty (on the meta device): its tensor names and shapes steer the
    # conversion, then the converted tensors are assigned into that same empty model.
    empty = {part: empty_model(ctor) for part, ctor in ctors.items()}
    shapes = {part: model.state_dict() for part, model in empty.items()}
    try:
        states = sk.single_file_to_diffusers(sd, unet_keys=shapes["unet"].keys(), vae_state=shapes.get("vae", {}),
                                             te2_keys=shapes["text_encoder_2"].keys())
    except ConversionError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    del sd
    where = str(path)
    named = {"text_encoder": shapes["text_encoder"].keys(), "text_encoder_2": shapes["text_encoder_2"].keys()}
    what = {"unet": "U-Net", "text_encoder": "text encoder", "text_encoder_2": "second text encoder", "vae": "VAE"}
    parts = {}
    # One part at a time, its stored tensors let go once it is built: at full size the peak is
    # the fp16 file plus the fp32 U-Net, not the file plus every fp32 part.
    for name in ctors:
        state = getattr(states, name)
        setattr(states, name, {})
        if name == "text_encoder":
            state = adapt_text_keys(state, named[name])
        elif name == "text_encoder_2":
            state = te2_state_for(named[name], state)
        parts[name] = fill_model(empty.pop(name), state, what[name], where)
        del state
    if vae is not None:
        from engine.families.sdxl.load import sdxl_vae

        parts["vae"] = sdxl_vae(load_vae(vae, allow_unsafe_pickle=allow_unsafe_pickle, report=report), report)
        report.append(f"VAE: from {vae} (model.vae)")
    width = configs["unet"]["cross_attention_dim"]
    report.append(f"model: SDXL, detected from the keys ({sk.TE2_PREFIX}*, {ADDED_EMBEDDING})"
                  + ("" if width == 2048 else f", U-Net context width {width}: a small test model, not full size"))
    if use_ema:
        report.append("model.use_ema_weights is set but SDXL single files carry no EMA weights: using the U-Net")
    report += [vd.line, zd.line]
    if "global_step" in info:
        report.append(f"checkpoint global_step: {info['global_step']}")
    return dict(parts, v_parameterization=vd.value, zero_terminal_snr=zd.value, metadata=dict(metadata),
                has_ema=False, source_dtype=source_dtype, scheduler_config=recorded_scheduler(metadata),
                logit_scale=states.logit_scale)
