"""Load a base model from a diffusers folder, a single .safetensors/.ckpt, or a hub id.

Everything comes back in fp32 on the CPU, with a report of what was detected and from
where. Single files load with no network: the models are built from configs
inferred from the tensor shapes (real SD files match the built-in configs exactly).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from engine.hashcache import sha256_of
from engine.models import convert as cv
from engine.models.checkpoint_io import read_state_dict
from engine.models.configs import scheduler_config
from engine.models.detect import (
    a1111_v_test,
    check_supported,
    check_supported_folder,
    detect_v2_folder,
    detect_v2_single_file,
    resolve_v2,
    resolve_v_parameterization,
)
from engine.models.errors import ModelLoadError
from engine.models.infer import SCHEDULER_META, infer_text_config, infer_unet_config, infer_vae_config, sd2_text_layers
from engine.models.infer import UNET_META as UNET_CONFIG_META

__all__ = ["LoadedModel", "ModelLoadError", "all_weights_loaded", "download_hub", "is_hub_id", "load_model",
           "load_vae", "stored_dtype", "training_scheduler"]

SINGLE_FILE_EXT = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# DDIM-only keys that DDPMScheduler does not take.
_DDIM_ONLY = ("set_alpha_to_one", "_class_name")


@dataclass
class LoadedModel:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    v2: bool
    v_parameterization: bool
    report: list[str]
    source: str
    base_name: str
    base_sha256: str | None
    metadata: dict[str, str] = field(default_factory=dict)   # the source file's metadata
    text_extras: dict = field(default_factory=dict)          # unused OpenCLIP tensors to copy on save
    has_ema: bool = False
    source_dtype: str | None = None   # "float32" | "float16" | "bfloat16": the U-Net's stored dtype
    scheduler_config: dict | None = None  # the source's inference scheduler (class included), kept on save
    family: str = ""   # its family's id in engine/registry/families.py; empty: from v2

    def __post_init__(self) -> None:
        # The one place the SD1/SD2 flag names a family; everything else asks the family
        # (engine.families.family_of).
        if not self.family:
            self.family = "sd2" if self.v2 else "sd1"


def training_scheduler(v2: bool, v_parameterization: bool):
    """DDPMScheduler with SD's training schedule and the right prediction type."""
    from diffusers import DDPMScheduler

    cfg = {k: v for k, v in scheduler_config(v2, v_parameterization).items() if k not in _DDIM_ONLY}
    return DDPMScheduler(**cfg)


def _fp32(sd: Mapping) -> dict:
    import torch

    return {k: (v.float() if torch.is_floating_point(v) else v) for k, v in sd.items()}


def empty_model(ctor):
    """``ctor()``'s model with its parameters on the meta device and without the random
    initialisation the file's weights replace (initialising meta tensors computes nothing but
    costs most of a build; the generators are untouched either way). Its ``state_dict()`` gives
    the names and shapes a conversion needs; :func:`fill_model` then assigns the weights into
    this same module, so each part is built once per load."""
    from accelerate import init_empty_weights
    from transformers.initialization import no_init_weights

    with init_empty_weights(), no_init_weights():
        return ctor()


def fill_model(model, state: Mapping, what: str, path: str):
    """Assign ``state`` into an :func:`empty_model` (strict: every parameter comes from it)."""
    try:
        model.load_state_dict(_fp32(state), strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: the {what} weights do not fit the {what} architecture "
                             f"read from the file: {str(exc)[:400]}") from exc
    return model.eval()


def unet_ctor(cfg: dict):
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return lambda: UNet2DConditionModel(**cfg)


def vae_ctor(cfg: dict):
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return lambda: AutoencoderKL(**cfg)


def text_ctor(cfg: dict, *, with_projection: bool = False):
    """A CLIP text model's constructor; ``with_projection``: CLIPTextModelWithProjection (SDXL's TE2)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "model_type")}
    return lambda: cls(CLIPTextConfig(**cfg))


# --------------------------------------------------------------------------- VAE


def _vae_from_original_part(part: Mapping, *, v2: bool, v_param: bool, metadata, path: str):
    try:
        cfg = infer_vae_config(part, v2=v2, v_parameterization=v_param, metadata=metadata)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{path}: the VAE is incomplete (missing {exc}); use a full VAE") from exc
    model = empty_model(vae_ctor(cfg))
    try:
        state = cv.vae_from_original(part, model.state_dict())
    except cv.ConversionError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    return fill_model(model, state, "VAE", path)


def load_vae(source: str | Path, *, v2: bool = False, v_parameterization: bool = False,
             allow_unsafe_pickle: bool = False, report: list[str] | None = None):
    """A separate VAE (``model.vae``): diffusers folder, or a file in original or diffusers layout."""
    import torch
    from diffusers import AutoencoderKL

    path = Path(source)
    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").is_file() else None
        if sub is None and not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: not a diffusers VAE folder (no config.json or vae/config.json)")
        return AutoencoderKL.from_pretrained(str(path), subfolder=sub, torch_dtype=torch.float32).eval()
    sd, metadata, _ = read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle, report=report)
    part = cv.split_original(sd)["vae"]
    if not part:
        if any(k.startswith("encoder.down_blocks.") for k in sd):  # diffusers layout in one file
            sd = cv.normalize_old_vae_names(sd)
            keymap = cv.vae_key_map(k for k in sd if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")))
            part = {o[len(cv.VAE_PREFIX):]: cv._vae_value_to_original(o, sd[k]) for k, o in keymap.items()}
        else:  # A1111-style VAE file: original names without the prefix (and loss.* to ignore)
            part = {k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
    if "encoder.conv_in.weight" not in part:
        raise ModelLoadError(f"{path}: not a VAE (no encoder.conv_in.weight); model.vae needs a VAE file or folder")
    return _vae_from_original_part(part, v2=v2, v_param=v_parameterization, metadata=metadata, path=str(path))


# --------------------------------------------------------------------------- single file


def _load_single_file(path: Path, *, v2, v_parameterization, vae, allow_unsafe_pickle, use_ema,
                      report: list[str]) -> dict:
    sd, metadata, info = read_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle, report=report)
    check_supported(sd, str(path))
    detected, why = detect_v2_single_file(sd)
    v2d = resolve_v2(v2, detected, why)
    report.append(v2d.line)
    is_v2 = v2d.value
    parts = cv.split_original(sd)
    conv_in = parts["unet"].get("input_blocks.0.0.weight")
    source_dtype = str(conv_in.dtype).replace("torch.", "") if conv_in is not None else None
    del sd

    # EMA: LDM checkpoints may carry an EMA copy of the U-Net (model_ema.*).
    unet_part, has_ema = _choose_unet_weights(parts, use_ema, report)

    # Provisional family for config inference: a file's metadata may already say v.
    hint_v = v_parameterization if isinstance(v_parameterization, bool) else (
        str(metadata.get("modelspec.prediction_type", "")).startswith("v"))
    try:
        ucfg = infer_unet_config(unet_part, v2=is_v2, v_parameterization=hint_v, metadata=metadata)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{path}: the U-Net is incomplete or not SD-shaped (missing {exc})") from exc
    unet = empty_model(unet_ctor(ucfg))
    try:
        ustate = cv.unet_from_original(unet_part, unet.state_dict().keys())
    except cv.ConversionError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    unet = fill_model(unet, ustate, "U-Net", str(path))
    del ustate, unet_part

    if vae is not None:
        vae_model = load_vae(vae, v2=is_v2, v_parameterization=hint_v, allow_unsafe_pickle=allow_unsafe_pickle,
                             report=report)
        report.append(f"VAE: from {vae} (model.vae)")
    else:
        vae_model = _vae_from_original_part(parts["vae"], v2=is_v2, v_param=hint_v, metadata=metadata,
                                            path=str(path))

    text_encoder, extras = _text_encoder_from_parts(parts, is_v2=is_v2, metadata=metadata, path=path)

    vd = resolve_v_parameterization(
        v_parameterization, v2=is_v2, metadata=metadata,
        forward_test=lambda: a1111_v_test(unet, int(ucfg["cross_attention_dim"])),
    )
    report.append(vd.line)
    if is_v2 and vd.value and UNET_CONFIG_META not in metadata:
        _use_768_v_attention(unet)
    if "global_step" in info:
        report.append(f"checkpoint global_step: {info['global_step']}")
    return dict(unet=unet, vae=vae_model, text_encoder=text_encoder, v2=is_v2, v_parameterization=vd.value,
                metadata=dict(metadata), text_extras=extras, has_ema=has_ema, source_dtype=source_dtype,
                scheduler_config=recorded_scheduler(metadata))


def _choose_unet_weights(parts: dict, use_ema: bool, report: list[str]) -> tuple[dict, bool]:
    """The U-Net weights to train (the EMA copy when asked and present) and whether one exists."""
    unet_part = parts["unet"]
    ema = cv.ema_unet_part(parts["ema"], unet_part.keys()) if parts["ema"] else {}
    if ema:
        if use_ema:
            report.append("EMA weights present: training the EMA U-Net (model.use_ema_weights = true)")
            return ema, True
        report.append("EMA weights present: training the regular U-Net; set model.use_ema_weights = "
                      "true to train the EMA weights instead")
    elif use_ema:
        report.append("model.use_ema_weights is set but the file has no EMA weights: using the regular U-Net")
    return unet_part, bool(ema)


def _text_encoder_from_parts(parts: dict, *, is_v2: bool, metadata: dict, path: Path):
    """The CLIP text encoder of an original-layout file (SD1's ViT-L or SD2's OpenCLIP) and the
    extras SD2's conversion keeps (its projection)."""
    tstate, extras = text_state_from_parts(parts, is_v2=is_v2, metadata=metadata, path=path)
    try:
        tcfg = infer_text_config(tstate, v2=is_v2, metadata=metadata)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{path}: the text encoder is incomplete (missing {exc})") from exc
    text_encoder = empty_model(text_ctor(tcfg))
    tstate = cv.adapt_text_keys(tstate, text_encoder.state_dict().keys())
    return fill_model(text_encoder, tstate, "text encoder", str(path)), extras


def text_state_from_parts(parts: dict, *, is_v2: bool, metadata: Mapping, path: Path,
                          sd2_layers: int | None = None) -> tuple[dict, dict]:
    """The text encoder's tensors in transformers' names (no ``text_model.``) and SD2's extras.
    ``sd2_layers``: the resblocks an SD2 text encoder uses, when the caller knows (else inferred)."""
    extras: dict = {}
    if is_v2:
        tpart = parts["text_sd2"]
        if not tpart and parts["text_sd1"]:
            raise ModelLoadError(
                f"{path}: model.v2 = true but the file's text encoder is SD1's (CLIP ViT-L); "
                "remove the setting (auto) or set model.v2 = false")
        if "token_embedding.weight" not in tpart:
            raise ModelLoadError(f"{path}: SD2 text encoder is incomplete (no {cv.SD2_TEXT_PREFIX}token_embedding.weight)")
        tstate, extras = cv.text_sd2_from_original(tpart, sd2_layers or sd2_text_layers(tpart, metadata))
    else:
        if not parts["text_sd1"]:
            raise ModelLoadError(
                f"{path}: model.v2 = false but the file's text encoder is SD2's (OpenCLIP); "
                "remove the setting (auto) or set model.v2 = true")
        tstate = {cv.strip_text_model_prefix(k): v for k, v in parts["text_sd1"].items()
                  if not k.endswith("position_ids")}
    if "embeddings.token_embedding.weight" not in tstate:
        raise ModelLoadError(f"{path}: the text encoder is incomplete (no token embedding)")
    return tstate, extras


def recorded_scheduler(metadata: Mapping) -> dict | None:
    """The scheduler a single file recorded when it was saved from a diffusers model (sdft)."""
    import json

    try:
        cfg = json.loads(metadata.get(SCHEDULER_META, ""))
    except (TypeError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and isinstance(cfg.get("_class_name"), str) else None


def _use_768_v_attention(unet) -> None:
    """SD 2.x 768-v needs attention upcast to fp32 (else fp16 gives NaNs); harmless elsewhere."""
    from diffusers.models.attention_processor import Attention

    for module in unet.modules():
        if isinstance(module, Attention):
            module.upcast_attention = True
    unet.register_to_config(upcast_attention=True)


# --------------------------------------------------------------------------- diffusers folder


def _load_folder(folder: Path, *, v2, v_parameterization, vae, allow_unsafe_pickle, use_ema,
                 report: list[str]) -> dict:
    import json

    from transformers import CLIPTextModel

    needed = ["unet", "text_encoder"] + ([] if vae is not None else ["vae"])
    missing = [p for p in needed if not (folder / p / "config.json").is_file()]
    if missing:
        hint = " (or set model.vae)" if "vae" in missing else ""
        raise ModelLoadError(
            f"{folder}: the diffusers folder lacks {', '.join(p + '/' for p in missing)}{hint}. "
            "A base model needs unet/, vae/ and text_encoder/ with config.json and weights; "
            "copy the missing parts from the original model")
    from engine.models.config_check import check_component_config

    ucfg = check_component_config(folder, "unet")   # a bad value is named before diffusers builds it
    for component in needed[1:]:
        check_component_config(folder, component)
    check_supported_folder(folder, ucfg)
    sub = unet_subfolder(folder, use_ema, report)
    unet, (text_encoder,), vae_model = load_folder_parts(
        folder, unet_sub=sub, text_parts={"text_encoder": CLIPTextModel},
        vae=vae, allow_unsafe_pickle=allow_unsafe_pickle, report=report)
    ctx = int(unet.config.cross_attention_dim)
    detected, why = detect_v2_folder(ctx, getattr(text_encoder.config, "hidden_act", ""))
    v2d = resolve_v2(v2, detected, why)
    report.append(v2d.line)
    sched_path = folder / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text("utf-8")) if sched_path.is_file() else None
    vd = resolve_v_parameterization(
        v_parameterization, v2=v2d.value, scheduler_config=sched,
        forward_test=lambda: a1111_v_test(unet, ctx),
    )
    report.append(vd.line)
    return dict(unet=unet.eval(), vae=vae_model.eval(), text_encoder=text_encoder.eval(), v2=v2d.value,
                v_parameterization=vd.value, metadata={}, text_extras={}, has_ema=sub == "unet_ema",
                source_dtype=stored_dtype(folder / sub),
                scheduler_config=sched if isinstance(sched, dict) and "_class_name" in sched else None)


def stored_dtype(sub: Path) -> str | None:
    """The dtype of the first tensor in a diffusers component's safetensors file, if any."""
    from engine.models.safetensors_header import HeaderError, read_header

    for f in sorted(sub.glob("*.safetensors")):
        try:
            return read_header(f).first_dtype()
        except (OSError, HeaderError):
            return None
    return None


# --------------------------------------------------------------------------- hub


SD_FOLDER_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def is_hub_id(source: str) -> bool:
    """``owner/name``: what a Hugging Face hub id looks like (a local path is tried first)."""
    return bool(_HUB_ID.match(source))


def download_hub(repo_id: str, parts: tuple[str, ...] = SD_FOLDER_PARTS) -> Path:
    """A hub model's diffusers ``parts`` (their fp32 safetensors), downloaded; refused offline."""
    from engine.models.hub import is_offline, offline_model_message

    if is_offline():
        raise ModelLoadError(offline_model_message(repo_id))
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            repo_id,
            allow_patterns=["model_index.json", *(f"{part}/*" for part in parts)],
            ignore_patterns=["*.bin", "*.msgpack", "*.onnx", "*.ckpt", "*fp16*", "*non_ema*"],
        ))
    except Exception as exc:
        raise ModelLoadError(
            f"{repo_id!r}: not a local path, and downloading it from the Hugging Face hub failed "
            f"({type(exc).__name__}: {str(exc)[:200]}). Check the id and your network, or download "
            "the model elsewhere and point model.pretrained_model_name_or_path to it") from exc


# --------------------------------------------------------------------------- entry point


def unet_subfolder(folder: Path, use_ema: bool, report: list[str]) -> str:
    """``unet_ema`` when asked for and present, else ``unet``; what was chosen goes to ``report``."""
    if use_ema and (folder / "unet_ema" / "config.json").is_file():
        report.append("EMA weights present (unet_ema/): training them (model.use_ema_weights = true)")
        return "unet_ema"
    if (folder / "unet_ema").is_dir():
        report.append("EMA weights present (unet_ema/): training the regular U-Net; set "
                      "model.use_ema_weights = true to train the EMA weights instead")
    elif use_ema:
        report.append("model.use_ema_weights is set but the folder has no unet_ema/: using unet/")
    return "unet"


def load_folder_parts(folder: Path, *, unet_sub: str, text_parts: dict, vae, allow_unsafe_pickle: bool,
                      report: list[str]) -> tuple:
    """A diffusers folder's U-Net, text encoders (``text_parts``: subfolder -> transformers class,
    in order) and VAE (or ``vae``, a separate one), fp32; a part that fails to build is named with
    the folder, and every weight is checked as read (SD and SDXL folders alike)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder=unet_sub, torch_dtype=torch.float32)
        texts = tuple(cls.from_pretrained(str(folder), subfolder=sub, dtype=torch.float32)
                      for sub, cls in text_parts.items())
        vae_model = (load_vae(vae, allow_unsafe_pickle=allow_unsafe_pickle, report=report) if vae is not None
                     else AutoencoderKL.from_pretrained(str(folder), subfolder="vae", torch_dtype=torch.float32))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - diffusers/transformers fail many ways on a bad folder
        raise ModelLoadError(f"{folder}: a component could not be loaded: {type(exc).__name__}: "
                             f"{str(exc)[:400]}") from exc
    for component, model in ((unet_sub, unet), *zip(text_parts, texts, strict=True),
                             ("vae", None if vae else vae_model)):
        all_weights_loaded(folder / component, model)
    if vae is not None:
        report.append(f"VAE: from {vae} (model.vae)")
    return unet, texts, vae_model


def all_weights_loaded(component: Path, model) -> None:
    """diffusers leaves the tensors a weights file lacks on the meta device, and training fails
    later with "Cannot copy out of meta tensor": name the file instead."""
    if model is None:
        return
    missing = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if missing:
        raise ModelLoadError(f"{component}: its weights file lacks {len(missing)} of the model's tensors (such as "
                             f"{missing[0]}): the weights do not belong to this config.json; copy the folder "
                             "again from the original model")


def load_model(source: str, *, v2="auto", v_parameterization="auto", vae: str | None = None,
               tokenizer_dir=None, allow_unsafe_pickle: bool = False, use_ema: bool = False,
               hash_file: bool = True) -> LoadedModel:
    """Load a base model (fp32, CPU). See the module docstring; raises ModelLoadError."""
    from engine.models.tokenizer import load_tokenizer

    report: list[str] = []
    path = Path(os.path.expanduser(str(source)))
    kwargs = dict(v2=v2, v_parameterization=v_parameterization, vae=vae,
                  allow_unsafe_pickle=allow_unsafe_pickle, use_ema=use_ema, report=report)
    sha = None
    if path.is_dir():
        if not (path / "unet").is_dir() and not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path}: a folder, but not a diffusers model (no model_index.json or unet/); "
                                 "point to a diffusers folder or to a .safetensors/.ckpt file")
        parts = _load_folder(path, **kwargs)
        folder_for_tok = path if (path / "tokenizer").is_dir() else None
    elif path.is_file():
        parts = _load_single_file(path, **kwargs)
        folder_for_tok = None
        if hash_file:
            sha = sha256_of(path)   # remembered by path, size and mtime: big files hash once
    elif is_hub_id(str(source)) and not str(source).lower().endswith(SINGLE_FILE_EXT):
        folder = download_hub(str(source))
        report.append(f"downloaded {source} from the Hugging Face hub")
        parts = _load_folder(folder, **kwargs)
        folder_for_tok = folder
        path = folder
    else:
        raise ModelLoadError(f"{source}: no such file or folder (model.pretrained_model_name_or_path)")
    tokenizer = load_tokenizer(tokenizer_dir or folder_for_tok, v2=parts["v2"])
    base_name = Path(str(source)).stem if path.is_file() else Path(str(source).rstrip("/")).name
    return LoadedModel(
        unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=tokenizer,
        noise_scheduler=training_scheduler(parts["v2"], parts["v_parameterization"]),
        v2=parts["v2"], v_parameterization=parts["v_parameterization"], report=report,
        source=str(source), base_name=base_name, base_sha256=sha, metadata=parts["metadata"],
        text_extras=parts["text_extras"], has_ema=parts["has_ema"], source_dtype=parts["source_dtype"],
        scheduler_config=parts["scheduler_config"],
    )
