"""kohya dataset TOML: merge order, every rejection at once with key, line and hint."""

import json

import pytest
from fresh_process import snippet

from engine.config.dataset import load_dataset_file, parse_dataset_tables
from engine.config.problems import ConfigError, ProblemList


@pytest.fixture()
def meta(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "meta.json").write_text("{}", encoding="utf-8")
    (tmp_path / "meta2.json").write_text("{}", encoding="utf-8")
    return tmp_path


def load(tmp_path, text):
    f = tmp_path / "ds.toml"
    f.write_text(text, encoding="utf-8")
    problems = ProblemList(file="run.toml")
    bp = load_dataset_file(f, problems)
    return bp, problems


def test_merge_order_subset_dataset_general_default(meta):
    bp, problems = load(meta, """
[general]
shuffle_caption = true
keep_tokens = 2
batch_size = 3
caption_separator = ";"

[[datasets]]
resolution = [768, 512]
keep_tokens = 1
enable_bucket = true

  [[datasets.subsets]]
  metadata_file = "meta.json"
  image_dir = "imgs"
  keep_tokens = 0

  [[datasets.subsets]]
  metadata_file = "meta2.json"
  image_dir = "imgs"
""")
    assert not problems.has_errors, problems.items
    ds = bp.datasets[0]
    assert ds.batch_size == 3 and ds.resolution == (768, 512) and ds.enable_bucket
    assert ds.min_bucket_reso == 256 and ds.max_bucket_reso == 1024 and ds.bucket_reso_steps == 64
    a, b = ds.subsets
    assert a.keep_tokens == 0 and b.keep_tokens == 1            # subset > dataset > general
    assert a.shuffle_caption and a.caption_separator == ";"    # general
    assert a.num_repeats == 1 and a.caption_dropout_rate == 0.0  # defaults
    assert a.metadata_file == meta / "meta.json" and a.image_dir == meta / "imgs"
    assert a.key == "datasets[0].subsets[0]"


def test_int_resolution_is_square(meta):
    bp, problems = load(meta, '[[datasets]]\nresolution = 640\n[[datasets.subsets]]\nmetadata_file = "meta.json"\n')
    assert bp.datasets[0].resolution == (640, 640)


def test_every_problem_reported_at_once_with_lines_and_hints(meta):
    text = """[general]
shuffle_captions = true
metadata_file = "meta.json"

[[datasets]]
batch_size = 0
bucket_reso_steps = 12
resolution = "512"
flip_aug = "yes"

  [[datasets.subsets]]
  image_dir = "imgs"
  class_tokens = "sks dog"
  caption_dropout_rate = 1.5
  batch_size = 2

  [[datasets.subsets]]
  metadata_file = "missing.json"
  keep_tokens = 1.5
  class_tokens = "sks dog"
"""
    bp, problems = load(meta, text)
    errors = {p.key: p for p in problems.items if p.severity == "error"}
    expected = {
        "general.shuffle_captions": 2,
        "general.metadata_file": 3,
        "datasets[0].batch_size": 6,
        "datasets[0].bucket_reso_steps": 7,
        "datasets[0].resolution": 8,
        "datasets[0].flip_aug": 9,
        "datasets[0].subsets[0].caption_dropout_rate": 14,   # subsets[0] is a folder subset: class_tokens fits
        "datasets[0].subsets[0].batch_size": 15,
        "datasets[0].subsets[1].metadata_file": 18,
        "datasets[0].subsets[1].keep_tokens": 19,
        "datasets[0].subsets[1].class_tokens": 20,   # a folder subset's key beside a metadata file
    }
    assert set(errors) == set(expected)
    for key, line in expected.items():
        assert errors[key].line == line, key
        assert errors[key].file.endswith("ds.toml")
        assert errors[key].hint, key
    assert 'did you mean "shuffle_caption"' in errors["general.shuffle_captions"].hint
    assert "drop metadata_file" in errors["datasets[0].subsets[1].class_tokens"].hint
    assert "sdft prepare" in errors["datasets[0].subsets[1].metadata_file"].hint
    assert "only allowed inside" in errors["general.metadata_file"].message
    assert "dataset-level" in errors["datasets[0].subsets[0].batch_size"].message
    # problems.file is restored for the caller (the run TOML)
    assert problems.file == "run.toml"
    with pytest.raises(ConfigError) as err:
        problems.raise_if_errors()
    assert "ds.toml:19" in str(err.value)


def test_top_level_keys_and_bucket_limits(meta):
    bp, problems = load(meta, """
dataset_class = "x"
[[datasets]]
enable_bucket = true
resolution = 512
min_bucket_reso = 600
max_bucket_reso = 400
[[datasets.subsets]]
metadata_file = "meta.json"
""")
    keys = [p.key for p in problems.items if p.severity == "error"]
    assert "dataset_class" in keys
    msgs = " | ".join(p.message for p in problems.items)
    assert "larger than the resolution's short side" in msgs
    assert "smaller than the resolution's long side" in msgs


def test_runtime_warnings(meta):
    bp, problems = load(meta, """
[[datasets]]
bucket_reso_steps = 32
validation_split = 0
[[datasets.subsets]]
metadata_file = "meta.json"
num_repeats = 0
[[datasets.subsets]]
metadata_file = "meta2.json"
[[datasets.subsets]]
metadata_file = "meta2.json"
alpha_mask = true
""")
    assert not problems.has_errors, problems.items
    warnings = " | ".join(p.message for p in problems.items if p.severity == "warning")
    assert "not a multiple of 64" in warnings
    assert "subset skipped" in warnings               # num_repeats 0 and the duplicate metadata file
    assert [s.metadata_file.name for s in bp.datasets[0].subsets] == ["meta2.json"]
    assert bp.datasets[0].validation_split == 0


def test_keys_for_features_sdft_lacks_are_refused_away_from_their_default(meta):
    _bp, problems = load(meta, """
[[datasets]]
validation_split = 1.0
network_multiplier = 0.5
[[datasets.subsets]]
metadata_file = "meta.json"
""")
    errors = {p.key.rsplit(".", 1)[-1]: p.message for p in problems.items if p.severity == "error"}
    assert "LoRA" in errors["network_multiplier"]
    assert "nothing would be left to train" in errors["validation_split"]


def test_validation_and_mask_keys_resolve(meta):
    (meta / "masks").mkdir()
    bp, problems = load(meta, """
[general]
validation_split = 0.25
validation_seed = 9
[[datasets]]
[[datasets.subsets]]
metadata_file = "meta.json"
conditioning_data_dir = "masks"
[[datasets.subsets]]
metadata_file = "meta2.json"
is_val = true
alpha_mask = true
""")
    assert not problems.has_errors, problems.items
    ds = bp.datasets[0]
    assert (ds.validation_split, ds.validation_seed) == (0.25, 9)
    first, second = ds.subsets
    assert first.conditioning_data_dir == meta / "masks" and first.mask_source == "folder" and not first.is_val
    assert second.is_val and second.mask_source == "alpha" and second.conditioning_data_dir is None


def test_a_missing_mask_folder_and_two_mask_sources_are_refused(meta):
    (meta / "masks").mkdir()
    _bp, problems = load(meta, """
[[datasets]]
[[datasets.subsets]]
metadata_file = "meta.json"
conditioning_data_dir = "no-such-masks"
[[datasets.subsets]]
metadata_file = "meta2.json"
conditioning_data_dir = "masks"
alpha_mask = true
""")
    errors = {p.key: p.message for p in problems.items if p.severity == "error"}
    assert "mask folder not found" in errors["datasets[0].subsets[0].conditioning_data_dir"]
    assert "both give the mask" in errors["datasets[0].subsets[1].alpha_mask"]


def test_json_dataset_file(meta):
    f = meta / "ds.json"
    f.write_text(json.dumps({"datasets": [{"subsets": [{"metadata_file": "meta.json", "image_dir": "imgs"}]}]}))
    problems = ProblemList()
    bp = load_dataset_file(f, problems)
    assert not problems.has_errors and bp.datasets[0].subsets[0].image_dir == meta / "imgs"


def test_inline_tables_use_callers_lines(meta):
    problems = ProblemList(file="run.toml", line_of={"datasets[0].subsets[0]": 7})
    parse_dataset_tables({"datasets": [{"subsets": [{"is_reg": True, "metadata_file": "meta.json"}]}]},
                         problems=problems, base_dir=meta)
    p = problems.items[0]
    assert (p.key, p.file, p.line) == ("datasets[0].subsets[0].is_reg", "run.toml", 7)


DATA_IMPORTS = snippet(
    "the data modules", "import sys; import engine.config.dataset, engine.data.scan, engine.data.captions, "
    "engine.data.buckets, engine.data.metadata, engine.data.health, engine.data.processing; "
    "bad = [m for m in ('torch', 'diffusers', 'transformers', 'textual') if m in sys.modules]; "
    "print(bad); sys.exit(1 if bad else 0)")


def test_no_torch_imported(in_fresh_process):
    r = in_fresh_process(DATA_IMPORTS)
    assert r.returncode == 0, r.stdout + r.stderr
