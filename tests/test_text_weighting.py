"""A1111 attention syntax: parsing and per-token weights. No torch needed."""

from __future__ import annotations

import pytest

from engine.models.weighting import (
    Segment,
    parse_weighted_caption,
    weighted_token_ids,
)
from tests.text_helpers import tokenizer


def pairs(text):
    return [(s.text, pytest.approx(s.weight)) for s in parse_weighted_caption(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("plain text", [("plain text", 1.0)]),
        ("a (b) c", [("a ", 1.0), ("b", 1.1), (" c", 1.0)]),
        ("a [b] c", [("a ", 1.0), ("b", 1 / 1.1), (" c", 1.0)]),
        ("((b))", [("b", 1.1 * 1.1)]),
        ("[[b]]", [("b", 1 / 1.21)]),
        ("(b:1.5) c", [("b", 1.5), (" c", 1.0)]),
        ("(b: 0.5 )", [("b", 0.5)]),
        ("(b:-1)", [("b", -1.0)]),
        ("(a (b) c:2)", [("a ", 2.0), ("b", 2.2), (" c", 2.0)]),
        ("(a [b] c)", [("a ", 1.1), ("b", 1.0), (" c", 1.1)]),
        # unbalanced: open brackets close at the end; stray closers stay text
        ("a (b c", [("a ", 1.0), ("b c", 1.1)]),
        ("a [b (c", [("a ", 1.0), ("b ", 1 / 1.1), ("c", 1.0)]),
        ("a) b]", [("a) b]", 1.0)]),
        ("x:1.2) y", [("x:1.2) y", 1.0)]),
        # escapes are literal characters with weight 1
        (r"\(a\) \[b\] \\", [(r"(a) [b] \ ".rstrip(), 1.0)]),
        (r"(\(a\))", [("(a)", 1.1)]),
        # a colon that is not a weight is text; a bad number is text
        ("(a:b)", [("a:b", 1.1)]),
        ("time 10:30", [("time 10:30", 1.0)]),
        ("(a:.)", [("a:.)", 1.1)]),
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
    ],
)
def test_parse(text, expected):
    assert pairs(text) == expected


def test_round_and_square_nest_independently():
    # "(" and "[" open, ")" closes the round one (covers "a" only), "]" the square one.
    assert pairs("([a)b]") == [("a", 1.0), ("b", 1 / 1.1)]


def test_equal_weights_merge():
    assert parse_weighted_caption("(a)(b) c") == [Segment("ab", pytest.approx(1.1)), Segment(" c", 1.0)]
    assert [s.text for s in parse_weighted_caption("a (b:1) c")] == ["a b c"]


def test_weighted_token_ids_per_segment():
    tok = tokenizer()
    [item] = weighted_token_ids(tok, ["a photo of (a cat:1.5), [dog]"], 75)
    # a photo of | a cat | , | dog  -> ids of each segment tokenized alone
    assert item.ids == [320, 1125, 539, 320, 2368, 267, 1929]
    assert item.weights == pytest.approx([1, 1, 1, 1.5, 1.5, 1, 1 / 1.1])
    assert item.total == 7 and not item.truncated


def test_segments_are_tokenized_separately():
    # A1111: "super(man)" is "super" + "man", two words for CLIP.
    tok = tokenizer()
    [item] = weighted_token_ids(tok, ["super(man)"], 75)
    assert item.ids == tok(["super", "man"], add_special_tokens=False)["input_ids"][0] + tok(
        ["man"], add_special_tokens=False
    )["input_ids"][0]


def test_weighted_truncation_keeps_first_n():
    tok = tokenizer()
    [item] = weighted_token_ids(tok, ["(" + " ".join(["a"] * 80) + ":2)"], 75)
    assert len(item.ids) == 75 and len(item.weights) == 75
    assert item.total == 80 and item.truncated
    assert set(item.weights) == {2.0}


def test_weighted_empty_caption():
    [item] = weighted_token_ids(tokenizer(), [""], 75)
    assert item.ids == [] and item.weights == [] and not item.truncated
