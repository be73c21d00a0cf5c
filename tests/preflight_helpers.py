"""Generated run files for the preflight tests: every schema key, valid and near-valid values.

``random_run_file(rng, ...)`` walks every section of the schema (``SECTIONS``, nested tables
included) and the kohya dataset tables, and gives each key, with some probability, a value
drawn from what the schema allows (choices, ranges, types) or just outside it (a wrong type,
one below the minimum, an unknown choice, a path that does not exist, kohya's old spellings).
Paths point into a small fixture folder made by ``make_fixture``.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import tomlkit
from PIL import Image

from engine.config.dataset import DATASET_LEVEL, SUBSET_LEVEL, SUBSET_ONLY
from engine.config.schema import SECTIONS

PROMPT = "a red square --w 64 --h 64 --s 1 --d 3"


def make_fixture(folder: Path, model: Path) -> Path:
    """Images, metadata files (absolute and folder-relative keys) and prompt files."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    meta, relative = {}, {}
    masks = folder / "masks"           # one mask per image, left half zero (masked loss)
    masks.mkdir(exist_ok=True)
    for i, (w, h) in enumerate([(64, 64), (96, 64), (64, 96), (80, 80)]):
        Image.new("RGB", (w, h), ((i * 60) % 255, 90, 140)).save(images / f"im{i}.png")
        mask = Image.new("L", (w, h), 255)
        mask.paste(0, (0, 0, w // 2, h))
        mask.save(masks / f"im{i}.png")
        (images / f"im{i}.txt").write_text(f"tag{i}, red")
        meta[str(images / f"im{i}.png")] = {"caption": f"picture {i}", "tags": f"tag{i}, red, blue"}
        relative[f"im{i}"] = {"caption": f"picture {i}", "train_resolution": [64, 64]}
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "meta_rel.json").write_text(json.dumps(relative))   # needs image_dir
    (folder / "prompts.txt").write_text(f"# previews\n{PROMPT}\n")
    (folder / "prompts.toml").write_text('[prompt]\nwidth = 64\nheight = 64\nsample_steps = 1\n\n'
                                         '[[prompt.subset]]\nprompt = "a cat"\n')
    (folder / "prompts.json").write_text(json.dumps([{"prompt": "a dog", "width": 64, "height": 64,
                                                      "sample_steps": 1}]))
    (folder / "bad_prompts.txt").write_text("a cat --ss dpm_fancy --w 64\n")
    (folder / "model_path.txt").write_text(str(model))
    return folder


# Per key: (valid values, near-valid values) where the schema alone does not say enough.
SPECIAL = {
    "model.pretrained_model_name_or_path": (["{model}"], ["no-such-model.safetensors", "someone/some-model"]),
    "model.vae": ([None, None, "{model}/vae"], ["no-such-vae"]),
    "model.tokenizer_dir": ([None, None, "{model}/tokenizer"], ["no-such-tokenizer"]),
    "model.v2": (["auto", "auto", False, True], ["yes"]),
    "model.v_parameterization": (["auto", "auto", False, True], ["maybe"]),
    "model.clip_skip": ([1, 2, 3], [0]),
    "train.output_dir": (["{fixture}/runs"], []),
    "train.max_train_steps": ([1, 2, 3], [0]),
    "train.max_train_epochs": ([None, 1, 2], [0]),
    "train.resume": ([None, "latest"], ["no-such-state"]),
    "train.min_timestep": ([0, 100, 999], [-1]),
    "train.max_timestep": ([1000, 500, 1], [1001]),
    "train.multires_noise_iterations": ([0, 2, 6], [-1]),
    "train.stop_text_encoder_training": ([None, 1, 2], [0]),
    "optimizer.args": ([{}, {"weight_decay": 0.01}, {"betas": [0.9, 0.95]}], [{"bogus_arg": 1}, {"eps": "tiny"}]),
    "optimizer.lr_scheduler_args": ([{}, {"lr_end": 1e-7}, {"num_cycles": 0.25}, {"last_epoch": -1}],
                                    [{"last_epoch": 3}, {"bogus": 1}, {"power": 2.0}]),
    "optimizer.learning_rate": ([1e-4, 1e-5], [-1.0]),
    "optimizer.lr_warmup_steps": ([0, 1, 0.1], [1.5, -1]),
    "cache.cache_dir": ([None, "{fixture}/latents"], []),
    "data.caption_extension": ([".caption", ".txt"], []),
    "data.tags_extension": ([".txt", ".tags"], []),
    "data.caption_tags_join": (["separator", "comma_space", " | "], []),
    "data.use_train_resolution": (["auto", True, False], ["sometimes"]),
    "data.num_workers": ([0, 1, 2], [-1]),
    "sample.prompts": ([None, [PROMPT], "prompts.txt", "prompts.toml", "prompts.json"],
                       ["bad_prompts.txt", "missing_prompts.txt", ["a cat --ss nope"]]),
    "sample.steps": ([1, 2], [0]),
    "sample.every_n_steps": ([None, 1], [0]),
    "save.every_n_steps": ([None, 1], [0]),
    "save.n_epoch_ratio": ([None, None, None, 3], [0]),   # mostly unset: it refuses every_n_epochs beside it
    "logging.logging_dir": ([None, None, "logs"], []),
    "logging.log_with": ([None, None, None, "tensorboard", "wandb", "all"], ["mlflow"]),
    "hypernetwork.weights": ([None], ["no-such-hypernetwork.pt"]),
    "memory.dynamo_backend": (["eager", "aot_eager", "inductor"], ["turbo"]),
}


def _candidates(section: str, name: str, field, hint) -> tuple[list, list]:
    """(valid, near-valid) values for one schema key, from the schema's types, choices and ranges."""
    key = f"{section}.{name}"
    if key in SPECIAL:
        return SPECIAL[key]
    meta = field.metadata
    choices = meta.get("choices")
    if choices:
        return list(choices), ["not-a-choice"]
    base = typing.get_args(hint) or (hint,)
    if bool in base:
        return [True, False], ["true"]
    if int in base:
        low = int(meta.get("min") or 0)
        high = int(meta["max"]) if meta.get("max") is not None else low + 3
        return [low, min(high, low + 1), min(high, low + 2)], [low - 1, "2"]
    if float in base:
        low = float(meta.get("min") or 0.0)
        high = float(meta["max"]) if meta.get("max") is not None else low + 1.0
        return [low, (low + high) / 2, high], [low - 0.5, "0.5"]
    if str in base:
        return ([None, "some text"] if type(None) in base else ["some text"]), [3]
    return [field.default], []


def _fill(value, fixture: Path, model: Path):
    if isinstance(value, str):
        return value.format(fixture=fixture, model=model)
    return value


@functools.cache
def _hints(cls) -> dict:
    """A schema dataclass's resolved type hints (resolving them per file was most of the drawing)."""
    return typing.get_type_hints(cls)


def _section(rng: random.Random, name: str, cls, fixture: Path, model: Path, share: float, bad: set) -> dict:
    hints = _hints(cls)
    table = {}
    for f in fields(cls):
        hint = hints[f.name]
        if is_dataclass(hint):                      # nested table, e.g. [save.metadata]
            nested = _section(rng, f"{name}.{f.name}", hint, fixture, model, share, bad)
            if nested:
                table[f.name] = nested
            continue
        key = f"{name}.{f.name}"
        always = key in ("model.pretrained_model_name_or_path", "train.output_dir", "train.max_train_steps")
        if always or rng.random() < share or key in bad:
            valid, near = _candidates(name, f.name, f, hint)
            value = rng.choice(near if key in bad and near else valid)
            if value is not None:
                table[f.name] = _fill(value, fixture, model)
    return table


def schema_keys() -> list[str]:
    """Every dotted key of every schema section, nested tables included."""
    return list(_schema_keys())


@functools.cache
def _schema_keys() -> tuple[str, ...]:
    def walk(prefix: str, cls) -> list[str]:
        hints = _hints(cls)
        out = []
        for f in fields(cls):
            if is_dataclass(hints[f.name]):
                out += walk(f"{prefix}.{f.name}", hints[f.name])
            else:
                out.append(f"{prefix}.{f.name}")
        return out

    return tuple(key for name, cls in SECTIONS.items() for key in walk(name, cls))


# Dataset keys: (valid, near-valid) values; sizes fit the 64-96 px fixture images.
DATASET_VALUES = {
    "batch_size": ([1, 2, 3], [0]), "resolution": ([64, 64, 96, [64, 96], 100, 72], [0, "64"]),
    "enable_bucket": ([True, False], []), "bucket_no_upscale": ([True, False], []),
    "min_bucket_reso": ([32, 64, 70], [4096]), "max_bucket_reso": ([128, 160, 200], [16]),
    "bucket_reso_steps": ([64, 32, 8], [12, 0]), "network_multiplier": ([1.0], [0.5]),
    "validation_split": ([0.0, 0.25], [1.0, 2.0]), "validation_seed": ([3], ["3"]),
    "num_repeats": ([1, 2], [0]), "keep_tokens": ([0, 1], [-1]), "token_warmup_min": ([1, 2], []),
    "caption_dropout_every_n_epochs": ([0, 1], []), "token_warmup_step": ([0, 0.5, 2], []),
    "caption_dropout_rate": ([0.0, 0.2], [1.5]), "caption_tag_dropout_rate": ([0.0, 0.3], []),
    "shuffle_caption": ([True, False], ["yes"]), "enable_wildcard": ([True, False], []),
    "flip_aug": ([True, False], []), "color_aug": ([True, False], []), "random_crop": ([True, False], []),
    "caption_separator": ([",", ";"], []), "keep_tokens_separator": (["", "|||"], []),
    "secondary_separator": ([";;;"], []), "caption_prefix": (["masterpiece"], []),
    "caption_suffix": (["best quality"], []), "resize_interpolation": (["lanczos", "area"], ["sinc"]),
    "face_crop_aug_range": ([[2.0, 4.0]], [[4.0, 2.0]]), "custom_attributes": ([{"a": 1}], []),
    "alpha_mask": ([False, True], []), "caption_extention": ([], [".txt"]), "is_val": ([False], []),
    "caption_from_filename": ([True, False], []),
}
SUBSETS = ([{"metadata_file": "meta.json"}, {"metadata_file": "meta_rel.json", "image_dir": "images"}],
           [{"metadata_file": "meta_rel.json"},                   # relative keys without image_dir
            {"metadata_file": "no-such-meta.json"}, {"metadata_file": "meta.json", "image_dir": "no-such-images"}])


def _dataset_table(rng: random.Random, allowed, share: float, prefix: str, bad: set) -> dict:
    table = {}
    for k in allowed:
        if k not in DATASET_VALUES:
            continue
        valid, near = DATASET_VALUES[k]
        if f"{prefix}.{k}" in bad and near:
            table[k] = rng.choice(near)
        elif valid and rng.random() < share:
            table[k] = rng.choice(valid)
    return table


def random_run_file(rng: random.Random, index: int, fixture: Path, model: Path, share: float = 0.12) -> str:
    """One run file. Half of the files hold only valid values (their combinations may still be
    wrong); the other half also hold one to three near-valid values."""
    keys = schema_keys() + [f"{level}.{k}" for level in ("general", "dataset", "subset") for k in DATASET_VALUES]
    keys += ["subset.files", "config_version", "data.caption_extention"]
    bad = set(rng.sample(keys, rng.randint(1, 3))) if rng.random() < 0.5 else set()
    doc = {"config_version": 2 if "config_version" in bad else 1}
    for name, cls in SECTIONS.items():
        table = _section(rng, name, cls, fixture, model, share, bad)
        if table:
            doc[name] = table
    doc["train"]["output_name"] = f"run{index:03d}"
    memory = doc.get("memory", {})
    if memory.get("torch_compile") and memory.get("dynamo_backend", "inductor") == "inductor":
        memory["dynamo_backend"] = "eager"   # inductor builds C++ for minutes per file on a CPU
    if "data.caption_extention" in bad or rng.random() < 0.05:
        doc["data"] = {**doc.get("data", {}), "caption_extention": ".txt"}   # kohya's old spelling: a note
    general = _dataset_table(rng, DATASET_LEVEL + SUBSET_LEVEL, share, "general", bad)
    general.setdefault("resolution", 64)
    general.setdefault("min_bucket_reso", 64)   # kohya's 256 is above the fixture's 64 px resolution
    dataset = _dataset_table(rng, DATASET_LEVEL + SUBSET_LEVEL, share / 2, "dataset", bad)
    subset = _dataset_table(rng, (*SUBSET_LEVEL, *SUBSET_ONLY, "caption_extention"), share / 2, "subset", bad)
    subset.update(rng.choice(SUBSETS[1] if "subset.files" in bad else SUBSETS[0]))
    dataset["subsets"] = [subset]
    doc["general"] = general
    doc["datasets"] = [dataset]
    _drop_most_idle_keys(rng, doc)
    return tomlkit.dumps(doc)


def _drop_most_idle_keys(rng: random.Random, doc: dict) -> None:
    """Keys drawn independently often land without the key they need (huber_c without a Huber
    loss), which --check refuses; keep about one in seven of them so the files also exercise
    the combinations that act."""
    from engine.config.problems import ProblemList
    from engine.config.run_toml import build_run_config
    from engine.preflight.inert import check_inert_options

    for _round in range(3):
        # the plain values a parse of tomlkit.dumps(doc) gives back, without the round trip
        config = build_run_config(copy.deepcopy(doc), ProblemList(file="random.toml"), base_dir=Path("."))
        idle = ProblemList(file="random.toml")
        check_inert_options(config, idle)
        dropped = False
        for problem in idle.items:
            if rng.random() < 0.85:
                section, *names = problem.key.split(".")
                table = doc.get(section, {})
                for name in names[:-1]:
                    table = table.get(name, {})
                dropped |= table.pop(names[-1], None) is not None
        if not dropped:
            return
