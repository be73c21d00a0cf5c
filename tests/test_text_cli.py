"""`sdft tokens`: token count, cut point, chunk layout; rich text and --json."""

from __future__ import annotations

import io
import json

import pytest

from engine.models.tokens_cli import analyse_caption, tokens_command
from tests.text_helpers import BOS, EOS, a_caption, tokenizer


def run_json(capsys, *argv):
    assert tokens_command([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one object, one line
    return json.loads(out)


def test_json_short_caption(capsys):
    info = run_json(capsys, "a photo of a cat")
    assert info["token_count"] == 5 and info["max_token_length"] == 75
    assert not info["truncated"] and info["cut_text"] == "" and info["cut_tokens"] == []
    assert info["embedding_length"] == 77 and info["v2"] is False
    [chunk] = info["chunks"]
    assert chunk["ids"] == [BOS, 320, 1125, 539, 320, 2368, EOS] + [EOS] * 70
    assert (chunk["first_token"], chunk["last_token"], chunk["text_tokens"]) == (1, 5, 5)
    assert info["tokens"] == ["a", "photo", "of", "a", "cat"]


def test_json_shows_the_words_past_the_limit(capsys):
    text = a_caption(74) + " blue sky, green grass"
    info = run_json(capsys, text)
    assert info["token_count"] == 79 and info["truncated"]
    assert info["cut_text"] == "sky, green grass"
    assert info["kept_text"] + info["cut_text"] == text
    assert info["cut_tokens"] == ["sky", ",", "green", "grass"]


def test_json_chunk_layout_sd2_225(capsys):
    info = run_json(capsys, a_caption(80), "--max-token-length", "225", "--v2")
    assert info["pads_with"] == "!" and info["embedding_length"] == 227 and not info["truncated"]
    spans = [(c["first_token"], c["last_token"], c["text_tokens"]) for c in info["chunks"]]
    assert spans == [(1, 75, 75), (76, 80, 5), (None, None, 0)]
    assert info["chunks"][0]["ids"][-1] == EOS          # full chunk ends in EOS
    assert info["chunks"][1]["ids"][:7] == [BOS] + [320] * 5 + [EOS]
    assert info["chunks"][2]["ids"][:3] == [BOS, EOS, 0]   # empty chunk: EOS at 1


def test_weighted_json(capsys):
    info = run_json(capsys, "1girl, (smile:1.2)", "--weighted")
    assert info["token_count"] == 4
    assert info["weights"] == pytest.approx([1, 1, 1, 1.2])


def test_rich_output_names_the_cut(capsys):
    assert tokens_command([a_caption(74) + " blue sky, green grass"]) == 0
    out = capsys.readouterr().out
    assert "79 / 75 tokens" in out
    assert "Cut after token 75" in out and "sky, green grass" in out
    assert "1–75" in out and "EOS" in out


def test_rich_output_chunks(capsys):
    assert tokens_command(["a photo of a cat", "--max-token-length", "150", "--v2"]) == 0
    out = capsys.readouterr().out
    assert "5 / 150 tokens" in out and "2 chunks" in out and "152 positions" in out
    assert "(empty)" in out and "Cut after" not in out


def test_the_chunk_table_fits_80_columns_with_every_figure_whole(capsys, monkeypatch):
    """At 80 columns the caption text column gives way; chunk numbers, spans, counts and the
    last id are never cut (issue 29: nothing cut at 80 columns)."""
    monkeypatch.setenv("COLUMNS", "80")
    caption = ", ".join(f"long tag number {i}" for i in range(60))
    assert tokens_command([caption, "--max-token-length", "225", "--v2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if "│" in line or "┃" in line]
    assert table and max(len(line) for line in table) <= 80
    for header in ("chunk", "caption tokens", "count", "ends with"):
        assert any(header in line for line in table), header
    for index, span in enumerate(("1–75", "76–150", "151–225")):
        assert any(line.startswith(f"│     {index} │") and f" {span} │    75 │" in line and "EOS │" in line
                   for line in table), span


def test_stdin_and_tokenizer_dir(capsys, monkeypatch, tmp_path):
    tokenizer(True).save_pretrained(str(tmp_path / "tokenizer"))
    monkeypatch.setattr("sys.stdin", io.StringIO("a photo of a cat\n"))
    info = run_json(capsys, "-", "--tokenizer-dir", str(tmp_path))
    assert info["token_count"] == 5 and info["pads_with"] == "!"


def test_usage_errors(capsys, tmp_path):
    assert tokens_command(["x", "--max-token-length", "100"]) == 2
    assert "150" in capsys.readouterr().err
    assert tokens_command(["x", "--tokenizer-dir", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert tokens_command([]) == 2


def test_analyse_caption_empty():
    info = analyse_caption("", tokenizer(), max_token_length=150)
    assert info["token_count"] == 0 and len(info["chunks"]) == 2
    assert all(c["text_tokens"] == 0 for c in info["chunks"])
