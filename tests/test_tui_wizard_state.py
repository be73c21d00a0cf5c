"""The wizard's draft (no terminal): captions with undo, bucket plan = engine, TOML round trips."""

from __future__ import annotations

import json
import os

import pytest

from engine.config.run_toml import load_run_file, parse_run_text
from engine.data.buckets import assign_sizes, bucket_info
from engine.preflight.model import look_at_model as probe_model
from engine.project.labels import transform_text
from sdft_tui.session import WizardSession
from tests.wizard_helpers import make_dataset


@pytest.fixture
def scanned(tmp_path):
    folder = make_dataset(tmp_path)
    state = WizardSession()
    state.load_source(folder)
    assert state.scan_error is None
    return state, folder


def test_scan_reads_sizes_sidecars_and_health(scanned):
    state, folder = scanned
    assert len(state.records) == 8
    assert state.records[0].caption == "a photo of thing 0, red, blue"
    assert state.records[1].tags == "tag1, solo, outdoors" and state.records[1].caption is None
    quick = state.health()
    assert [p for p, _m in quick["no_caption"]] == [folder / "img07.png"]
    assert folder / "img03.png" in [p for p, _m in quick["small"]]
    state.run_health_check()  # the engine's full check
    full = state.health()
    assert [p for p, _m in full["no_caption"]] == [folder / "img07.png"]


def test_caption_edit_is_atomic_and_undo_restores(scanned, monkeypatch):
    state, folder = scanned
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((str(a), str(b))), real_replace(a, b))[1])
    target = folder / "img00.caption"
    assert state.set_text(0, "a new caption, green")
    assert target.read_text(encoding="utf-8").strip() == "a new caption, green"
    assert replaced and replaced[-1][1] == str(target) and replaced[-1][0] != str(target)  # temp file renamed over
    state.undo()
    assert target.read_text(encoding="utf-8").strip() == "a photo of thing 0, red, blue"
    assert state.records[0].caption == "a photo of thing 0, red, blue"
    # An image without any sidecar: the new .caption disappears again on undo.
    assert state.set_text(7, "brand new")
    assert (folder / "img07.caption").exists()
    state.undo()
    assert not (folder / "img07.caption").exists()


def test_bulk_edit_is_one_undo_step(scanned):
    state, folder = scanned
    n = state.bulk_edit(list(range(8)), "add_tag", "masterpiece")
    assert n == 8
    assert (folder / "img01.txt").read_text(encoding="utf-8").strip() == "tag1, solo, outdoors, masterpiece"
    state.undo()
    assert (folder / "img01.txt").read_text(encoding="utf-8").strip() == "tag1, solo, outdoors"
    assert not (folder / "img07.caption").exists()
    assert state.labels.log == []


def test_transform_text():
    assert transform_text("a, b, c", "remove_tag", "b") == "a, c"
    assert transform_text("a, b", "add_tag", "b, d") == "a, b, d"
    assert transform_text("cat photo", "replace", "cat", "dog") == "dog photo"
    assert transform_text("cat", "prefix", "sks, ") == "sks, cat"
    assert transform_text("sks, cat", "prefix", "sks, ") == "sks, cat"


@pytest.mark.parametrize("res,no_upscale,batch", [(512, False, 1), (640, False, 3), ([768, 512], True, 2)])
def test_histogram_matches_engine_bucket_plan(scanned, res, no_upscale, batch):
    state, _folder = scanned
    state.set("dataset.resolution", res)
    state.set("dataset.bucket_no_upscale", no_upscale)
    state.set("dataset.batch_size", batch)
    report, assignments, records = state.bucket_report()
    engine = bucket_info(assign_sizes([r.size for r in records], state.draft.bucket_settings()))
    ours = {tuple(r.bucket): r.items for r in report.rows}
    theirs = {tuple(b["resolution"]): b["count"] for b in engine["buckets"].values()}
    assert ours == theirs
    assert report.mean_ar_error == pytest.approx(engine["mean_img_ar_error"])
    assert report.total_batches == sum(-(-n // batch) for n in theirs.values())


def test_save_writes_metadata_and_a_toml_the_engine_loads(scanned, tmp_path):
    state, folder = scanned
    state.set("optimizer.learning_rate", 1e-6)
    state.set("general.batch_size", 2)
    state.set("train.max_train_epochs", 3)
    path = state.save(tmp_path / "out" / "run.toml")
    meta = json.loads((tmp_path / "out" / "run-metadata.json").read_text(encoding="utf-8"))
    assert len(meta) == 8 and meta["img00.png"]["caption"] == "a photo of thing 0, red, blue"
    config, _doc, _warnings = load_run_file(path)
    assert config.optimizer.learning_rate == 1e-6
    assert config.train.max_train_epochs == 3
    ds = config.datasets.datasets[0]
    assert ds.batch_size == 2 and ds.enable_bucket and ds.resolution == (512, 512)
    assert ds.subsets[0].image_dir == folder


def test_editing_an_existing_file_keeps_comments_and_noop_is_identical(scanned, tmp_path):
    state, _folder = scanned
    path = state.save(tmp_path / "run.toml")
    text = path.read_text(encoding="utf-8").replace("[optimizer]", "# my tuned LR\n[optimizer]")
    path.write_text(text, encoding="utf-8")
    again = WizardSession()
    again.load_source(path)
    assert again.scan_error is None and len(again.records) == 8
    assert again.render_toml(path) == text  # nothing changed: byte-identical
    again.set("optimizer.learning_rate", 5e-6)
    again.save(path)
    new = path.read_text(encoding="utf-8")
    assert "# my tuned LR" in new
    config, _d, _w = parse_run_text(new, file=str(path), base_dir=path.parent)
    assert config.optimizer.learning_rate == 5e-6


def test_metadata_json_source_and_caption_edit(scanned, tmp_path):
    state, folder = scanned
    state.project.metadata_beside_images = True  # a metadata JSON that opens on its own: beside its images
    state.save(tmp_path / "run.toml")
    meta_path = folder / "sdft-metadata.json"
    other = WizardSession()
    other.load_source(meta_path)
    assert other.scan_error is None and len(other.records) == 8
    other.set_text(0, "edited in metadata")
    assert json.loads(meta_path.read_text(encoding="utf-8"))["img00.png"]["caption"] == "edited in metadata"
    other.undo()
    assert json.loads(meta_path.read_text(encoding="utf-8"))["img00.png"]["caption"] == "a photo of thing 0, red, blue"


def test_bad_source_reports_error(tmp_path):
    state = WizardSession()
    state.load_source(tmp_path / "missing")
    assert state.scan_error and "missing" in state.scan_error


def test_probe_model_reads_configs_without_torch(tiny_sd1, tiny_sd2):
    """The wizard's model line is the engine's --check probe, and it imports no torch."""
    import subprocess
    import sys

    assert probe_model(str(tiny_sd1)).family == "sd1"
    g2 = probe_model(str(tiny_sd2))
    assert g2.family == "sd2" and g2.v_prediction is True
    assert g2.small and "small test model" in g2.label()
    assert probe_model("").family is None and probe_model("").label() == "no model chosen"
    assert "no such file" in probe_model(str(tiny_sd1 / "nope")).label()
    code = ("import sys; from engine.preflight.model import look_at_model; "
            f"p = look_at_model({str(tiny_sd2)!r}); print(p.family, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["sd2", "False"]


def test_every_engine_health_kind_has_a_wizard_label():
    from engine.data.health import KIND_LABELS as HEALTH_LABELS
    from engine.data.health import SEVERITY

    assert set(SEVERITY) <= set(HEALTH_LABELS), sorted(set(SEVERITY) - set(HEALTH_LABELS))


def test_token_counts_count_the_caption_as_training_joins_it(tmp_path):
    """The wizard's counts use the engine's join: caption_tags_join, the subset's separator,
    prefix and suffix (a prefix of many tokens can push a caption over the limit)."""
    import json

    from engine.data.captions import caption_as_trained
    from sdft_tui.session import WizardSession

    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "images" / "a.png")
    (tmp_path / "meta.json").write_text(json.dumps({"a": {"caption": "a cat", "tags": "red, blue"}}))
    run = tmp_path / "run.toml"
    run.write_text('[model]\npretrained_model_name_or_path = "m"\n[data]\ncaption_tags_join = " with "\n'
                   '[[datasets]]\n  [[datasets.subsets]]\n  metadata_file = "meta.json"\n  image_dir = "images"\n'
                   '  caption_prefix = "masterpiece, best quality"\n  caption_suffix = "by me"\n', encoding="utf-8")
    state = WizardSession()
    state.load_source(run)
    assert state.scan_error is None, state.scan_error
    text = state.joined_caption(state.records[0])
    assert text == "masterpiece, best quality a cat with red, blue by me"
    assert text == caption_as_trained("a cat", "red, blue", join=" with ", prefix="masterpiece, best quality",
                                      suffix="by me")
