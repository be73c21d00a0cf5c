"""docs/architecture.md and docs/formats.md state facts about the code: these tests fail when the
code moves away from them (a renamed file, a new metadata key, another event field), so the
notes are corrected in the same change."""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from train_helpers import make_run

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTES = ("architecture.md", "formats.md")


def _code_spans(name: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", (DOCS / name).read_text(encoding="utf-8"))


def _table_rows(name: str, heading: str) -> list[list[str]]:
    """The cells of the first table under ``heading`` (header and rule rows left out)."""
    text = (DOCS / name).read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    rows, started = [], False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif started:
            break
    return rows[1:]


def _names(cell: str) -> list[str]:
    """The code names of a cell, leaving out what parentheses say about them (their values)."""
    return re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", cell))


@pytest.mark.parametrize("note", NOTES)
def test_every_cited_file_exists(note):
    cited = {span.split("::")[0] for span in _code_spans(note)
             if re.fullmatch(r"(engine|sdft_tui|tests)/[\w/.*-]+(::\w+)?", span) and "*" not in span}
    missing = sorted(path for path in cited if not (ROOT / path).exists())
    assert cited and missing == []


@pytest.mark.parametrize("note", NOTES)
def test_every_cited_test_exists(note):
    for span in _code_spans(note):
        if "::" in span:
            path, name = span.split("::")
            assert re.search(rf"^def {name}\(", (ROOT / path).read_text(encoding="utf-8"), re.MULTILINE), span


def test_every_cited_module_attribute_exists():
    dotted = {span for note in NOTES for span in _code_spans(note)
              if re.fullmatch(r"(engine|sdft_tui)(\.\w+)+", span)}
    assert dotted
    for name in sorted(dotted):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"{name}: {attr} not found"
            obj = getattr(obj, attr)


def test_the_512_bucket_list_is_the_one_computed():
    from engine.data.buckets import make_bucket_list

    text = (DOCS / "formats.md").read_text(encoding="utf-8")
    listed = re.search(r"this gives (\d+) buckets: ([\d×,\s]+)\.", text)
    sizes = [tuple(int(n) for n in item.split("×")) for item in re.split(r",\s+", listed.group(2))]
    assert sizes == make_bucket_list((512, 512), 256, 1024, 64)
    assert int(listed.group(1)) == len(sizes)


def test_the_event_table_lists_every_kind_with_its_fields_in_order():
    from engine.events import EVENT_TYPES

    table = {_names(row[0])[0]: _names(row[1]) for row in _table_rows("formats.md", "## The event log")}
    expected = {kind: [f.name for f in fields(cls) if f.name != "time"] for kind, cls in EVENT_TYPES.items()}
    assert table == expected


def test_the_cache_key_table_lists_every_hashed_field(monkeypatch):
    from engine.data import cache, cache_keys

    hashed = {}

    def capture(obj, **kwargs):
        hashed.update(obj)
        return json.dumps(obj, **kwargs)

    monkeypatch.setattr(cache_keys, "json", type("J", (), {"dumps": staticmethod(capture)}))
    job = cache.CacheJob(0, Path("x.png"), (64, 64), (64, 64), (64, 64), (0, 0), "area", False)
    cache.cache_key("0" * 64, job, "vae", "float32", "float16", "alpha")   # float16 storage, a mask: their fields
    table = [_names(row[0])[0] for row in _table_rows("formats.md", "## The latent cache key")]
    assert sorted(table) == sorted(hashed)


def test_a_run_writes_only_what_formats_md_describes(tmp_path, tiny_sd1):
    """A real one-step run: its events, state files, model and cache metadata keys."""
    from safetensors import safe_open

    from engine.runner import run_training

    config = make_run(tmp_path, tiny_sd1, steps=1, save_extra="state_on_train_end = true")
    result = run_training(config)
    assert result.status == "completed", result.message
    text = (DOCS / "formats.md").read_text(encoding="utf-8")

    events = {_names(row[0])[0]: _names(row[1]) for row in _table_rows("formats.md", "## The event log")}
    for line in (tmp_path / "runs" / "t" / "events.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        assert list(event) == ["event", "time", *events[event["event"]]], line

    state_files = {name for row in _table_rows("formats.md", "## The state folder") for name in _names(row[0])}
    written = {p.name for p in Path(result.state_path).iterdir()}
    assert written <= state_files
    assert set(json.loads((Path(result.state_path) / "manifest.json").read_text())) == written - {"manifest.json"}

    documented = set(re.findall(r"`((?:sdft|modelspec)\.[\w.]+)`", text))
    with safe_open(result.model_path, "pt") as fh:
        model_keys = set(fh.metadata())
    assert model_keys - documented == set()

    entries = list((tmp_path / "runs" / ".latent-cache").glob("??/*.safetensors"))
    assert entries
    with safe_open(str(entries[0]), "pt") as fh:
        assert set(fh.metadata()) - documented == set()
