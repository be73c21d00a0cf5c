"""VRAM planner, the report ``sdft plan RUN.toml`` prints."""

from __future__ import annotations

import json

from engine.plan.estimate import GB, MARGIN, PlanOptions, estimate_peak_vram, family_label, fmt_gb
from engine.plan.presets import budget_for_preset, presets_for
from engine.plan.suggestions import suggest


def plan_report(config, *, vram_gb: float | None = None, hardware=None, processes: int = 1) -> str:
    """`sdft plan RUN.toml`: the estimate, its parts, and what to change if it does not fit.

    The budget is ``vram_gb`` when given, else the largest detected GPU; with neither, the
    estimate is shown with the presets it fits. ``processes``: GPUs training together (per GPU).
    """
    options = PlanOptions.from_config(config, processes=processes)
    estimate = estimate_peak_vram(options)
    where = f" on each of {processes} GPUs" if processes > 1 else ""
    lines = [f"Estimated peak VRAM: {fmt_gb(estimate.total_bytes)} (at the {estimate.phase}){where} for a full-size "
             f"{family_label(options.family)} model, {options.width}x{options.height}, batch {options.batch_size}"]
    for part, value in sorted(estimate.breakdown.items(), key=lambda item: -item[1]):
        if value > 0:
            lines.append(f"  {part:<28} {fmt_gb(value):>9}")
    budget, where = None, ""
    if vram_gb is not None:
        budget, where = vram_gb * GB, f"{vram_gb:g} GB (--vram)"
    else:
        if hardware is None:
            from engine.hardware import probe_hardware

            hardware = probe_hardware()
        gpu = hardware.best_gpu
        if gpu is not None:
            budget, where = float(gpu.total_bytes), f"{gpu.name}, {gpu.total_gib:.1f} GiB"
    if budget is None:
        sizes = sorted(presets_for(options.family))
        fitting = [size for size in sizes if estimate.fits(budget_for_preset(size))]
        lines.append("No GPU detected; pass --vram GB to plan for a card. "
                     + (f"Fits a {fitting[0]} GB card or larger." if fitting else f"Too large for a {sizes[-1]} GB card."))
        return "\n".join(lines)
    if estimate.fits(budget):
        lines.append(f"Fits {where} with a {int(MARGIN * 100)}% margin.")
        return "\n".join(lines)
    lines.append(f"Does not fit {where}. Changes that lower it:")
    # planning for this machine's GPU: only changes that run here; for --vram, any card's
    caps = None
    if vram_gb is None:
        from engine.hardware import capabilities

        caps = capabilities(hardware)
    useful = [s for s in suggest(options, budget, capabilities=caps) if s.new_total < estimate.total_bytes * 0.99]
    for suggestion in useful[:6]:
        keys = ", ".join(f"{k} = {json.dumps(v)}" for k, v in suggestion.config_changes.items())
        mark = "fits" if suggestion.fits else "still too large"
        lines.append(f"  - {suggestion.text} ({mark}){f': {keys}' if keys else ''}")
    return "\n".join(lines)
