"""The engine's project model (engine.project): dataset index, label store, run draft, and the
one safetensors header reader. The wizard adds nothing to these (checked at the end)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from fresh_process import snippet

from engine.data.metadata import build_metadata, load_raw
from engine.models.safetensors_header import HeaderError, read_header
from engine.project.dataset_index import DatasetIndex
from engine.project.labels import LabelStore
from engine.project.project import Project
from engine.project.run_draft import DatasetLink, RunDraft
from tests.data_helpers import make_image, write_meta

ROOT = Path(__file__).resolve().parent.parent


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    make_image(folder / "a.png", (96, 64), seed=1)
    make_image(folder / "b.jpg", (64, 96), seed=2, fmt="JPEG")
    make_image(folder / "b.png", (64, 64), seed=3)            # shares its name with b.jpg
    make_image(folder / "c.png", (80, 80), seed=4, exif_orientation=6)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "a.caption").write_text("a red thing", encoding="utf-8")
    (folder / "a.txt").write_text("red, thing", encoding="utf-8")
    (folder / "b.txt").write_text("shared, tags", encoding="utf-8")
    return folder


def _index(folder: Path) -> DatasetIndex:
    return DatasetIndex.from_folder(folder, caption_extension=".caption", tags_extension=".txt")


def test_metadata_from_memory_equals_what_prepare_writes(tmp_path):
    folder = _folder(tmp_path)
    index = _index(folder)
    assert index.to_metadata() == build_metadata(folder)
    assert len(index.records) == 5 and len(index.usable()) == 4


def test_saving_a_folder_dataset_reads_nothing_again(tmp_path, monkeypatch):
    """The metadata JSON is written from the records in memory: no scan, no sidecar read."""
    folder = _folder(tmp_path)
    project = Project()
    project.open(folder)
    project.labels.set_text(0, "edited in memory and on disk")
    import engine.data.captions as captions
    import engine.data.scan as scan

    def forbidden(*_a, **_k):
        raise AssertionError("saving re-read the folder")

    for module, name in ((scan, "find_images"), (scan, "read_sizes"), (captions, "read_sidecar")):
        monkeypatch.setattr(module, name, forbidden)
    run_path = project.save(tmp_path / "run.toml")
    written = json.loads((tmp_path / "run-metadata.json").read_text(encoding="utf-8"))
    assert written["a.png"]["caption"] == "edited in memory and on disk"
    assert set(written) == {"a.png", "b.jpg", "b.png", "c.png"}
    assert "metadata_file = \"run-metadata.json\"" in run_path.read_text(encoding="utf-8")


def test_sidecar_store_logs_groups_and_undoes_them(tmp_path):
    folder = _folder(tmp_path)
    index = _index(folder)
    store = LabelStore(index, caption_extension=".caption", tags_extension=".txt")
    names = [r.path.name for r in index.records]
    a, c = names.index("a.png"), names.index("c.png")
    assert store.set_text(c, "new caption") and (folder / "c.caption").read_text(encoding="utf-8").strip() == "new caption"
    assert not store.set_text(c, "  new caption  ")            # unchanged after stripping: no step
    assert store.bulk_edit([a, c], "add_tag", "extra") == 2     # a's tags and c's caption
    assert index.records[a].tags == "red, thing, extra"
    assert len(store.log) == 2 and [len(g) for g in store.log] == [1, 2]
    assert len(store.undo()) == 2
    assert (folder / "a.txt").read_text(encoding="utf-8").strip() == "red, thing"
    assert store.undo()[0].new == "new caption"
    assert not (folder / "c.caption").exists()                 # there was no file before: removed again
    assert store.undo() == [] and not store.can_undo


def test_metadata_store_writes_the_file_once_per_edit(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    meta = write_meta(tmp_path / "meta.json", build_metadata(folder))
    index = DatasetIndex.from_metadata(meta, folder)
    store = LabelStore(index, caption_extension=".caption", tags_extension=".txt")
    import engine.data.metadata as metadata

    writes = []
    real = metadata.write_metadata_json
    monkeypatch.setattr(metadata, "write_metadata_json", lambda p, m, **k: (writes.append(p), real(p, m, **k))[1])
    assert store.bulk_edit(list(range(len(index.records))), "prefix", "sks, ") == 4
    assert len(writes) == 1
    raw, _ = load_raw(meta)
    assert raw["a.png"]["caption"] == "sks, a red thing" and raw["b.jpg"]["tags"] == "sks, shared, tags"
    assert not (folder / "b.caption").exists()                  # nothing written beside the images
    store.undo()
    assert load_raw(meta)[0] == build_metadata(folder)


def test_a_labelling_run_is_one_undo_step(tmp_path):
    folder = _folder(tmp_path)
    index = _index(folder)
    store = LabelStore(index, caption_extension=".caption", tags_extension=".txt")
    before = store.snapshot([0, 1, 2], "caption")
    for record in index.records[:3]:                            # what an engine labelling run writes
        record.path.with_suffix(".caption").write_text(f"blip says {record.path.name}", encoding="utf-8")
    assert store.reload_after(before, "caption") == 3
    assert index.records[1].caption.startswith("blip says")
    store.undo()
    assert (folder / "a.caption").read_text(encoding="utf-8").strip() == "a red thing"
    assert index.records[1].caption is None


def test_run_draft_keeps_comments_and_writes_only_changes(tmp_path):
    run = tmp_path / "run.toml"
    folder = _folder(tmp_path)
    write_meta(tmp_path / "meta.json", build_metadata(folder))
    run.write_text('# my notes\n[optimizer]\nlearning_rate = 1e-5  # tuned\n\n[train]\nseed = 7\n\n'
                   '[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\nmetadata_file = "meta.json"\n'
                   'image_dir = "images"\n', encoding="utf-8")
    draft = RunDraft()
    tables = draft.open(run)
    assert tables.link.metadata_file.name == "meta.json" and draft.get("dataset.batch_size") == 2
    draft.set("general.batch_size", 3)                         # kohya's spelling of the dataset key
    draft.set("train.max_train_steps", 50)
    text = draft.render(run, tables.link)
    assert "# my notes" in text and "# tuned" in text and "batch_size = 3" in text
    assert "max_train_steps = 50" in text and "learning_rate = 1e-5" in text
    assert draft.validate(run, tables.link) == []
    config = draft.sections()
    assert config.train.max_train_steps == 50 and config.optimizer.learning_rate == 1e-5


def test_a_new_draft_draws_and_writes_its_seed(tmp_path):
    draft = RunDraft()
    link = DatasetLink(tmp_path / "meta.json", tmp_path / "images")
    text = draft.render(tmp_path / "run.toml", link)
    assert f"seed = {draft.get('train.seed')}" in text
    assert 'metadata_file = "meta.json"' in text and 'image_dir = "images"' in text


def test_safetensors_header_reader(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_file({"x.weight": torch.zeros(3, 4, dtype=torch.float16)}, str(path), metadata={"k": "v"})
    header = read_header(path)
    assert header.tensors["x.weight"].shape == (3, 4) and header.first_dtype() == "float16"
    assert header.metadata == {"k": "v"}
    data = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:20])
    with pytest.raises(HeaderError, match="truncated"):
        read_header(tmp_path / "short.safetensors")
    (tmp_path / "huge.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(HeaderError, match="not plausible"):
        read_header(tmp_path / "huge.safetensors")


PROJECT_IMPORTS = snippet(
    "the project model", "import sys, engine.project.project, engine.project.sources, engine.models.safetensors_header; "
    "print(any(m in sys.modules for m in ('torch', 'diffusers', 'textual')))")


def test_the_project_model_imports_no_torch(in_fresh_process):
    out = in_fresh_process(PROJECT_IMPORTS)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# The wizard holds no engine rule: no file formats, headers, sidecar or metadata logic, TOML tables.
FORBIDDEN_IN_TUI = {"struct", "tomlkit", "safetensors", "engine.data.metadata", "engine.data.captions",
                    "engine.data.scan", "engine.config.dataset"}


def test_the_wizard_reads_no_file_format_itself():
    found = []
    for path in sorted((ROOT / "sdft_tui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n in FORBIDDEN_IN_TUI]
    assert found == []
