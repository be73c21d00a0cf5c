"""VRAM planner: estimate the peak GPU memory of a training configuration and suggest what fits.

Pure Python (no torch): the wizard calls it on every keystroke of the options screen. One module
per job: the estimate and its model (``estimate.py``, whose docstring gives the formulas and
their sources), suggestions (``suggestions.py``), presets per card size (``presets.py``) and the
``sdft plan`` report (``report.py``).
"""

from engine.plan.estimate import (
    CTX_BYTES,
    FRAG,
    GB,
    GIB,
    MARGIN,
    N_UNET,
    N_VAE,
    Estimate,
    PlanOptions,
    coefficients,
    estimate_peak_vram,
    family_of_config,
    fmt_gb,
    hypernetwork_params,
)
from engine.plan.presets import (
    PRESETS,
    SDXL_PRESETS,
    apply_preset_to_options,
    budget_for_preset,
    ceil_gb,
    preset_for,
    preset_values,
    presets_for,
)
from engine.plan.report import plan_report
from engine.plan.suggestions import INSTEAD, Suggestion, runnable_values, suggest

__all__ = [
    "CTX_BYTES", "FRAG", "GB", "GIB", "INSTEAD", "MARGIN", "N_UNET", "N_VAE", "PRESETS", "SDXL_PRESETS",
    "Estimate", "PlanOptions", "Suggestion", "apply_preset_to_options", "budget_for_preset",
    "ceil_gb", "coefficients", "estimate_peak_vram", "family_of_config", "fmt_gb",
    "hypernetwork_params", "plan_report", "preset_for", "preset_values", "presets_for", "runnable_values", "suggest",
]
