"""The learning benchmark's training recipe, written as files both trainers read: sdft's run TOML,
and a kohya dataset TOML of the same training images (docs/learning-bench.md gives kohya's
command line with the same steps, learning rate, batch size and seed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Recipe:
    """What every trainer in the benchmark trains with."""

    steps: int = 600
    batch_size: int = 8
    learning_rate: float = 1e-3     # from scratch: SD fine-tuning's 1e-6..1e-4 would take hours here
    validate_every: int = 50
    seed: int = 0


RUN_TOML = """\
# sdft bench --learning: {label}, trained from random weights on the generated concepts.
config_version = 1

[model]
pretrained_model_name_or_path = {model}
clip_skip = {clip_skip}

[train]
output_dir = {runs}
output_name = {name}
max_train_steps = {steps}
seed = {seed}
validate_every_n_steps = {validate_every}
validate_every_n_epochs = {no_epoch_validation}   # past the last epoch: validation by steps only

[optimizer]
type = "AdamW"
learning_rate = {learning_rate}
lr_scheduler = "constant"
max_grad_norm = 1.0

[memory]
mixed_precision = "no"
device = "cpu"

[cache]
latents = "memory"

[save]
format = "safetensors"
precision = "float"

[logging]
every_n_steps = {validate_every}

[general]
enable_bucket = false
resolution = {side}
batch_size = {batch_size}

[[datasets]]
  [[datasets.subsets]]
  image_dir = {train_dir}
  metadata_file = {train_metadata}

  [[datasets.subsets]]
  image_dir = {held_out_dir}
  metadata_file = {held_out_metadata}
  is_val = true
"""

KOHYA_DATASET_TOML = """\
# kohya's --dataset_config for sdft bench --learning: the training images only (kohya's
# fine_tune.py has no validation loss; sdft's evaluator scores its saved model instead).
[general]
enable_bucket = false
resolution = {side}
batch_size = {batch_size}

[[datasets]]
  [[datasets.subsets]]
  image_dir = {train_dir}
  metadata_file = {train_metadata}
"""


def _quoted(value) -> str:
    """A TOML basic string (JSON's escapes are TOML's), for paths on any system."""
    return json.dumps(str(value))


def write_run_file(folder: Path, family, model_dir: Path, dataset, recipe: Recipe) -> Path:
    """``folder``/<family>.toml: sdft's run file; its run folder is ``folder``/<family>/."""
    from engine import atomic

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{family.name}.toml"
    atomic.write_text(path, RUN_TOML.format(
        label=family.label, model=_quoted(model_dir.resolve()), clip_skip=family.clip_skip,
        runs=_quoted(folder.resolve()), name=_quoted(family.name), steps=recipe.steps, seed=recipe.seed,
        validate_every=recipe.validate_every, no_epoch_validation=_epochs(recipe, dataset) + 1,
        learning_rate=recipe.learning_rate, side=dataset.side,
        batch_size=recipe.batch_size, **_dataset_paths(dataset)))
    return path


def _epochs(recipe: Recipe, dataset) -> int:
    batches = -(-len(dataset.train) // recipe.batch_size)
    return -(-recipe.steps // batches)


def write_kohya_dataset(path: Path, dataset, recipe: Recipe) -> Path:
    from engine import atomic

    atomic.write_text(path, KOHYA_DATASET_TOML.format(side=dataset.side, batch_size=recipe.batch_size,
                                                      **_dataset_paths(dataset)))
    return path


def _dataset_paths(dataset) -> dict:
    return {"train_dir": _quoted(dataset.train_dir.resolve()),
            "train_metadata": _quoted(dataset.train_metadata.resolve()),
            "held_out_dir": _quoted(dataset.held_out_dir.resolve()),
            "held_out_metadata": _quoted(dataset.held_out_metadata.resolve())}
