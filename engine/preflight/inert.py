"""Keys set to a value that would change nothing, refused with the setting they need.

A key that is accepted does something: ``huber_c`` without a Huber loss, EMA settings without
``train.ema``, sampling settings without prompts, a warm-up the schedule does not take. Each
rule here fires only when the key differs from its default, so a kohya config that writes
every default out (as kohya's ``--output_config`` and its GUI do) still loads. The
reasoning per option is in docs/run-file.md ("Keys that need another key").
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Callable, NamedTuple

from engine.config.problems import ProblemList
from engine.config.schema import SECTIONS, RunConfig


class Needs(NamedTuple):
    keys: tuple[str, ...]                 # dotted keys this rule watches
    works: Callable[[RunConfig], bool]    # whether they act with the rest of the file
    what: str | Callable[[RunConfig], str]   # what they need, for the message (may name the file's values)
    hint: str


def _value(config: RunConfig, dotted: str):
    section, *names = dotted.split(".")
    value = getattr(config, section)
    for name in names:
        value = getattr(value, name)
    return value


def _default(dotted: str):
    section, *names = dotted.split(".")
    cls = SECTIONS[section]
    for name in names[:-1]:
        cls = type(getattr(cls(), name))
    field = next(f for f in fields(cls) if f.name == names[-1])
    return field.default_factory() if field.default is MISSING else field.default


def _sampling(config: RunConfig) -> bool:
    s = config.sample
    return bool(s.prompts) and bool(s.every_n_steps or s.every_n_epochs or s.at_first)


def schedule_options_of(config: RunConfig) -> tuple[str, ...]:
    from engine.registry.schedulers import options_of

    return options_of(config.optimizer.lr_scheduler)


def _subsets(config: RunConfig) -> list:
    return list(config.datasets.subsets) if config.datasets is not None else []


def _has_masks(config: RunConfig) -> bool:
    return any(s.mask_source for s in _subsets(config))


def _has_validation(config: RunConfig) -> bool:
    datasets = config.datasets.datasets if config.datasets is not None else []
    return any(s.is_val for s in _subsets(config)) or any(d.validation_split > 0 for d in datasets)


def _schedule_takes(option: str) -> Callable[[RunConfig], bool]:
    from engine.registry.schedulers import options_of

    return lambda c: option in options_of(c.optimizer.lr_scheduler)


RULES = (
    Needs(("train.noise_offset_random_strength", "train.adaptive_noise_scale"),
          lambda c: c.train.noise_offset > 0, "a noise offset", "set train.noise_offset (0.05-0.1 is typical)"),
    Needs(("train.multires_noise_discount",), lambda c: c.train.multires_noise_iterations > 0,
          "multi-resolution noise", "set train.multires_noise_iterations (6-10 is typical)"),
    Needs(("train.ip_noise_gamma_random_strength",), lambda c: c.train.ip_noise_gamma > 0,
          "input perturbation noise", "set train.ip_noise_gamma (0.1 is typical)"),
    Needs(("train.huber_schedule", "train.huber_c", "train.huber_scale"),
          lambda c: c.train.loss_type in ("huber", "smooth_l1"), "a Huber loss",
          'set train.loss_type = "huber" or "smooth_l1"'),
    # as in kohya: the snr schedule derives c from huber_c alone
    Needs(("train.huber_scale",), lambda c: c.train.huber_schedule != "snr",
          'huber_schedule "constant" or "exponential" (the snr schedule does not scale c)',
          'set train.huber_schedule = "constant" or "exponential"'),
    Needs(("train.ema_decay", "train.ema_update_every", "train.ema_cpu_offload", "save.use_ema"),
          lambda c: c.train.ema, "train.ema = true", "set train.ema = true"),
    Needs(("train.ema",), lambda c: c.save.use_ema or (_sampling(c) and c.sample.use_ema),
          "something that uses the averaged weights", "set save.use_ema = true to save them "
          "(or sample with sample.use_ema)"),
    Needs(("sample.use_ema",), lambda c: c.train.ema and _sampling(c), "train.ema and sample prompts",
          "set train.ema = true"),
    Needs(("sample.every_n_steps", "sample.every_n_epochs", "sample.at_first", "sample.sampler", "sample.steps"),
          lambda c: bool(c.sample.prompts), "sample prompts", 'add sample.prompts = ["a photo of ..."] '
          "or a prompts file"),
    Needs(("sample.prompts", "sample.sampler", "sample.steps"),
          lambda c: bool(c.sample.every_n_steps or c.sample.every_n_epochs or c.sample.at_first),
          "a time to sample", "set sample.every_n_steps, sample.every_n_epochs or sample.at_first"),
    Needs(("save.last_n_steps",), lambda c: bool(c.save.every_n_steps), "per-step saves",
          "set save.every_n_steps"),
    Needs(("save.last_n_epochs",), lambda c: bool(c.save.every_n_epochs or c.save.n_epoch_ratio),
          "per-epoch saves", "set save.every_n_epochs or save.n_epoch_ratio"),
    Needs(("save.every_n_epochs",), lambda c: not c.save.n_epoch_ratio,
          "save.n_epoch_ratio unset (the ratio decides the epochs between saves)",
          "remove one of save.every_n_epochs and save.n_epoch_ratio"),
    Needs(("optimizer.learning_rate_te", "optimizer.learning_rate_te1", "optimizer.learning_rate_te2",
           "train.stop_text_encoder_training"),
          lambda c: c.train.train_text_encoder and c.train.mode == "full", "a trained text encoder",
          "set train.train_text_encoder = true"),
    # a schedule class takes only lr_scheduler_args (kohya refuses a warm-up beside it too)
    Needs(("optimizer.lr_scheduler", "optimizer.lr_warmup_steps", "optimizer.lr_scheduler_num_cycles",
           "optimizer.lr_scheduler_power", "optimizer.lr_decay_steps", "optimizer.lr_scheduler_min_lr_ratio",
           "optimizer.lr_scheduler_timescale"), lambda c: not c.optimizer.lr_scheduler_type,
          "optimizer.lr_scheduler_type unset (the class given there is the schedule)",
          "remove optimizer.lr_scheduler_type"),
    Needs(("optimizer.lr_warmup_steps",), _schedule_takes("num_warmup_steps"),
          lambda c: f"a schedule with a warm-up (the {c.optimizer.lr_scheduler} schedule has none)",
          'use lr_scheduler = "constant_with_warmup" (or linear, cosine, ...)'),
    Needs(("optimizer.lr_scheduler_num_cycles",), _schedule_takes("num_cycles"),
          'lr_scheduler = "cosine_with_restarts"', 'set lr_scheduler = "cosine_with_restarts"'),
    Needs(("optimizer.lr_scheduler_power",), _schedule_takes("power"),
          'lr_scheduler = "polynomial"', 'set lr_scheduler = "polynomial"'),
    Needs(("optimizer.lr_decay_steps",), _schedule_takes("num_decay_steps"),
          'lr_scheduler = "warmup_stable_decay"', 'set lr_scheduler = "warmup_stable_decay"'),
    Needs(("optimizer.lr_scheduler_min_lr_ratio",),
          lambda c: bool({"min_lr_rate", "min_lr_ratio"} & set(schedule_options_of(c))),
          'lr_scheduler = "cosine_with_min_lr" or "warmup_stable_decay"', 'set lr_scheduler = "cosine_with_min_lr"'),
    Needs(("optimizer.lr_scheduler_timescale",), _schedule_takes("timescale"),
          'lr_scheduler = "inverse_sqrt"', 'set lr_scheduler = "inverse_sqrt"'),
    Needs(("train.max_train_steps",), lambda c: c.train.max_train_epochs is None,
          "no train.max_train_epochs (epochs decide the length when both are set)",
          "remove one of max_train_steps and max_train_epochs"),
    Needs(("cache.cache_dir", "cache.verify"), lambda c: c.cache.latents == "disk",
          'cache.latents = "disk"', 'set cache.latents = "disk"'),
    Needs(("cache.dtype",), lambda c: c.cache.latents != "none", "a latent cache", 'set cache.latents = "disk" '
          'or "memory"'),
    Needs(("train.masked_loss",), _has_masks, "a mask source",
          "set alpha_mask = true (the alpha channel) or conditioning_data_dir (a mask folder) in a "
          "[[datasets.subsets]] table"),
    Needs(("train.validate_every_n_steps", "train.validate_every_n_epochs", "train.max_validation_steps"),
          _has_validation, "held-out images", "set validation_split in [general] or a [[datasets]] table, "
          "or is_val = true in a [[datasets.subsets]] table"),
    Needs(("memory.dynamo_backend",), lambda c: c.memory.torch_compile, "memory.torch_compile = true",
          "set memory.torch_compile = true"),
    Needs(("memory.stochastic_rounding",), lambda c: c.memory.full_bf16, "bf16 weights (only they are rounded)",
          "set memory.full_bf16 = true"),
    Needs(tuple(f"hypernetwork.{f.name}" for f in fields(SECTIONS["hypernetwork"])),
          lambda c: c.train.mode == "hypernetwork", 'train.mode = "hypernetwork"',
          'set train.mode = "hypernetwork", or remove the [hypernetwork] keys'),
)


def check_inert_options(config: RunConfig, problems: ProblemList) -> None:
    """An error for each key set away from its default where the rest of the file leaves it idle."""
    flagged = set()
    for rule in RULES:
        if rule.works(config):
            continue
        for key in rule.keys:
            if key in flagged or _value(config, key) == _default(key):
                continue
            flagged.add(key)
            what = rule.what(config) if callable(rule.what) else rule.what
            problems.add(key, f"has no effect without {what}", f"{rule.hint}, or remove {key}")
    _check_mask_keys(config, problems)


def _check_mask_keys(config: RunConfig, problems: ProblemList) -> None:
    """kohya reads a mask folder only with --masked_loss (its dataset refuses the key otherwise);
    an alpha mask weights the loss whenever it is on (kohya's ``apply_masked_loss`` runs for any
    batch with alpha masks), which is said, not refused."""
    if config.train.masked_loss:
        return
    for sub in _subsets(config):
        if sub.conditioning_data_dir is not None:
            key = f"{sub.key}.conditioning_data_dir"
            problems.add(key, "has no effect without train.masked_loss = true",
                         f"set train.masked_loss = true, or remove {key}")
        elif sub.alpha_mask:
            problems.add(f"{sub.key}.alpha_mask", "weights the loss by the alpha channel (masked loss), "
                         "as kohya does, even without train.masked_loss", "", "note")
