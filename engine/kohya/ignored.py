"""Converted values kohya itself ignores, left out of the run file with a note.

Tools write every setting out: the kohya_ss GUI saves a sampler without prompts, a multires
discount without multires noise, a torch.compile backend without torch.compile. kohya ignores
them; sdft's ``--check`` refuses a key that does nothing (engine/preflight/inert.py). So the
converter asks that same check which converted keys would do nothing, and drops them, saying
why, unless kohya would stop at them too (then the file keeps them and ``--check`` says what to
do). Bucket settings without ``--enable_bucket`` are ignored by kohya as well.
"""

from __future__ import annotations

from typing import Any

# Keys the inert check may flag that stay in the file, for --check to name: real problems in kohya
# too (it stops at adaptive_noise_scale without noise_offset), or keys whose use depends on the
# dataset tables, which the converter does not judge (masks, held-out images).
KEPT = ("train.adaptive_noise_scale", "train.masked_loss", "train.validate_every_n_steps",
        "train.validate_every_n_epochs", "train.max_validation_steps")
BUCKET_KEYS = ("general.min_bucket_reso", "general.max_bucket_reso", "general.bucket_reso_steps",
               "general.bucket_no_upscale")


def ignored_values(values: dict[str, Any]) -> dict[str, str]:
    """{dotted key: why it is left out} for the converted ``values`` kohya would ignore."""
    out = {}
    config = _run_config(values)
    if config is not None:
        from engine.config.problems import ProblemList
        from engine.preflight.inert import check_inert_options

        problems = ProblemList()
        check_inert_options(config, problems)
        for p in problems.items:
            if p.severity != "error" or p.key not in values or p.key in KEPT:
                continue
            if p.key == "optimizer.lr_warmup_steps" and values.get("optimizer.lr_scheduler_type"):
                continue   # kohya refuses a warm-up beside a schedule class: the user decides
            out[p.key] = _why(p.key, p.message, config)
    if not values.get("general.enable_bucket"):
        for key in BUCKET_KEYS:
            if key in values:
                out[key] = "kohya ignores the bucket settings without --enable_bucket"
    return out


def _why(key: str, message: str, config) -> str:
    if key == "optimizer.lr_warmup_steps":
        schedule = config.optimizer.lr_scheduler
        return (f"the {schedule} schedule has no warm-up (kohya stops at it: \"does not require num_warmup_steps\"); "
                "for a warm-up choose constant_with_warmup, linear, cosine, ...")
    return f"kohya ignores it: it {message}"


def _run_config(values: dict[str, Any]):
    """The run-file sections of ``values`` as a RunConfig (None when a value does not fit: its
    problem is --check's to name)."""
    from engine.config.problems import ProblemList
    from engine.config.run_toml import build_sections
    from engine.config.schema import SECTIONS, RunConfig

    data: dict[str, Any] = {}
    for key, value in values.items():
        section, *names = key.split(".")
        if section not in SECTIONS:
            continue
        table = data.setdefault(section, {})
        for name in names[:-1]:
            table = table.setdefault(name, {})
        table[names[-1]] = value
    problems = ProblemList()
    config = build_sections(RunConfig(), data, problems)
    return None if problems.has_errors else config
