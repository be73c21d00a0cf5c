"""Load an SDXL model: a diffusers folder, a hub id (online), or a single .safetensors/.ckpt.

Everything comes back in fp32 on the CPU as an ``SdxlModel``: SD's ``LoadedModel`` with the
second text encoder and tokenizer added and ``family = "sdxl"``. Both tokenizers are CLIP's
BPE packaged with sdft, the second padding with "!", as kohya loads them whatever the model
folder holds (docs/sdxl.md, "Token layouts"); ``model.tokenizer_dir`` replaces both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.families.sdxl.conditioning import VAE_SCALE_FACTOR
from engine.families.sdxl.detect import detect_zero_terminal_snr, resolve_prediction
from engine.models.errors import ModelLoadError
from engine.models.load import (
    SINGLE_FILE_EXT,
    LoadedModel,
    download_hub,
    is_hub_id,
    load_folder_parts,
    stored_dtype,
    training_scheduler,
    unet_subfolder,
)

# The parts a diffusers folder (and a hub download) of SDXL holds.
FOLDER_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


@dataclass
class SdxlModel(LoadedModel):
    """An SDXL model: ``text_encoder`` is CLIP ViT-L (a CLIPTextModel), ``text_encoder_2``
    OpenCLIP bigG (a CLIPTextModelWithProjection); ``tokenizer`` pads with <|endoftext|>,
    ``tokenizer_2`` with "!"."""
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    zero_terminal_snr: bool = False   # the model marks a zero-terminal-SNR schedule (detect.py)
    logit_scale: Any = None           # OpenCLIP's, from a single file: written back on save


def _refuse_v2(v2) -> None:
    if v2 is True:
        raise ModelLoadError("model.v2 = true names an SD 2.x model, but this is SDXL; remove the setting")


def sdxl_tokenizers(tokenizer_dir=None) -> tuple[Any, Any]:
    """TE1's and TE2's tokenizers: CLIP's packaged BPE (or ``tokenizer_dir``'s), the second
    padding with "!" (kohya: ``tokenizer2.pad_token_id = 0``)."""
    from engine.models.tokenizer import load_tokenizer

    if tokenizer_dir is None:   # the built-in vocabulary, built once per process as SD's (tokenizer.py)
        return load_tokenizer(None, v2=False), load_tokenizer(None, v2=True)
    import copy

    first = load_tokenizer(tokenizer_dir, v2=False)
    second = copy.deepcopy(first)   # load_tokenizer shares a folder's tokenizer; this one is changed
    second.pad_token = "!"
    return first, second


def sdxl_vae(vae_model, report: list[str]):
    """SDXL's latents are scaled by 0.13025 whatever a separate VAE's config says (an SD VAE
    file is read with SD's 0.18215): the saved model must carry SDXL's."""
    if vae_model.config.scaling_factor != VAE_SCALE_FACTOR:
        report.append(f"VAE: scaling_factor {vae_model.config.scaling_factor} replaced by SDXL's {VAE_SCALE_FACTOR}")
        vae_model.register_to_config(scaling_factor=VAE_SCALE_FACTOR)
    return vae_model


# --------------------------------------------------------------------------- diffusers folder


def _json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _check_folder(folder: Path, vae) -> dict:
    from engine.families.sdxl.single_file import REFINER_REASON
    from engine.models.config_check import check_component_config

    if _json_object(folder / "model_index.json").get("requires_aesthetics_score") is True:
        raise ModelLoadError(f"{folder}: {REFINER_REASON}")
    needed = ["unet", "text_encoder", "text_encoder_2"] + ([] if vae is not None else ["vae"])
    missing = [p for p in needed if not (folder / p / "config.json").is_file()]
    if missing:
        hint = " (or set model.vae)" if "vae" in missing else ""
        raise ModelLoadError(
            f"{folder}: the SDXL diffusers folder lacks {', '.join(p + '/' for p in missing)}{hint}. "
            "An SDXL base model needs unet/, vae/, text_encoder/ and text_encoder_2/ with config.json and "
            "weights; copy the missing parts from the original model")
    ucfg = check_component_config(folder, "unet")
    for part in needed[1:]:
        check_component_config(folder, part)
    if ucfg.get("addition_embed_type") != "text_time":
        raise ModelLoadError(f"{folder / 'unet' / 'config.json'}: addition_embed_type = "
                             f"{json.dumps(ucfg.get('addition_embed_type'))}, but an SDXL U-Net takes the "
                             "\"text_time\" embedding; this is not an SDXL base model")
    channels = ucfg.get("in_channels", 4)
    if channels != 4:
        kind = {9: "an inpainting model", 8: "an instruct-pix2pix model"}.get(channels, "not a text-to-image model")
        raise ModelLoadError(f"{folder}: {kind} ({channels} U-Net input channels); sdft trains plain "
                             "text-to-image SDXL models (4 input channels)")
    return ucfg


def load_folder(folder: Path, *, v_parameterization="auto", vae=None, allow_unsafe_pickle: bool = False,
                use_ema: bool = False, report: list[str]) -> dict:
    """The parts of an SDXL diffusers folder, fp32, and what its scheduler config says."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _check_folder(folder, vae)
    sub = unet_subfolder(folder, use_ema, report)
    unet, (te1, te2), vae_model = load_folder_parts(
        folder, unet_sub=sub,
        text_parts={"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection},
        vae=vae, allow_unsafe_pickle=allow_unsafe_pickle, report=report)
    report.append(f"model: SDXL, detected from {folder.name}/unet/config.json (addition_embed_type = \"text_time\")"
                  + ("" if unet.config.cross_attention_dim == 2048 else
                     f", U-Net context width {unet.config.cross_attention_dim}: a small test model, not full size"))
    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text("utf-8")) if sched_path.is_file() else None
    sched = sched if isinstance(sched, dict) else None
    vd = resolve_prediction(v_parameterization, scheduler_config=sched)
    zd = detect_zero_terminal_snr(scheduler_config=sched)
    report += [vd.line, zd.line]
    return dict(unet=unet.eval(), vae=sdxl_vae(vae_model.eval(), report), text_encoder=te1.eval(),
                text_encoder_2=te2.eval(), v_parameterization=vd.value, zero_terminal_snr=zd.value, metadata={},
                has_ema=sub == "unet_ema", source_dtype=stored_dtype(folder / sub),
                scheduler_config=sched if sched and "_class_name" in sched else None, logit_scale=None)


# --------------------------------------------------------------------------- entry point


def load_sdxl(source: str, *, v2="auto", v_parameterization="auto", vae: str | None = None, tokenizer_dir=None,
              allow_unsafe_pickle: bool = False, use_ema: bool = False, hash_file: bool = True) -> SdxlModel:
    """An SDXL model (fp32, CPU) from a diffusers folder, a single file or a hub id; the options
    are ``engine.models.load.load_model``'s (``v2`` may only be auto or false). Raises
    ModelLoadError naming the file and the fix."""
    from engine.hashcache import sha256_of

    _refuse_v2(v2)
    report: list[str] = []
    path = Path(os.path.expanduser(str(source)))
    options = dict(v_parameterization=v_parameterization, vae=vae, allow_unsafe_pickle=allow_unsafe_pickle,
                   use_ema=use_ema, report=report)
    sha = None
    if path.is_dir():
        parts = load_folder(path, **options)
    elif path.is_file():
        from engine.families.sdxl.single_file import load_single_file

        parts = load_single_file(path, **options)
        sha = sha256_of(path) if hash_file else None
    elif is_hub_id(str(source)) and not str(source).lower().endswith(SINGLE_FILE_EXT):
        folder = download_hub(str(source), FOLDER_PARTS)
        report.append(f"downloaded {source} from the Hugging Face hub")
        parts = load_folder(folder, **options)
    else:
        raise ModelLoadError(f"{source}: no such file or folder (model.pretrained_model_name_or_path)")
    tokenizer, tokenizer_2 = sdxl_tokenizers(tokenizer_dir)
    base_name = path.stem if path.is_file() else Path(str(source).rstrip("/")).name
    return SdxlModel(
        unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=tokenizer,
        noise_scheduler=training_scheduler(False, parts["v_parameterization"]),
        v2=False, v_parameterization=parts["v_parameterization"], report=report, source=str(source),
        base_name=base_name, base_sha256=sha, metadata=parts["metadata"], has_ema=parts["has_ema"],
        source_dtype=parts["source_dtype"], scheduler_config=parts["scheduler_config"], family="sdxl",
        text_encoder_2=parts["text_encoder_2"], tokenizer_2=tokenizer_2,
        zero_terminal_snr=parts["zero_terminal_snr"], logit_scale=parts["logit_scale"],
    )
