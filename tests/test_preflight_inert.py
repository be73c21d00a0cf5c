"""A key set to a value that changes nothing (huber_c without a Huber loss, EMA settings without
EMA, a warm-up on the constant schedule, ...) is refused with the setting it needs; the same key
is accepted once that setting is there, and a key left at its default is never refused (kohya
writes every default into its config files)."""

from __future__ import annotations

import pytest
import tomlkit

from engine.config.problems import ProblemList
from engine.config.run_toml import collect_run_text
from engine.preflight.inert import RULES, check_inert_options

PROMPTS = {"sample": {"prompts": ["a cat"], "every_n_steps": 5}}
# key -> (a value that is not its default, the settings that make it act)
CASES = {
    "memory.dynamo_backend": ("eager", {"memory": {"torch_compile": True}}),
    "memory.stochastic_rounding": (False, {"memory": {"mixed_precision": "bf16", "full_bf16": True}}),
    "train.noise_offset_random_strength": (True, {"train": {"noise_offset": 0.1}}),
    "train.adaptive_noise_scale": (0.01, {"train": {"noise_offset": 0.1}}),
    "train.multires_noise_discount": (0.5, {"train": {"multires_noise_iterations": 6}}),
    "train.ip_noise_gamma_random_strength": (True, {"train": {"ip_noise_gamma": 0.1}}),
    "train.huber_schedule": ("constant", {"train": {"loss_type": "huber"}}),
    "train.huber_c": (0.2, {"train": {"loss_type": "smooth_l1"}}),
    "train.huber_scale": (2.0, {"train": {"loss_type": "huber", "huber_schedule": "exponential"}}),
    "train.ema_decay": (0.99, {"train": {"ema": True}, "save": {"use_ema": True}}),
    "train.ema_update_every": (2, {"train": {"ema": True}, "save": {"use_ema": True}}),
    "train.ema_cpu_offload": (True, {"train": {"ema": True}, "save": {"use_ema": True}}),
    "save.use_ema": (True, {"train": {"ema": True}}),
    "train.ema": (True, {"save": {"use_ema": True}}),
    "sample.use_ema": (False, {"train": {"ema": True}, "save": {"use_ema": True}, **PROMPTS}),
    "sample.every_n_steps": (3, {"sample": {"prompts": ["a cat"]}}),
    "sample.every_n_epochs": (1, {"sample": {"prompts": ["a cat"]}}),
    "sample.at_first": (True, {"sample": {"prompts": ["a cat"]}}),
    "sample.sampler": ("euler", PROMPTS),
    "sample.steps": (8, PROMPTS),
    "sample.prompts": (["a cat"], {"sample": {"at_first": True}}),
    "save.last_n_steps": (2, {"save": {"every_n_steps": 10}}),
    "save.last_n_epochs": (2, {"save": {"every_n_epochs": 1}}),
    "save.every_n_epochs": (2, {}),       # acts once n_epoch_ratio is gone (set below)
    "optimizer.learning_rate_te": (1e-6, {"train": {"train_text_encoder": True}}),
    "optimizer.learning_rate_te1": (1e-6, {"train": {"train_text_encoder": True}}),
    "optimizer.learning_rate_te2": (1e-6, {"train": {"train_text_encoder": True}}),
    "train.stop_text_encoder_training": (10, {"train": {"train_text_encoder": True}}),
    "optimizer.lr_warmup_steps": (10, {"optimizer": {"lr_scheduler": "constant_with_warmup"}}),
    "optimizer.lr_scheduler_num_cycles": (3, {"optimizer": {"lr_scheduler": "cosine_with_restarts"}}),
    "optimizer.lr_scheduler_power": (2.0, {"optimizer": {"lr_scheduler": "polynomial"}}),
    "optimizer.lr_scheduler": ("cosine", {}),
    "optimizer.lr_decay_steps": (20, {"optimizer": {"lr_scheduler": "warmup_stable_decay"}}),
    "optimizer.lr_scheduler_min_lr_ratio": (0.1, {"optimizer": {"lr_scheduler": "cosine_with_min_lr"}}),
    "optimizer.lr_scheduler_timescale": (500, {"optimizer": {"lr_scheduler": "inverse_sqrt"}}),
    "train.max_train_steps": (500, {}),   # acts once max_train_epochs is gone (set below)
    "cache.cache_dir": ("latents", {"cache": {"latents": "disk"}}),
    "cache.verify": ("exists", {"cache": {"latents": "disk"}}),
    "cache.dtype": ("float16", {"cache": {"latents": "memory"}}),
    "train.masked_loss": (True, {"subset": {"alpha_mask": True}}),
    "train.validate_every_n_steps": (10, {"general": {"validation_split": 0.25}}),
    "train.validate_every_n_epochs": (2, {"general": {"validation_split": 0.25}}),
    "train.max_validation_steps": (4, {"subset": {"is_val": True}}),
    "hypernetwork.learning_rate": (1e-5, {"train": {"mode": "hypernetwork"}}),
    "hypernetwork.save_format": ("safetensors", {"train": {"mode": "hypernetwork"}}),
    "hypernetwork.weights": ("old.pt", {"train": {"mode": "hypernetwork"}}),
}
# what turns each rule's settings off in the refused case, where the defaults do not
IDLE = {
    "optimizer.lr_scheduler": {"optimizer": {"lr_scheduler_type": "StepLR"}},
    "train.max_train_steps": {"train": {"max_train_epochs": 2}},
    "save.every_n_epochs": {"save": {"n_epoch_ratio": 3}},
    "cache.cache_dir": {"cache": {"latents": "memory"}},
    "cache.verify": {"cache": {"latents": "none"}},
    "cache.dtype": {"cache": {"latents": "none"}},
}


@pytest.fixture(scope="module", autouse=True)
def _dataset_folder(tmp_path_factory):
    """A subset that resolves (so rules reading the dataset see it): "subset" keys go into it."""
    global DATA
    DATA = tmp_path_factory.mktemp("inert")
    (DATA / "images").mkdir()
    (DATA / "meta.json").write_text("{}")


def _problems(sections: dict) -> list:
    sections = dict(sections)
    subset = {"image_dir": "images", "metadata_file": "meta.json", **sections.pop("subset", {})}
    doc = {"model": {"pretrained_model_name_or_path": "m"}, **sections, "datasets": [{"subsets": [subset]}]}
    config, _document, _schema = collect_run_text(tomlkit.dumps(doc), file="run.toml", base_dir=DATA)
    problems = ProblemList(file="run.toml")
    check_inert_options(config, problems)
    return problems.items


def test_a_mask_folder_needs_masked_loss_and_an_alpha_mask_says_it_acts_alone():
    (DATA / "masks").mkdir(exist_ok=True)
    folder = [p for p in _problems({"subset": {"conditioning_data_dir": "masks"}})
              if p.key.endswith("conditioning_data_dir")]
    assert folder and folder[0].severity == "error" and "train.masked_loss" in folder[0].message
    assert not _problems({"subset": {"conditioning_data_dir": "masks"}, "train": {"masked_loss": True}})
    alpha = [p for p in _problems({"subset": {"alpha_mask": True}}) if p.key.endswith("alpha_mask")]
    assert [p.severity for p in alpha] == ["note"] and "even without train.masked_loss" in alpha[0].message


def _with(sections: dict, key: str, value) -> dict:
    out = {name: dict(table) for name, table in sections.items()}
    section, name = key.split(".", 1)
    out.setdefault(section, {})[name] = value
    return out


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for name, table in part.items():
            out[name] = {**out.get(name, {}), **table}
    return out


def test_every_rule_key_has_a_case():
    keys = {key for rule in RULES for key in rule.keys}
    assert keys == set(CASES), (sorted(keys - set(CASES)), sorted(set(CASES) - keys))


@pytest.mark.parametrize("key", sorted(CASES))
def test_refused_alone_accepted_with_what_it_needs(key):
    value, needs = CASES[key]
    refused = [p for p in _problems(_with(IDLE.get(key, {}), key, value)) if p.key == key]
    assert refused and refused[0].severity == "error", f"{key} = {value!r} alone is not refused"
    assert "has no effect without" in refused[0].message and refused[0].hint
    accepted = _problems(_with(_merge(needs), key, value))
    assert not accepted, [str(p) for p in accepted]


def test_defaults_written_out_are_never_refused():
    from engine.preflight.inert import _default

    written = {}
    for key in CASES:
        default = _default(key)
        if default is not None:
            written = _with(written, key, default)
    assert len(written) >= 5 and not _problems(written), [str(p) for p in _problems(written)]
