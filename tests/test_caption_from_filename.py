"""caption_from_filename: an image with neither caption nor tags trains with its file name."""

from __future__ import annotations

import pytest
from data_helpers import make_image, run_config

from engine.config.problems import ConfigError
from engine.data.captions import caption_from_file_name
from engine.data.metadata import build_metadata, write_metadata_json
from engine.data.pipeline import TrainingData

TOML = """
[general]
resolution = 64
batch_size = 1
{general}

[[datasets]]
  [[datasets.subsets]]
  metadata_file = "meta.json"
  image_dir = "imgs"
  caption_prefix = "photo of"
{subset}
"""


@pytest.fixture()
def folder(tmp_path):
    imgs = tmp_path / "imgs"
    make_image(imgs / "red_fox__in_snow.png", (64, 64), seed=1)
    make_image(imgs / "captioned_cat.png", (64, 64), seed=2)
    (imgs / "captioned_cat.caption").write_text("a cat on a sofa", encoding="utf-8")
    make_image(imgs / "tagged_dog.png", (64, 64), seed=3)
    (imgs / "tagged_dog.txt").write_text("dog, grass", encoding="utf-8")
    write_metadata_json(tmp_path / "meta.json", build_metadata(imgs))
    return tmp_path


def _captions(folder, general: str = "", subset: str = "") -> dict[str, str]:
    cfg = run_config(folder, TOML.format(general=general, subset=subset), cache={"latents": "none"})
    data = TrainingData.from_config(cfg, log=lambda s: None)
    return {item.path.name: item.caption for item in data.items}


def test_the_file_name_is_the_stem_with_spaces():
    assert caption_from_file_name("/x/red_fox__in_snow.png") == "red fox in snow"
    assert caption_from_file_name("plain name.jpg") == "plain name"


def test_off_by_default_an_uncaptioned_image_trains_with_no_caption(folder):
    captions = _captions(folder)
    assert captions["red_fox__in_snow.png"] == ""
    assert captions["captioned_cat.png"] == "a cat on a sofa"


@pytest.mark.parametrize("where", ["general", "subset"])
def test_on_only_images_without_caption_or_tags_take_their_name(folder, where):
    line = "caption_from_filename = true"
    captions = _captions(folder, **{where: ("  " if where == "subset" else "") + line})
    assert captions["red_fox__in_snow.png"] == "red fox in snow"
    assert captions["captioned_cat.png"] == "a cat on a sofa"     # a caption is never replaced
    assert captions["tagged_dog.png"] == "dog, grass"             # tags alone are a caption too


def test_the_prefix_and_shuffles_apply_to_it_as_to_any_caption(folder):
    cfg = run_config(folder, TOML.format(general="", subset="  caption_from_filename = true"),
                     cache={"latents": "none"})
    data = TrainingData.from_config(cfg, log=lambda s: None)
    fox = next(i for i, item in enumerate(data.items) if item.path.name.startswith("red_fox"))
    ref = next(r for r in data.epoch_plan(1) if fox in r.items)
    batch = data.load_batch(ref, epoch=1, global_step=0, position=0)
    assert batch.captions == ["photo of red fox in snow"]


def test_a_value_that_is_not_a_bool_names_the_key(folder):
    with pytest.raises(ConfigError) as info:
        _captions(folder, subset='  caption_from_filename = "yes"')
    assert "caption_from_filename" in str(info.value)


def test_prepare_on_the_run_counts_the_file_name_as_a_caption(folder, capsys):
    from engine.data.cli import prepare_command

    run = folder / "run.toml"
    unprefixed = TOML.replace('  caption_prefix = "photo of"\n', "")
    for flag, reported in (("", True), ("  caption_from_filename = true", False)):
        run.write_text(unprefixed.format(general="", subset=flag), encoding="utf-8")
        prepare_command([str(run), "--json"])
        report = capsys.readouterr().out
        # without the key the image has no caption (a finding); with it, its name is its caption
        assert ("red_fox__in_snow.png" in report) == reported, (flag, report)
