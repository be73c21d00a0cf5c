"""WD14 / DeepDanbooru tag selection on known scores, through real ONNX models."""

from __future__ import annotations

import numpy as np
import pytest
from labeling_helpers import DDB_TAGS, WD14_ROWS, make_ddb_folder, make_wd14_folder, solid_image

from engine.labeling import LabelError, TagOptions, tag_images
from engine.labeling.tagrules import (
    TagRow,
    TagSelector,
    expand_character,
    merge_tags,
    parse_replacements,
)

# scores aligned with WD14_ROWS:
#   ratings general .1, sensitive .7, questionable .2, explicit .05
#   1girl .9, long_hair .5, hatsune_miku_(vocaloid) [char] .8, smile .3, ^_^ .6, solo .36,
#   red_eyes .34, kaga_(kancolle) [char] .99
SCORES = [0.1, 0.7, 0.2, 0.05, 0.9, 0.5, 0.8, 0.3, 0.6, 0.36, 0.34, 0.99]
ROWS = [TagRow(n, c) for n, c in WD14_ROWS]


def select(**kwargs) -> list[str]:
    return TagSelector(ROWS, TagOptions(**kwargs)).select(SCORES)


def test_default_threshold_general_then_character_by_row_category():
    # characters come after the general tags even though one sits between general rows
    assert select() == ["1girl", "long_hair", "^_^", "solo", "hatsune_miku_(vocaloid)", "kaga_(kancolle)"]


def test_separate_thresholds_and_character_first():
    assert select(general_threshold=0.55, character_threshold=0.9) == ["1girl", "^_^", "kaga_(kancolle)"]
    assert select(thresh=0.7, character_tags_first=True) == ["hatsune_miku_(vocaloid)", "kaga_(kancolle)", "1girl"]


def test_rating_first_or_last_is_the_argmax():
    assert select(thresh=0.85, use_rating_tags=True) == ["sensitive", "1girl", "kaga_(kancolle)"]
    assert select(thresh=0.85, use_rating_tags_as_last_tag=True) == ["1girl", "kaga_(kancolle)", "sensitive"]
    assert select(thresh=0.85, use_rating_tags=True, undesired_tags=["sensitive"]) == ["1girl", "kaga_(kancolle)"]


def test_always_first_undesired_and_max_tags():
    assert select(always_first_tags=["solo", "^_^", "absent"]) == [
        "solo", "^_^", "1girl", "long_hair", "hatsune_miku_(vocaloid)", "kaga_(kancolle)"]
    assert select(undesired_tags=["long_hair", "kaga_(kancolle)"]) == ["1girl", "^_^", "solo", "hatsune_miku_(vocaloid)"]
    # the three most probable survive (kaga .99, 1girl .9, miku .8), output order unchanged
    assert select(max_tags=3) == ["1girl", "hatsune_miku_(vocaloid)", "kaga_(kancolle)"]


def test_name_edits_expand_underscore_replace():
    got = select(thresh=0.55, character_tag_expand=True, remove_underscore=True)
    # ^_^ is 3 characters: its underscores survive; the expansion splits on the separator
    assert got == ["1girl", "^_^", "hatsune miku, vocaloid", "kaga, kancolle"]
    got = select(thresh=0.45, remove_underscore=True, tag_replacement="long hair,very long hair;1girl,1woman")
    assert got[:2] == ["1woman", "very long hair"]
    # undesired tags compare with the edited names
    assert "smile" not in select(thresh=0.2, remove_underscore=True, undesired_tags=["long hair", "smile"])
    assert "long hair" not in select(thresh=0.2, remove_underscore=True, undesired_tags=["long hair"])


def test_replacement_escapes_and_expand_rule():
    assert parse_replacements(r"a\,b,c;d,e\;f") == [("a,b", "c"), ("d", "e;f")]
    with pytest.raises(LabelError, match="source,target"):
        parse_replacements("a,b,c")
    assert expand_character("kaga_(kancolle)", ", ") == "kaga, kancolle"
    assert expand_character("name_(a)_(b)", ", ") == "name_(a), b"
    assert expand_character("plain", ", ") == "plain"


def test_merge_tags_keeps_existing_and_adds_new_once():
    assert merge_tags("a, b", "b, c, a, d", ", ") == "a, b, c, d"


def test_score_count_mismatch_is_explained():
    with pytest.raises(LabelError, match="came with this model"):
        TagSelector(ROWS, TagOptions()).select([0.5] * 3)


def test_wd14_end_to_end_files_and_options(tmp_path):
    model = make_wd14_folder(tmp_path / "wd14", SCORES, batch="batch")
    images = [solid_image(tmp_path / "img" / f"{i}.png", color=(i * 50, 0, 0)) for i in range(3)]
    summary = tag_images(images, TagOptions(model=str(model), batch_size=2, use_rating_tags=True,
                                            remove_underscore=True, undesired_tags=["solo"]))
    assert summary.done == 3 and not summary.failed
    expected = "sensitive, 1girl, long hair, ^_^, hatsune miku (vocaloid), kaga (kancolle)\n"
    for image in images:
        assert image.with_suffix(".txt").read_text(encoding="utf-8") == expected
    assert summary.tags_per_image == 6
    assert summary.tag_frequency()["1girl"] == 3


def test_wd14_scores_follow_the_bgr_input(tmp_path):
    # tag "blue" fires on channel 0 of the model input: BGR order puts an RGB image's blue there
    rows = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9), ("blue", 0), ("red", 0)]
    weights = np.zeros((3, 6), np.float32)
    weights[0, 4] = 20.0     # input channel 0 (B) -> "blue"
    weights[2, 5] = 20.0     # input channel 2 (R) -> "red"
    model = make_wd14_folder(tmp_path / "wd14", [0.5, 0.1, 0.1, 0.1, 1e-4, 1e-4], rows=rows, weights=weights)
    blue = solid_image(tmp_path / "img" / "blue.png", color=(0, 0, 255))
    red = solid_image(tmp_path / "img" / "red.png", color=(255, 0, 0))
    summary = tag_images([blue, red], TagOptions(model=str(model), batch_size=2))
    assert summary.texts[str(blue)] == "blue"
    assert summary.texts[str(red)] == "red"


def test_fixed_batch_dimension_overrides_batch_size(tmp_path):
    model = make_wd14_folder(tmp_path / "wd14", SCORES, batch=1)
    images = [solid_image(tmp_path / "img" / f"{i}.png") for i in range(3)]
    summary = tag_images(images, TagOptions(model=str(model), batch_size=4))
    assert summary.done == 3


def test_wd14_model_and_csv_mismatch(tmp_path):
    model = make_wd14_folder(tmp_path / "wd14", SCORES[:5])
    with pytest.raises(LabelError, match="selected_tags.csv has 12 rows"):
        tag_images([solid_image(tmp_path / "a.png")], TagOptions(model=str(model)))


def test_deepdanbooru_raw_output(tmp_path):
    # 1girl .9, long_hair .4, smile .6, solo .55, rating:safe .8, rating:questionable .1, rating:explicit .2
    model = make_ddb_folder(tmp_path / "ddb", [0.9, 0.4, 0.6, 0.55, 0.8, 0.1, 0.2])
    image = solid_image(tmp_path / "img" / "a.png", size=(30, 12))
    summary = tag_images([image], TagOptions(tagger="deepdanbooru", model=str(model)))
    assert image.with_suffix(".txt").read_text() == "1girl, smile, solo, rating:safe\n"
    summary = tag_images([image], TagOptions(tagger="deepdanbooru", model=str(model), thresh=0.58, policy="overwrite"))
    assert summary.texts[str(image)] == "1girl, smile, rating:safe"
    # cleaning drops the rating
    tag_images([image], TagOptions(tagger="deepdanbooru", model=str(model), policy="overwrite", clean=True))
    assert image.with_suffix(".txt").read_text() == "1girl, smile, solo\n"
    assert len(DDB_TAGS) == 7


def test_deepdanbooru_folder_errors(tmp_path):
    with pytest.raises(LabelError, match="project folder"):
        tag_images([solid_image(tmp_path / "a.png")], TagOptions(tagger="deepdanbooru"))
    keras = tmp_path / "keras"
    keras.mkdir()
    (keras / "model-resnet_custom_v3.h5").write_bytes(b"x")
    (keras / "tags.txt").write_text("a\n")
    with pytest.raises(LabelError, match="export it once"):
        tag_images([solid_image(tmp_path / "b.png")], TagOptions(tagger="deepdanbooru", model=str(keras)))
