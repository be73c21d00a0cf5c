"""What an SDXL model predicts (epsilon or v) and whether its schedule has zero terminal SNR.

SDXL base predicts epsilon; v-prediction fine-tunes (NoobAI-XL's v-pred releases) mark
themselves where the ecosystem looks: a single file holds empty tensors named ``v_pred``
and, for zero terminal SNR, ``ztsnr`` beside the weights (ComfyUI's and reForge's SDXL model
detection read exactly these two keys); a diffusers folder says it in its scheduler config
(``prediction_type``, ``rescale_betas_zero_snr``). A file's modelspec/sdft metadata, as
kohya and sdft write it, counts too. The run file's ``model.v_parameterization`` and
``train.zero_terminal_snr`` override what is found (docs/sdxl.md, "v-prediction").
No torch: shapes and names only.
"""

from __future__ import annotations

from typing import Mapping

from engine.models.detect import V_HINT, Detection, v_from_metadata

V_PRED_MARK = "v_pred"
ZTSNR_MARK = "ztsnr"
ZTSNR_META = "sdft.zero_terminal_snr"
ZTSNR_HINT = "set train.zero_terminal_snr to override"


def _say(value: bool, source: str, where: str) -> Detection:
    kind = "v-prediction" if value else "epsilon prediction"
    return Detection(value, source, f"prediction: {kind}, from {where}; {V_HINT}")


def resolve_prediction(setting, *, tensors: Mapping | None = None, metadata: Mapping[str, str] | None = None,
                       scheduler_config: Mapping | None = None) -> Detection:
    """v-prediction or epsilon, in this order: the setting, the file's ``v_pred`` key, its
    metadata, the folder's scheduler config, else epsilon (SDXL base)."""
    if isinstance(setting, bool):
        return Detection(setting, "setting",
                         f"prediction: {'v-prediction' if setting else 'epsilon prediction'} from your "
                         f"setting model.v_parameterization = {str(setting).lower()}")
    if tensors and V_PRED_MARK in tensors:
        return _say(True, "keys", f"the file's {V_PRED_MARK!r} key (the mark ComfyUI and reForge read)")
    found = v_from_metadata(metadata)
    if found is not None:
        return _say(found[0], "metadata", f"the file's metadata ({found[1]})")
    if scheduler_config and scheduler_config.get("prediction_type"):
        pt = scheduler_config["prediction_type"]
        return _say(pt == "v_prediction", "scheduler config", f"scheduler_config.json (prediction_type = {pt})")
    return _say(False, "default", "no mark in the model (SDXL base predicts epsilon)")


def detect_zero_terminal_snr(*, tensors: Mapping | None = None, metadata: Mapping[str, str] | None = None,
                             scheduler_config: Mapping | None = None) -> Detection:
    """Whether the model was trained with a zero-terminal-SNR schedule: the file's ``ztsnr``
    key, sdft's metadata, or the folder's ``rescale_betas_zero_snr``."""
    if tensors and ZTSNR_MARK in tensors:
        return Detection(True, "keys", f"schedule: zero terminal SNR, from the file's {ZTSNR_MARK!r} key; "
                                       f"{ZTSNR_HINT}")
    said = str((metadata or {}).get(ZTSNR_META, "")).strip().lower()
    if said in ("true", "false"):
        value = said == "true"
        return Detection(value, "metadata", f"schedule: {'zero terminal SNR' if value else 'SD'}'s, from the "
                                            f"file's metadata ({ZTSNR_META}); {ZTSNR_HINT}")
    if scheduler_config and "rescale_betas_zero_snr" in scheduler_config:
        value = bool(scheduler_config["rescale_betas_zero_snr"])
        return Detection(value, "scheduler config",
                         f"schedule: {'zero terminal SNR' if value else 'SD'}'s, from scheduler_config.json "
                         f"(rescale_betas_zero_snr = {str(value).lower()}); {ZTSNR_HINT}")
    return Detection(False, "default", f"schedule: SD's (no zero-terminal-SNR mark); {ZTSNR_HINT}")
