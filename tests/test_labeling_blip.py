"""BLIP captioning with a tiny random BlipForConditionalGeneration."""

from __future__ import annotations

import json
import shutil

import pytest
from labeling_helpers import make_blip_folder, make_wd14_folder, solid_image

from engine.labeling import CaptionOptions, LabelError, caption_images, load_captioner
from engine.labeling.blip import clean_prompt


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return str(make_blip_folder(tmp_path_factory.mktemp("blip") / "model"))


def images(folder, count=3):
    return [solid_image(folder / f"{i}.png", size=(20 + 4 * i, 16), color=(40 * i, 90, 200 - 30 * i))
            for i in range(count)]


def test_captions_written_with_prefix_and_suffix(tmp_path, blip):
    paths = images(tmp_path)
    opts = CaptionOptions(model=blip, batch_size=2, max_length=12, min_length=8, beam_search=True,
                          prefix="<", suffix=">")
    summary = caption_images(paths, opts)
    assert summary.done == 3 and not summary.failed
    assert summary.device == "cpu" and summary.first_batch_s is not None
    for path in paths:
        text = path.with_suffix(".caption").read_text(encoding="utf-8")
        assert text.endswith(">\n") and text.startswith("<")
        words = text[1:-2].split()
        assert words and not text[1:].startswith("a picture of")   # the prompt is cut
        assert summary.texts[str(path)] == text.strip()


def test_beam_search_is_deterministic_and_batch_independent(tmp_path, blip):
    paths = images(tmp_path)
    one = caption_images(paths, CaptionOptions(model=blip, batch_size=1, beam_search=True, num_beams=2,
                                               max_length=10, sidecars=False, metadata_file=tmp_path / "m1.json"))
    three = caption_images(paths, CaptionOptions(model=blip, batch_size=3, beam_search=True, num_beams=2,
                                                 max_length=10, sidecars=False, metadata_file=tmp_path / "m3.json"))
    assert one.texts == three.texts
    meta = json.loads((tmp_path / "m1.json").read_text())
    assert sorted(meta) == ["0.png", "1.png", "2.png"]
    assert not paths[0].with_suffix(".caption").exists()


def test_sampling_uses_the_seed(tmp_path, blip):
    paths = images(tmp_path, 2)
    opts = dict(model=blip, max_length=14, min_length=6, sidecars=False, policy="overwrite")
    a = caption_images(paths, CaptionOptions(seed=7, metadata_file=tmp_path / "a.json", **opts))
    b = caption_images(paths, CaptionOptions(seed=7, metadata_file=tmp_path / "b.json", **opts))
    assert a.texts == b.texts


def test_policies_and_reused_model(tmp_path, blip):
    paths = images(tmp_path, 2)
    paths[0].with_suffix(".caption").write_text("my caption\n")
    model = load_captioner(CaptionOptions(model=blip, max_length=10, beam_search=True))
    try:
        summary = caption_images(paths, CaptionOptions(model=blip), model=model)
        assert summary.skipped == 1 and summary.done == 1
        assert paths[0].with_suffix(".caption").read_text() == "my caption\n"
        caption_images([paths[0]], CaptionOptions(policy="append"), model=model)
        text = paths[0].with_suffix(".caption").read_text()
        assert text.startswith("my caption, ") and text.endswith("\n")
        caption_images([paths[0]], CaptionOptions(policy="overwrite"), model=model)
        assert not paths[0].with_suffix(".caption").read_text().startswith("my caption")
    finally:
        model.close()


def test_clean_prompt():
    assert clean_prompt("a picture of a cat on a sofa ") == "a cat on a sofa"
    assert clean_prompt("A picture of  dog") == "dog"
    assert clean_prompt("a dog") == "a dog"


def test_wrong_or_incomplete_folder(tmp_path, blip):
    image = solid_image(tmp_path / "a.png")
    wd14 = make_wd14_folder(tmp_path / "wd14", [0.5] * 12)
    with pytest.raises(LabelError, match="not a BLIP folder: missing config.json"):
        caption_images([image], CaptionOptions(model=str(wd14)))
    broken = tmp_path / "broken"
    shutil.copytree(blip, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(LabelError, match="not a BLIP captioning model"):
        caption_images([image], CaptionOptions(model=str(broken)))
    with pytest.raises(LabelError, match="min_length"):
        caption_images([image], CaptionOptions(model=blip, min_length=20, max_length=10))
    assert not image.with_suffix(".caption").exists()


def test_clean_option_applies_caption_rules(tmp_path, blip):
    from engine.labeling.writers import LabelWriter

    image = solid_image(tmp_path / "a.png")
    writer = LabelWriter("caption", ".caption", clean=True)
    final, changed = writer.write(image, "an anime woman sitting with a cartoon girl")
    assert final == "an girl sitting with a girl" and changed
