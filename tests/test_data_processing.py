"""per-sample caption processing, in order, seeded."""

import random

from engine.data.processing import CaptionOptions, process_caption, sample_rng, sample_seed, warmup_steps


def run(caption, rng=None, epoch=1, step=0, max_train_steps=100, **opts):
    return process_caption(caption, CaptionOptions(**opts), rng or random.Random(0), epoch=epoch, step=step,
                           max_train_steps=max_train_steps)


def test_verbatim_without_piece_options():
    assert run("a,b,  c") == "a,b,  c"
    assert run("first line\nsecond") == "first line"


def test_prefix_suffix():
    assert run("a, b", caption_prefix="pre", caption_suffix="suf") == "pre a, b suf"


def test_dropout_every_n_epochs_is_one_based():
    assert run("a", epoch=2, caption_dropout_every_n_epochs=2, caption_prefix="p") == ""
    assert run("a", epoch=1, caption_dropout_every_n_epochs=2) == "a"
    assert run("a", epoch=3, caption_dropout_every_n_epochs=2) == "a"


def test_dropout_rate():
    assert run("a", caption_dropout_rate=1.0) == ""
    kept = sum(run("a", rng=random.Random(i), caption_dropout_rate=0.5) == "a" for i in range(400))
    assert 140 < kept < 260


def test_wildcards_and_braces():
    assert run("{red|red} cat", enable_wildcard=True) == "red cat"
    assert run("{{literal}} {a|a}", enable_wildcard=True) == "{literal} a"
    seen = {run("x\ny\nz", rng=random.Random(i), enable_wildcard=True) for i in range(50)}
    assert seen == {"x", "y", "z"}
    choices = {run("{a|b|c}", rng=random.Random(i), enable_wildcard=True) for i in range(60)}
    assert choices == {"a", "b", "c"}


def test_keep_tokens_and_shuffle():
    outs = {run("x, a, b, c", rng=random.Random(i), shuffle_caption=True, keep_tokens=1) for i in range(60)}
    assert all(o.startswith("x, ") for o in outs)
    assert all(sorted(o.split(", ")[1:]) == ["a", "b", "c"] for o in outs)
    assert len(outs) == 6


def test_empty_pieces_kept_without_keep_separator():
    out = run("a,,b", shuffle_caption=True)
    assert sorted(out.split(", ")) == ["", "a", "b"]


def test_keep_tokens_separator_fixed_head_and_suffix():
    outs = {run("f1, f2 ||| a, b, , c ||| end", rng=random.Random(i), shuffle_caption=True,
                keep_tokens_separator="|||", keep_tokens=5) for i in range(80)}
    for o in outs:
        parts = o.split(", ")
        assert parts[:2] == ["f1", "f2"] and parts[-1] == "end"
        assert sorted(parts[2:-1]) == ["a", "b", "c"]       # empty pieces removed, keep_tokens ignored


def test_token_warmup():
    cap = "k, a, b, c, d"
    # keep_tokens 1 -> flex = [a, b, c, d]; warm-up 10 steps, min 1
    assert run(cap, step=0, keep_tokens=1, token_warmup_step=10) == "k, a"
    assert run(cap, step=5, keep_tokens=1, token_warmup_step=10) == "k, a, b"      # floor(5*3/10)+1 = 2
    assert run(cap, step=9, keep_tokens=1, token_warmup_step=10) == "k, a, b, c"   # floor(27/10)+1 = 3
    assert run(cap, step=10, keep_tokens=1, token_warmup_step=10) == cap
    # a fraction of max_train_steps: 0.5 * 20 = 10
    assert warmup_steps(0.5, 20) == 10
    assert run(cap, step=5, max_train_steps=20, keep_tokens=1, token_warmup_step=0.5) == "k, a, b"


def test_tag_dropout_and_separator():
    assert run("x; a; b", keep_tokens=1, caption_tag_dropout_rate=1.0, caption_separator=";") == "x"
    assert run("x;a;b", keep_tokens=3, shuffle_caption=True, caption_separator=";") == "x; a; b"


def test_secondary_separator():
    assert run("a;;;b, c", secondary_separator=";;;") == "a,b, c"


def test_seeded_rng_is_reproducible_and_distinct():
    assert sample_seed(1, 2, 3, 4) == sample_seed(1, 2, 3, 4)
    assert sample_seed(1, 2, 3, 4) != sample_seed(1, 2, 3, 5)
    a = [sample_rng(7, 1, 0, 0).random() for _ in range(2)]
    assert a[0] == a[1]
