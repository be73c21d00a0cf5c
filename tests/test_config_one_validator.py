"""One validator: the dataset tables' keys are declared and checked like the run file's keys, and
they stand where kohya's fine-tuning and DreamBooth methods let them stand."""

from __future__ import annotations

import typing

import pytest

from engine.config.dataset import DATASET_LEVEL, FILE_KEYS, SUBSET_LEVEL, SUBSET_ONLY, parse_dataset_tables
from engine.config.dataset_specs import DatasetSpec, SubsetSpec
from engine.config.fields import check_value, is_text
from engine.config.problems import ProblemList
from engine.config.run_toml import collect_run_text

# kohya-ss/sd-scripts library/config_util.py, ConfigSanitizer with support_finetuning and
# support_dropout (fine_tune.py's sanitizer): the keys of the fine-tuning method and their types.
KOHYA_DATASET_ASCENDABLE = {"batch_size": int, "bucket_no_upscale": bool, "bucket_reso_steps": int,
                            "enable_bucket": bool, "max_bucket_reso": int, "min_bucket_reso": int,
                            "validation_seed": int, "validation_split": float, "resolution": "int or [w, h]",
                            "network_multiplier": float, "resize_interpolation": str}
KOHYA_SUBSET_ASCENDABLE = {"color_aug": bool, "face_crop_aug_range": "[float, float]", "flip_aug": bool,
                           "num_repeats": int, "random_crop": bool, "shuffle_caption": bool, "keep_tokens": int,
                           "keep_tokens_separator": str, "secondary_separator": str, "caption_separator": str,
                           "enable_wildcard": bool, "token_warmup_min": int, "token_warmup_step": float,
                           "caption_prefix": str, "caption_suffix": str, "custom_attributes": dict,
                           "resize_interpolation": str, "caption_dropout_every_n_epochs": int,
                           "caption_dropout_rate": float, "caption_tag_dropout_rate": float}
KOHYA_FT_SUBSET_DISTINCT = {"metadata_file": str, "image_dir": str, "alpha_mask": bool}
# ... and the DreamBooth method's (train_db.py's sanitizer): sdft reads folder subsets too
KOHYA_DB_SUBSET_ASCENDABLE = {"caption_extension": str, "class_tokens": str, "cache_info": bool}
KOHYA_DB_SUBSET_DISTINCT = {"image_dir": str, "is_reg": bool, "alpha_mask": bool}
SDFT_OWN = {"caption_from_filename", "is_val", "conditioning_data_dir"}   # documented in docs/formats.md
SAMPLE = {int: 2, float: 0.25, bool: True, str: "lanczos", dict: {"a": 1}}


def test_placement_matches_kohyas_fine_tuning_and_dreambooth_schemas():
    ascendable_in_subsets = set(KOHYA_SUBSET_ASCENDABLE) | set(KOHYA_DB_SUBSET_ASCENDABLE)
    dataset_only = set(KOHYA_DATASET_ASCENDABLE) - ascendable_in_subsets
    assert set(DATASET_LEVEL) == dataset_only
    assert set(SUBSET_LEVEL) - SDFT_OWN == ascendable_in_subsets
    assert set(SUBSET_ONLY) - SDFT_OWN == set(KOHYA_FT_SUBSET_DISTINCT) | set(KOHYA_DB_SUBSET_DISTINCT)
    assert set(FILE_KEYS) == set(DATASET_LEVEL) | set(SUBSET_LEVEL) | set(SUBSET_ONLY)


KOHYA_KEYS = {**KOHYA_DATASET_ASCENDABLE, **KOHYA_SUBSET_ASCENDABLE, **KOHYA_FT_SUBSET_DISTINCT,
              **KOHYA_DB_SUBSET_ASCENDABLE, **KOHYA_DB_SUBSET_DISTINCT}


@pytest.mark.parametrize("name", sorted(KOHYA_KEYS))
def test_every_value_kohya_accepts_is_accepted(name):
    kind = KOHYA_KEYS[name]
    values = {"int or [w, h]": [512, [768, 512]], "[float, float]": [[2.0, 4.0]]}.get(kind, [SAMPLE.get(kind)])
    if name == "network_multiplier":
        values = [1.0]                     # sdft fine-tunes the model: only kohya's default does nothing
    if name == "cache_info":
        values = [False]                   # sdft reads sizes from the headers: only kohya's default does nothing
    if name == "caption_extension":
        values = [".txt", ".caption"]      # appended to the image's name: with the dot, as kohya's users write it
    for value in values:
        kept, problem = check_value(*FILE_KEYS[name], value)
        assert problem is None, (name, value, problem)
        assert kept is not None


def test_each_file_key_is_a_documented_spec_field():
    for name, (spec, hint) in FILE_KEYS.items():
        owner = DatasetSpec if name in DATASET_LEVEL else SubsetSpec
        assert typing.get_type_hints(owner)[name] == hint
        assert spec.metadata["doc"].strip(), f"{name} needs its help text"
    assert is_text(FILE_KEYS["image_dir"][1]) and is_text(FILE_KEYS["caption_prefix"][1])
    assert not is_text(FILE_KEYS["resolution"][1])


def _dataset_errors(general: dict) -> dict[str, str]:
    problems = ProblemList(file="ds.toml")
    parse_dataset_tables({"general": general, "datasets": []}, problems=problems)
    return {p.key: p.message for p in problems.items if p.severity == "error" and p.key.startswith("general.")}


def _run_errors(text: str) -> dict[str, str]:
    _config, _doc, problems = collect_run_text(text + '\n[[datasets]]\n[[datasets.subsets]]\nmetadata_file = "m.json"\n')
    return {p.key: p.message for p in problems.items if p.severity == "error" and "datasets" not in p.key}


def test_the_same_mistake_reads_the_same_in_both_tables():
    dataset = _dataset_errors({"num_repeats": "2", "shuffle_caption": "yes", "caption_dropout_rate": 2.0})
    run = _run_errors('[train]\nmax_train_steps = "2"\nweighted_captions = "yes"\n'
                      '[optimizer]\nlr_scheduler_min_lr_ratio = 2.0\n')
    assert dataset["general.num_repeats"] == run["train.max_train_steps"] == "must be an integer, got '2'"
    assert dataset["general.shuffle_caption"] == run["train.weighted_captions"] == "must be true or false, got 'yes'"
    assert dataset["general.caption_dropout_rate"] == run["optimizer.lr_scheduler_min_lr_ratio"] == \
        "must be at most 1.0, got 2.0"


def test_not_a_number_is_refused_in_both_tables():
    assert _dataset_errors({"token_warmup_step": float("nan")})["general.token_warmup_step"].startswith(
        "must be a finite number")
    assert _run_errors("[optimizer]\nlearning_rate = nan\n")["optimizer.learning_rate"].startswith(
        "must be a finite number")
    assert _run_errors("[train]\nnoise_offset = inf\n")["train.noise_offset"].startswith("must be a finite number")


def test_values_are_kept_in_the_specs_shape():
    problems = ProblemList(file="ds.toml")
    tables = {"general": {"resolution": 640, "token_warmup_step": 2, "face_crop_aug_range": [2, 4]},
              "datasets": [{"resolution": [768, 512], "subsets": []}]}
    from engine.config.dataset_keys import validate_table

    good = validate_table(tables["general"], "general", DATASET_LEVEL + SUBSET_LEVEL, "general", problems)
    assert good == {"resolution": (640, 640), "token_warmup_step": 2.0, "face_crop_aug_range": (2.0, 4.0)}
    assert isinstance(good["token_warmup_step"], float)
    bad = _dataset_errors({"resolution": [0, 512], "face_crop_aug_range": [4, 2], "resize_interpolation": "sinc"})
    assert bad["general.resolution"] == "must be positive, got [0, 512]"
    assert bad["general.face_crop_aug_range"] == "low must not exceed high, got [4, 2]"
    assert bad["general.resize_interpolation"].startswith("must be one of 'lanczos'")
