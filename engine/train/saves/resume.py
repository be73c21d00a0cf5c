"""Resuming a run from a state folder: which state, whether it still fits, and loading it."""

from __future__ import annotations

from engine.train.context import RunParts
from engine.train.optimizers import set_train_mode
from engine.train.saves.resume_check import compare, describe_inputs, read_inputs
from engine.train.saves.state import (
    Counters,
    StateError,
    find_state_folder,
    load_state,
    read_counters,
    training_math_hash,
)


def math_hash(cfg, v_prediction: bool, mixed_precision: str, seed) -> str:
    """Hash of the options that change a step's maths (a resume refuses a change)."""
    train = {k: v for k, v in vars(cfg.train).items()
             if k not in ("output_dir", "output_name", "resume", "max_train_steps", "max_train_epochs")}
    train["seed"] = seed
    relevant = {
        "train": train,
        "optimizer": {k: v for k, v in vars(cfg.optimizer).items()},
        "model": {k: getattr(cfg.model, k) for k in ("clip_skip", "max_token_length")},
        "v_prediction": v_prediction,
        "mixed_precision": mixed_precision,
    }
    if cfg.train.mode == "hypernetwork":
        relevant["hypernetwork_lr"] = cfg.hypernetwork.learning_rate
    return training_math_hash(relevant)


def parts_math_hash(parts: RunParts, seed) -> str:
    return math_hash(parts.cfg, parts.components.noise.v_prediction, parts.precision.mixed_precision, seed)


def restore(parts: RunParts, resume: str, seed, allow_changed: bool, agreement) -> Counters | None:
    """Load the state ``resume`` names into the parts; its counters, or None to start at step 0."""
    skipped: list[str] = []
    run_dir = parts.run_dir
    folder = find_state_folder(resume, run_dir, parts.cfg.base_dir, skipped)
    folder = agreement.from_main(folder)   # the main process verified it (state.verify_state)
    for reason in skipped:
        parts.say(f"skipped a newer state that does not verify: {reason}", "warning")
    if folder is None and skipped:
        raise StateError(f"no saved state of {run_dir} verifies ({len(skipped)} damaged); "
                         "resume from a state folder you trust with --resume STATE_DIR, or delete them to start over")
    if folder is None:
        parts.say("train.resume = \"latest\" but no saved state was found: starting from step 0", "warning")
        return None
    saved = read_counters(folder)
    verdict = compare(saved, read_inputs(folder), seed=seed, math_hash=parts_math_hash(parts, saved.seed),
                      now=describe_inputs(parts.cfg, parts.data))
    if verdict.refusals and not allow_changed:
        raise ValueError(verdict.refusal_message(folder))
    if verdict.refusals:
        parts.say(f"resuming with --allow-changed although {', '.join(verdict.refusals)} changed", "warning")
    for note in verdict.notes:   # a data edit: the run goes on, and says so
        parts.say(note, "warning")
    notes: list[str] = []
    b = parts.bundle
    counters = load_state(folder, trainables=parts.trainables(), optimizer=b.optimizer, scheduler=b.lr_scheduler,
                          scaler=parts.accelerator.scaler, ema=b.ema, notes=notes)
    set_train_mode(b.optimizer, True)   # a schedule-free state was saved with its eval weights
    for note in notes:
        parts.say(note, "warning")
    if b.lr_scheduler.last_epoch != counters.global_step:
        parts.say("max_train_steps changed: the learning-rate schedule was rebuilt at the restored step", "warning")
    parts.say(f"resumed from {folder} at step {counters.global_step} (epoch {counters.epoch + 1})")
    return counters
