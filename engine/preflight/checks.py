"""Everything training resolves before its first step, checked without loading weights.

``sdft train RUN.toml --check``, the wizard's Review step and the start of every run call
:func:`preflight` after the schema checks: the base model (found, supported, SD1/SD2 and
v-prediction read from its headers), every image of every subset, the resume state, the
sample prompts, the optimizer and learning-rate schedule (built on a dummy parameter with
the file's arguments), the optional packages the options need, and what a machine without
CUDA will do instead of a CUDA-only choice. Each check calls the code training uses.

torch is imported inside the checks only: the wizard imports this module before training.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

from engine.config.problems import FILE_KEY, ConfigError, Problem, ProblemList
from engine.config.schema import RunConfig
from engine.preflight.optimizer import check_optimizer
from engine.preflight.precision import check_precision
from engine.preflight.speed import check_speed_options
from engine.registry.optimizers import needs_package

# Optional packages: (import name, pip command); an optimizer's comes from the registry.
XFORMERS = ("xformers", "pip install xformers")


def check_run_file(path: str | Path, *, resume: str | None = None, restart: bool | None = False,
                   allow_changed: bool = False) -> tuple[RunConfig | None, list[Problem]]:
    """Every problem of a run file at once: the schema's, then (on what the schema accepted)
    the preflight's. The config is None when the file has schema errors or cannot be parsed."""
    from engine.config.toml_text import read_config_text

    try:
        text, notes = read_config_text(path)
    except ConfigError as exc:
        return None, list(exc.problems)
    return check_run_text(text, file=str(path), base_dir=Path(path).parent, resume=resume, restart=restart,
                          allow_changed=allow_changed, notes=notes)


def check_run_text(text: str, *, file: str, base_dir: str | Path, resume: str | None = None,
                   restart: bool | None = False, allow_changed: bool = False, skip_data: bool = False,
                   notes=()) -> tuple[RunConfig | None, list[Problem]]:
    """:func:`check_run_file` for a run TOML not written yet (the wizard's Review step);
    ``skip_data`` leaves out the images when their metadata file is still to be written."""
    from engine.config.run_toml import collect_run_text

    try:
        config, _document, problems = collect_run_text(text, file=file, base_dir=base_dir, notes=notes)
    except ConfigError as exc:
        return None, list(exc.problems)
    found = list(problems.items)
    checked = preflight(config, resume=resume, restart=restart, allow_changed=allow_changed,
                        skip_data=skip_data or _dataset_has_errors(found))
    flagged = {p.key for p in found if p.severity == "error"}
    found += [p for p in checked if p.key not in flagged]   # one message per bad key
    return (None if problems.has_errors else config), found


def preflight(config: RunConfig, *, resume: str | None = None, restart: bool | None = False,
              allow_changed: bool = False, skip_data: bool = False) -> list[Problem]:
    """Problems training would hit before its first step (errors, warnings and notes).
    ``restart``: ``--restart`` was given; None when the caller asks the user itself (the wizard)."""
    from engine.preflight.model import probe_model

    problems = ProblemList(file=config.source_path, line_of=_line_map(config.source_path))
    probe = probe_model(config, problems)
    _check_model_options(config, problems, probe)
    device = _check_device(config, problems)
    _check_packages(config, problems, device)
    check_speed_options(config, problems, device)
    check_precision(config, problems)
    total_steps, data = config.train.max_train_steps, None
    if not skip_data:
        steps, data = _check_data(config, problems, probe, resume)
        total_steps = steps or total_steps
    if _check_run_folder(config, problems):
        _check_history(config, problems, resume, restart)
    _check_resume(config, problems, resume, data, _resume_math(config, probe, device), allow_changed)
    _check_prompts(config, problems, probe, total_steps)
    check_optimizer(config, problems, device, total_steps)
    _check_unused(config, problems)
    return problems.items


def raise_if_errors(problems: list[Problem]) -> None:
    if any(p.severity == "error" for p in problems):
        raise ConfigError(problems)


# ---------------------------------------------------------------- helpers


def _line_map(path: str | None) -> dict[str, int]:
    from engine.config.lines import key_lines

    try:
        return key_lines(Path(path).read_text(encoding="utf-8-sig")) if path else {}
    except (OSError, UnicodeDecodeError):
        return {}


def _dataset_has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" and p.key.startswith(("datasets", "general", "dataset_config", FILE_KEY))
               for p in problems)


def _missing(package: tuple[str, str]) -> bool:
    return importlib.util.find_spec(package[0]) is None


def _check_model_options(config: RunConfig, problems: ProblemList, probe) -> None:
    """Options that depend on what the model is (the trainer and text encoder refuse the same)."""
    if probe.family is not None:
        from engine.families import family

        for key, why, hint in family(probe.family).refusals(config):
            problems.add(key, f"{family(probe.family).label}: {why}", hint)
    clip_skip, layers = config.model.clip_skip, probe.text_layers
    if layers is not None and clip_skip > layers:
        problems.add("model.clip_skip", f"model.clip_skip = {clip_skip} but the text encoder has only {layers} "
                     f"layers", f"use 1…{layers}")
    t = config.train
    if probe.v_prediction is False:
        if t.scale_v_pred_loss_like_noise_pred:
            problems.add("train.scale_v_pred_loss_like_noise_pred", "only applies to v-prediction models, and "
                         "this model predicts epsilon", "remove it, or set model.v_parameterization = true")
        if t.zero_terminal_snr:
            problems.warn("train.zero_terminal_snr", "zero terminal SNR without v-prediction cannot learn the "
                          "last timestep", "use it with a v-prediction model")


# ---------------------------------------------------------------- device, precision, packages


def _check_device(config: RunConfig, problems: ProblemList):
    """The device training picks, and what it does with CUDA-only choices (engine.train.precision)."""
    from engine.train.precision import choose_device, decide_precision

    try:
        device = choose_device(config.memory.device)
    except RuntimeError as exc:
        problems.add("memory.device", str(exc), 'use device = "auto" or "cpu"')
        return None
    try:
        precision = decide_precision(config.memory, device)
    except RuntimeError as exc:
        key = "memory.full_fp16" if config.memory.full_fp16 else "memory.mixed_precision"
        problems.add(key, str(exc))
        return device
    for note in precision.notes:
        key = "memory.vae_dtype" if note.startswith("vae_dtype") else "memory.mixed_precision"
        problems.warn(key, note)
    if config.memory.attention == "xformers" and device.type != "cuda":
        problems.warn("memory.attention", "xformers needs a CUDA GPU: using PyTorch SDPA attention instead")
    return device


def _check_packages(config: RunConfig, problems: ProblemList, device) -> None:
    needed = []
    package = needs_package(config.optimizer.type)
    if package:
        needed.append(("optimizer.type", f"{config.optimizer.type} needs", package))
    if config.memory.attention == "xformers" and device is not None and device.type == "cuda":
        needed.append(("memory.attention", "xformers attention needs", XFORMERS))
    for key, what, package in needed:
        if _missing(package):
            problems.add(key, f"{what} the package '{package[0]}', which is not installed", package[1])
    from engine.train.trackers import tracker_problems  # TensorBoard / W&B: packages and login

    for p in tracker_problems(config):
        problems.add(p.key, p.message, p.hint, p.severity)


# ---------------------------------------------------------------- data, resume, prompts


def _check_data(config: RunConfig, problems: ProblemList, probe, resume: str | None = None):
    """Every image of every subset, read as training reads it (metadata, sizes, buckets).
    Returns (the run's optimizer steps, the TrainingData) when the data is usable, else (None, None)."""
    from engine.data.pipeline import DataError, TrainingData

    blueprint = config.datasets
    if blueprint is None:
        return None, None
    data_problems = ProblemList(file=blueprint.source or config.source_path,
                                line_of=_line_map(blueprint.source) if blueprint.source else problems.line_of)
    quiet = copy.copy(config)
    quiet.train = copy.copy(config.train)
    from engine.train.seeds import seed_in_effect

    # the seed training will use (it picks held-out images); 0 for a new run: no "using seed" message
    quiet.train.seed = seed_in_effect(config, resume) or 0
    said: list[str] = []
    side = probe.default_side
    try:
        data = TrainingData.from_config(quiet, default_resolution=(side, side), log=said.append)
    except DataError as exc:
        for line in str(exc).splitlines():
            line = line.strip()
            if not line or line == "dataset problems:":
                continue
            key, sep, message = line.partition(": ")
            if sep and key.startswith(("datasets", "general")):
                data_problems.add(key, message, "fix the path or the metadata file (sdft prepare rebuilds it)")
            else:
                data_problems.add("datasets", line, "check the image folders and metadata files")
        problems.items.extend(data_problems.items)
        return None, None
    for text in said:
        if text.startswith("skipped "):
            data_problems.warn("datasets", text, "this image is left out of training")
        else:
            data_problems.add("datasets", text, "", "note")
    problems.items.extend(data_problems.items)
    if data.batches_per_epoch() == 0:
        problems.add("datasets", "the dataset yields no batches", "check the image folders and metadata files")
        return None, None
    from engine.train.schedule import resolve_schedule

    return resolve_schedule(config.train, data.batches_per_epoch()).total_steps, data


def _check_run_folder(config: RunConfig, problems: ProblemList) -> bool:
    """The run folder can be made where the file says: no file stands in its path. False when
    one does (the error names it)."""
    run_dir = config.run_dir()
    for place in (run_dir, *run_dir.parents):
        if place.is_dir():
            return True
        if place.exists() or place.is_symlink():
            key = "train.output_name" if place == run_dir else "train.output_dir"
            problems.add(key, f"{place} is a file, not a folder: the run folder {run_dir} cannot be made there",
                         "point train.output_dir at a folder (it is made when missing), or move the file")
            return False
    return True


def check_history(config: RunConfig, *, resume: str | None = None, restart: bool | None = False) -> list[Problem]:
    """:func:`preflight`'s question about an earlier run in the run folder on its own, without
    loading anything (``sdft train --tui`` asks it before the dashboard opens)."""
    problems = ProblemList(file=config.source_path, line_of=_line_map(config.source_path))
    _check_history(config, problems, resume, restart)
    return problems.items


def _check_history(config: RunConfig, problems: ProblemList, resume: str | None, restart: bool | None) -> None:
    """A start without --resume would lose an earlier run in the folder: refuse, naming both
    ways on (docs/run-folder.md, "Starting again")."""
    from engine.run_history import run_history
    from engine.runlock import read_holder

    if resume or config.train.resume or read_holder(config.run_dir()) is not None:
        return   # a live run holds the folder: training refuses with who holds it
    history = run_history(config.run_dir())
    if history is None:
        return
    source = config.source_path or "RUN.toml"
    if restart:
        problems.add("train.output_name", f"{history.describe()}: --restart keeps it in "
                     f"{history.run_dir / 'earlier'}/ and starts at step 0", "", "note")
    elif restart is None:
        problems.add("train.output_name", f"{history.describe()}", "training asks whether to resume it or "
                     "start over", "note")
    else:
        problems.add("train.output_name", f"{history.describe()}; a start without --resume would lose it",
                     history.ways_on(source))


def _resume_math(config: RunConfig, probe, device):
    """The training-maths hash a resume compares with its state's (engine/train/saves/resume.py), as
    a function of the state's seed; None when the check cannot know it (no device, no probe)."""
    if device is None or probe.v_prediction is None:
        return None
    from engine.train.precision import decide_precision
    from engine.train.saves.resume import math_hash

    try:
        mixed = decide_precision(config.memory, device).mixed_precision
    except RuntimeError:
        return None   # reported by the device check
    return lambda seed: math_hash(config, probe.v_prediction, mixed, seed)


def _check_resume(config: RunConfig, problems: ProblemList, resume: str | None, data=None, math=None,
                  allow_changed: bool = False) -> None:
    """The state a resume takes, and what training will say of it: the same verdict
    (engine/train/saves/resume_check.py) on the seed, the maths, the base model and the data."""
    from engine.train.saves.resume_check import compare, describe_inputs, read_inputs
    from engine.train.saves.state import StateError, find_state_folder, read_counters, verify_state

    value = resume or config.train.resume
    if not value:
        return
    key = "train.resume"
    try:
        folder = find_state_folder(value, config.run_dir(), config.base_dir)
    except ValueError as exc:
        problems.add(key, str(exc).removeprefix("train.resume: "), 'give a state folder (…/state/<name>-stepNNNNNNNN-state) or "latest"')
        return
    if folder is None:
        problems.add(key, f"no saved state under {config.run_dir() / 'state'} yet: training starts at step 0",
                     "", "note")
        return
    try:
        verify_state(folder)
        counters = read_counters(folder)
    except (StateError, OSError, ValueError, TypeError) as exc:
        problems.add(key, str(exc), "pick another state folder, or remove train.resume to start afresh")
        return
    problems.add(key, f"resumes from {folder} at step {counters.global_step}", "", "note")
    if data is None:
        return
    seed = config.train.seed if config.train.seed is not None else counters.seed
    verdict = compare(counters, read_inputs(folder), seed=seed, math_hash=math(counters.seed) if math else None,
                      now=describe_inputs(config, data))
    if verdict.refusals and not allow_changed:
        problems.add(key, verdict.refusal_message(folder), "or start over with --restart")
    elif verdict.refusals:
        problems.warn(key, f"resuming with --allow-changed although {', '.join(verdict.refusals)} changed")
    for note in verdict.notes:
        problems.warn(key, note)


def _check_prompts(config: RunConfig, problems: ProblemList, probe, total_steps: int | None = None) -> None:
    from engine.train.prompts import PromptError, load_prompts

    try:
        prompts = load_prompts(config.sample.prompts, base_dir=config.base_dir, default_size=probe.default_side)
    except FileNotFoundError as exc:
        problems.add("sample.prompts", str(exc), "give a .txt/.toml/.json file, or an inline list")
    except PromptError as exc:
        problem = Problem("sample.prompts", exc.reason, "sampling reads kohya's prompt syntax: see sdft's README",
                          exc.path or config.source_path, exc.line or problems.line_of.get("sample.prompts"))
        problems.items.append(problem)
    else:
        _check_samplers(config, prompts, problems)
        _check_sampling_cost(config, prompts, problems, probe, total_steps)


def _check_samplers(config: RunConfig, prompts, problems: ProblemList) -> None:
    """What makes a sampler fail at the first sample: a missing package (lms: scipy), too few steps."""
    from engine.registry.samplers import sampler_entry

    default = sampler_entry(config.sample.sampler).name
    for name in sorted({sampler_entry(p.sampler or default).name for p in prompts}):
        entry = sampler_entry(name)
        if entry.package and _missing(entry.package):
            key = "sample.sampler" if name == default else "sample.prompts"
            problems.add(key, f"the {entry.name} sampler needs the package '{entry.package[0]}', "
                         "which is not installed", entry.package[1])
    for number, p in enumerate(prompts, start=1):
        entry, steps = sampler_entry(p.sampler or default), p.steps or config.sample.steps
        if steps < entry.min_steps:
            problems.add("sample.prompts" if p.steps else "sample.steps",
                         f"prompt {number} ({p.prompt[:40]!r}) samples {steps} steps with {entry.name}, "
                         f"which needs at least {entry.min_steps}",
                         (f"--s {entry.min_steps} or more on that prompt" if p.steps else
                          f"sample.steps = {entry.min_steps} or more") + ", or another sampler")
            return


def _check_sampling_cost(config: RunConfig, prompts, problems: ProblemList, probe, total_steps: int | None) -> None:
    """Say when previews would take longer than training: each image is ``steps`` U-Net passes
    (two with guidance) at its size; each training step about three (forward and backward) per
    image of the batch at the training size. A rough ratio of work, not of seconds."""
    s = config.sample
    if not prompts or not total_steps or not s.every_n_steps:
        return   # per-epoch sampling is rarer than per-step by far: left out
    datasets = getattr(config.datasets, "datasets", None) or []
    side = probe.default_side or 512
    width, height = (datasets[0].resolution if datasets and datasets[0].resolution else (side, side))
    batch = (datasets[0].batch_size if datasets else 1) * config.train.gradient_accumulation_steps
    points = total_steps // s.every_n_steps
    per_point = sum((p.steps or s.steps) * (2 if p.scale != 1 else 1) * p.width * p.height for p in prompts)
    training = total_steps * batch * 3 * width * height
    ratio = points * per_point / training
    if ratio > 1:
        problems.warn("sample.prompts", f"sampling {len(prompts)} prompt(s) at {points} point(s) is about "
                      f"{ratio:,.0f}x the work of the {total_steps} training steps",
                      "sample less often (sample.every_n_steps), fewer prompts, or fewer steps (--s)")


# ---------------------------------------------------------------- keys that do nothing in this combination


def _check_unused(config: RunConfig, problems: ProblemList) -> None:
    from engine.preflight.inert import check_inert_options

    check_inert_options(config, problems)   # keys that need another key to act
    hyper = config.hypernetwork
    if config.train.mode == "hypernetwork" and hyper.weights and not Path(config.resolve(hyper.weights)).is_file():
        problems.add("hypernetwork.weights", f"no such file: {hyper.weights}",
                     "a .pt or .safetensors hypernetwork, or remove it to start a new one")
