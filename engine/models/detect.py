"""What kind of model a checkpoint holds: SD1 vs SD2, epsilon vs v, or something unsupported.

kohya never guesses (a v2 file without ``--v2`` just fails); we detect, and
every answer comes with a report line naming where it came from and which setting
overrides it, so a wrong guess is visible and fixable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from engine.models.convert import SD1_TEXT_PREFIX, SD2_TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX
from engine.models.errors import ModelLoadError
from engine.registry.families import family_entry

SD2_TEXT_KEY = SD2_TEXT_PREFIX + "transformer.resblocks.0.attn.in_proj_weight"
ATTN2_K_KEY = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
CONV_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"

V2_HINT = "set model.v2 (or pass --v2 to sdft convert) to override"
V_HINT = "set model.v_parameterization (or pass --v-parameterization to sdft convert) to override"


@dataclass(frozen=True)
class Detection:
    value: bool
    source: str          # "setting" | "metadata" | "scheduler config" | "keys" | "forward test" | "default"
    line: str            # the report line


def _shape(sd: Mapping, key: str):
    v = sd.get(key)
    return tuple(v.shape) if v is not None else None


def refuse_empty_or_lora(keys: list[str], path: str) -> None:
    """Raise ModelLoadError for a file with no tensors or a LoRA's (any family's)."""
    if not keys:
        raise ModelLoadError(f"{path}: the file holds no tensors; it is not a Stable Diffusion checkpoint")
    if any(k.startswith(("lora_unet_", "lora_te", "lora_transformer_")) or ".lora_down." in k
           or ".lora_A." in k or "lora.down" in k for k in keys):
        raise ModelLoadError(
            f"{path}: this is a LoRA file, not a base model. sdft fine-tunes full models: set "
            "model.pretrained_model_name_or_path to the SD checkpoint the LoRA was made for "
            "(merge the LoRA into it first with another tool if you want its effect)")


def check_supported(sd: Mapping, path: str) -> None:
    """Raise ModelLoadError for anything that is not a plain SD1/SD2 base checkpoint."""
    keys = list(sd.keys())
    refuse_empty_or_lora(keys, path)
    if any(k.startswith("conditioner.embedders.") for k in keys) or UNET_PREFIX + "label_emb.0.0.weight" in sd:
        raise ModelLoadError(f"{path}: this is an SDXL checkpoint, which the SD 1.x/2.x loader does not read; "
                             f"{family_entry('sdxl').refused or 'sdft loads it through the SDXL family'}")
    if any(k.startswith("depth_model.") for k in keys):
        raise ModelLoadError(f"{path}: this is an SD2 depth-to-image model, which sdft does not support; "
                             "use a text-to-image SD1/SD2 checkpoint")
    shape = _shape(sd, CONV_IN_KEY)
    if shape is None:
        if any(k.startswith(("string_to_param", "emb_params")) for k in keys):
            kind = "a textual-inversion embedding"
        elif any(k.startswith(("encoder.", "decoder.")) for k in keys) and not any(
                k.startswith(("down_blocks.", "model.")) for k in keys):
            kind = "a VAE on its own (pass it as model.vae instead)"
        elif any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
            kind = "a single diffusers component (point to the whole diffusers folder instead)"
        elif all(str(k).isdigit() for k in keys):
            kind = "a hypernetwork (load it with hypernetwork.weights)"
        else:
            kind = f"not a Stable Diffusion checkpoint (no {CONV_IN_KEY!r}; first keys: {keys[:3]})"
        raise ModelLoadError(f"{path}: {kind}; model.pretrained_model_name_or_path needs a full SD1/SD2 model")
    channels = shape[1] if len(shape) == 4 else None
    special = {9: "an inpainting model", 8: "an instruct-pix2pix model", 5: "a depth-to-image model"}
    if channels in special:
        raise ModelLoadError(
            f"{path}: {special[channels]} ({channels} U-Net input channels), which sdft does not "
            "train; use a plain text-to-image SD1/SD2 checkpoint (4 input channels)")
    if not any(k.startswith(VAE_PREFIX) for k in keys):
        raise ModelLoadError(f"{path}: the checkpoint has a U-Net but no VAE ({VAE_PREFIX}*); "
                             "set model.vae to a VAE file or folder")
    if not any(k.startswith((SD1_TEXT_PREFIX, SD2_TEXT_PREFIX)) for k in keys):
        raise ModelLoadError(f"{path}: the checkpoint has no text encoder (cond_stage_model.*); "
                             "it is incomplete: use a full SD1/SD2 checkpoint")


def check_supported_folder(folder, unet_config: Mapping) -> None:
    """Raise ModelLoadError when a diffusers folder's U-Net is not a plain SD1/SD2 text-to-image one."""
    channels = unet_config.get("in_channels", 4)
    if channels != 4:
        kind = {9: "an inpainting model", 8: "an instruct-pix2pix model", 5: "a depth model"}.get(
            channels, "not a text-to-image model")
        raise ModelLoadError(f"{folder}: {kind} ({channels} U-Net input channels); sdft "
                             "trains plain text-to-image SD1/SD2 models")
    if unet_config.get("addition_embed_type") or unet_config.get("cross_attention_dim") == 2048:
        raise ModelLoadError(f"{folder}: this is an SDXL model, which the SD 1.x/2.x loader does not read; "
                             f"{family_entry('sdxl').refused or 'sdft loads it through the SDXL family'}")


def detection_source(v2: bool, how: str, context_width: int | None) -> str:
    """The one wording of what decided SD 1.x or 2.x, for a diffusers folder and a single file
    alike; a context width other than SD's 768/1024 is named as a small test model."""
    layout = "OpenCLIP, SD 2.x" if v2 else "CLIP, SD 1.x"
    width = "" if context_width is None else f", U-Net context width {context_width}"
    small = context_width is not None and context_width not in (768, 1024)
    return f"the text encoder ({layout} layout: {how}){width}" + (": a small test model, not full size" if small else "")


def detect_v2_folder(cross_attention_dim: int, text_activation: str) -> tuple[bool, str]:
    """SD2 iff the U-Net's context is 1024 wide (or not CLIP-L's 768 with OpenCLIP's gelu)."""
    ctx = int(cross_attention_dim)
    v2 = ctx == 1024 or (ctx != 768 and text_activation == "gelu")
    return v2, detection_source(v2, f"{text_activation} activation", ctx)


def detect_v2_single_file(sd: Mapping) -> tuple[bool, str]:
    """SD2 iff the OpenCLIP text tower is present, or the cross-attention context is 1024 wide."""
    shape = _shape(sd, ATTN2_K_KEY)
    width = shape[1] if shape is not None else None
    if SD2_TEXT_KEY in sd or any(k.startswith(SD2_TEXT_PREFIX) for k in sd):
        return True, detection_source(True, f"{SD2_TEXT_PREFIX}*", width)
    if any(k.startswith(SD1_TEXT_PREFIX) for k in sd):
        return False, detection_source(False, f"{SD1_TEXT_PREFIX}*", width)
    if width is not None:
        return width == 1024, f"the cross-attention context width {width} ({ATTN2_K_KEY})"
    return False, "no SD2 marker found"


def resolve_v2(setting, detected: bool, source_text: str) -> Detection:
    if isinstance(setting, bool):
        note = "" if setting == detected else f" (the file looks like {'SD2' if detected else 'SD1'}: {source_text})"
        return Detection(setting, "setting", f"model: {'SD 2.x' if setting else 'SD 1.x'} from your setting model.v2 = {str(setting).lower()}{note}")
    name = "SD 2.x" if detected else "SD 1.x"
    return Detection(detected, "keys", f"model: {name}, detected from {source_text}; {V2_HINT}")


def v_from_metadata(metadata: Mapping[str, str] | None) -> tuple[bool, str] | None:
    """``modelspec.prediction_type`` or ``sdft.v_parameterization``, when the file says."""
    if not metadata:
        return None
    pt = str(metadata.get("modelspec.prediction_type", "")).strip().lower()
    if pt in ("v", "v_prediction", "v-prediction"):
        return True, "modelspec.prediction_type"
    if pt in ("epsilon", "eps"):
        return False, "modelspec.prediction_type"
    vp = str(metadata.get("sdft.v_parameterization", "")).strip().lower()
    if vp in ("true", "false"):
        return vp == "true", "sdft.v_parameterization"
    return None


def a1111_v_test(unet, context_dim: int) -> bool:
    """AUTOMATIC1111's test: a v-model pulls a constant 0.5 input strongly negative at t=999.

    U-Net in fp32 on CPU, x = 0.5, t = 999, context 0.5 of width ``context_dim``;
    v-prediction iff mean(unet(x) - x) < -1.
    """
    import torch

    dtype = next(unet.parameters()).dtype
    with torch.no_grad():
        x = torch.full((1, 4, 8, 8), 0.5, dtype=torch.float32)
        ctx = torch.full((1, 2, context_dim), 0.5, dtype=torch.float32)
        unet.to(torch.float32)
        try:
            out = unet(x, torch.tensor([999]), encoder_hidden_states=ctx).sample
        finally:
            unet.to(dtype)
        return bool((out - x).mean().item() < -1)


def resolve_v_parameterization(
    setting,
    *,
    v2: bool,
    metadata: Mapping[str, str] | None = None,
    scheduler_config: Mapping | None = None,
    forward_test: Callable[[], bool] | None = None,
) -> Detection:
    """In this order: setting, file metadata, diffusers scheduler config, SD1 -> eps, SD2 forward test."""
    def say(value: bool, source: str, where: str) -> Detection:
        kind = "v-prediction" if value else "epsilon prediction"
        return Detection(value, source, f"prediction: {kind}, from {where}; {V_HINT}")

    if isinstance(setting, bool):
        return Detection(setting, "setting",
                         f"prediction: {'v-prediction' if setting else 'epsilon prediction'} from your "
                         f"setting model.v_parameterization = {str(setting).lower()}")
    found = v_from_metadata(metadata)
    if found is not None:
        return say(found[0], "metadata", f"the file's metadata ({found[1]})")
    if scheduler_config and scheduler_config.get("prediction_type"):
        pt = scheduler_config["prediction_type"]
        return say(pt == "v_prediction", "scheduler config", f"scheduler_config.json (prediction_type = {pt})")
    if not v2:
        return say(False, "default", "SD 1.x (always epsilon)")
    if forward_test is not None:
        return say(forward_test(), "forward test", "a test forward pass of the U-Net (AUTOMATIC1111's check)")
    return say(False, "default", "no information (assumed epsilon)")
