"""What a folder's .txt sidecars hold, guessed from what they say (engine/data/sidecar_kind.py):
the rule, the wizard's default choice and its line, and the line `sdft prepare` prints."""

from __future__ import annotations

import json

import pytest

from engine.data.sidecar_kind import SidecarGuess, guess_folder, guess_sidecars, meaning, text_kind
from tests.test_tui_polish import run_app
from tests.wizard_helpers import screen_text, settle

SENTENCES = ["a photo of a woman walking her dog in the park", "A red car parked on a wet street at night.",
             "two cats asleep on a sofa"]
TAGS = ["1girl, solo, long hair, looking at viewer", "car, red, night, street", "cat, sofa, sleeping"]


@pytest.mark.parametrize("text, kind", [
    ("a photo of a woman walking her dog in the park", "captions"),     # a long phrase
    ("Sunset.", None),                                                 # one word and a full stop
    ("A cat on a mat.", "captions"),                                   # ends like a sentence
    ("a red car", "captions"),                                         # a short phrase with an article
    ("1girl, solo, long hair, looking at viewer", "tags"),             # short comma-separated parts
    ("red car, blue sky", "tags"),
    ("portrait, a man walking his dog through the old town", "captions"),   # a long part among tags
    ("cat", None),                                                     # one bare word: says nothing
    ("", None),
    (None, None),
])
def test_one_text_reads_as_a_sentence_or_tags_or_nothing(text, kind):
    assert text_kind(text) == kind


def test_a_folder_follows_a_clear_majority_and_keeps_the_default_otherwise():
    assert guess_sidecars(SENTENCES).mode == "captions"
    assert guess_sidecars(TAGS).mode == "tags"
    assert guess_sidecars(SENTENCES + TAGS[:1]).mode == "captions"      # 3 of 4: a majority
    mixed = guess_sidecars(SENTENCES[:2] + TAGS[:2])                     # 2 and 2: no majority
    assert (mixed.mode, mixed.decided) == ("tags", False)
    assert mixed.evidence() == "a mix (2 sentences, 2 tag lists), so kohya's default"
    words = guess_sidecars(["cat", "dog"])                               # nothing said either way
    assert (words.mode, words.decided) == ("tags", False)
    none = guess_sidecars([])
    assert none.reading() == ".txt sidecars read as tags: no .txt files, so kohya's default"
    assert guess_sidecars(SENTENCES + ["cat"]).reading() == ".txt sidecars read as captions: 3 of 4 are sentences"
    one = SidecarGuess("tags", 1, 1, 2)
    assert "1 sentence, 1 tag list" in one.evidence()


def test_the_line_says_which_file_is_the_caption_and_how_training_joins_them():
    assert meaning("captions") == ".txt = caption, .tags = tags; trains caption,tags"
    assert meaning("tags", ", ") == ".caption = caption, .txt = tags; trains caption, tags"


def _folder(root, texts, name="images"):
    from PIL import Image

    folder = root / name
    folder.mkdir(parents=True)
    for i, text in enumerate(texts):
        Image.new("RGB", (320, 256), (40 * i, 90, 20)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def test_guess_folder_reads_the_txt_files_beside_the_images(tmp_path):
    assert guess_folder(_folder(tmp_path, SENTENCES)).mode == "captions"
    assert guess_folder(_folder(tmp_path, TAGS, "tagged")).mode == "tags"


def _wizard(tmp_path, folder):
    from engine.hardware import HardwareInfo
    from sdft_tui.app import SdftApp

    return SdftApp(hardware=HardwareInfo(), start_dir=tmp_path)


async def _scan(app, pilot, folder):
    path = app.screen.query_one("#path")
    path.value = str(folder)
    path.focus()
    await pilot.press("enter")
    await settle(app, pilot)
    await pilot.pause(0.1)


def test_the_wizard_reads_sentences_as_captions_and_says_what_that_changes(tmp_path):
    folder = _folder(tmp_path, SENTENCES)
    app = _wizard(tmp_path, folder)

    async def scenario(pilot):
        await _scan(app, pilot, folder)
        state = app.state
        assert state.draft.sidecar_mode == "captions"
        assert app.screen.query_one("#sidecar-mode").value == "captions"
        assert state.records[0].caption == SENTENCES[0] and state.records[0].tags is None
        text = screen_text(app)
        assert ".txt sidecars read as captions: 3 of 3 are sentences" in text, text
        assert ".txt = caption, .tags = tags; trains caption,tags" in text
        # the user's choice stands over the files' look, rescans included
        app.screen.query_one("#sidecar-mode").value = "tags"
        await settle(app, pilot)
        await pilot.pause(0.1)
        assert state.draft.sidecar_mode == "tags" and state.records[0].tags == SENTENCES[0]
        assert ".txt sidecars read as tags: your choice" in screen_text(app)
        await pilot.press("ctrl+r")
        await settle(app, pilot)
        assert state.draft.sidecar_mode == "tags"

    run_app(app, scenario)


def test_the_wizard_keeps_tags_for_tag_lists(tmp_path):
    folder = _folder(tmp_path, TAGS)
    app = _wizard(tmp_path, folder)

    async def scenario(pilot):
        await _scan(app, pilot, folder)
        assert app.state.draft.sidecar_mode == "tags"
        assert app.state.records[0].tags == TAGS[0]
        assert ".txt sidecars read as tags: 3 of 3 are tag lists" in screen_text(app)

    run_app(app, scenario)


def test_prepare_says_how_it_read_the_sidecars(tmp_path, capsys):
    from engine.data.cli import prepare_command

    folder = _folder(tmp_path, SENTENCES)
    out = tmp_path / "meta.json"
    prepare_command([str(folder), "--out", str(out), "--no-check"])
    printed = capsys.readouterr().out
    assert (".txt sidecars read as captions: 3 of 3 are sentences; .txt = caption, .tags = tags; "
            "trains caption,tags (--caption-extension / --tags-extension choose)") in " ".join(printed.split())
    entries = json.loads(out.read_text(encoding="utf-8"))
    assert entries["img0.png"]["caption"] == SENTENCES[0] and "tags" not in entries["img0.png"]

    # the options choose: .txt as tags, as given
    prepare_command([str(folder), "--out", str(out), "--no-check", "--tags-extension", ".txt"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "sidecars as given: .caption = caption, .txt = tags; trains caption,tags" in printed
    entries = json.loads(out.read_text(encoding="utf-8"))
    assert entries["img0.png"]["tags"] == SENTENCES[0]
