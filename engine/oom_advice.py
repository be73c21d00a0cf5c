"""What to change after running out of GPU memory: one list, used by the headless message,
the console and the dashboard. With the run file and the card's size known, the planner's
suggestions for that run (engine.plan.suggest); otherwise the usual remedies."""

from __future__ import annotations

GENERIC_ADVICE = (
    "enable gradient checkpointing (memory.gradient_checkpointing = true)",
    "use 8-bit Adam (optimizer.type = \"AdamW8bit\")",
    "lower the batch size or resolution (general.batch_size / .resolution)",  # fits 80 columns
    "train in mixed precision (memory.mixed_precision = \"fp16\" or \"bf16\")",
)


def oom_message() -> str:
    """The one line a failed run reports."""
    return ("out of GPU memory: " + "; ".join(GENERIC_ADVICE)
            + " (`sdft plan RUN.toml` estimates what fits)")


def oom_advice(config_path, vram_total: float | None, limit: int = 4) -> list[str]:
    """Lines of advice for this run on a card of ``vram_total`` bytes."""
    if vram_total and config_path is not None:
        try:
            from engine.config.run_toml import load_run_config
            from engine.plan import suggest

            lines = []
            for s in suggest(load_run_config(config_path), vram_total)[:limit]:
                keys = ", ".join(f"{k} = {_toml_value(v)}" for k, v in s.config_changes.items())
                lines.append(s.text + (f"  [{keys}]" if keys else ""))
            if lines:
                return lines
        except Exception:  # noqa: BLE001 - advice is a courtesy; fall back to the usual list
            pass
    return list(GENERIC_ADVICE)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
