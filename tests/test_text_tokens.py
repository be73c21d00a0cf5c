"""Token ids for 75 / 150 / 225 tokens in SD1 and SD2 modes, hand-computed."""

from __future__ import annotations

import pytest
from fresh_process import snippet

from engine.models.tokenizer import (
    chunk_ids,
    count_tokens,
    embedding_length,
    pad_ids,
)
from tests.text_helpers import BOS, EOS, SD2_PAD, A, a_caption, tokenizer

CAT = [320, 1125, 539, 320, 2368]  # "a photo of a cat"


def full(count=75):
    """A chunk whose 75 text slots are all "a"."""
    return [BOS] + [A] * count + [EOS]


def layout(text: str, N: int, v2: bool):
    from engine.models.text_encoding import PromptEncoder

    encoder = PromptEncoder(tokenizer(v2), None, max_token_length=N, v2=v2)
    return encoder.tokenize([text]).ids[0].tolist()


# (text, N) -> expected chunks, SD1 pads with EOS
SD1_CASES = {
    ("a photo of a cat", 75): [[BOS, *CAT, EOS] + [EOS] * 70],
    ("a photo of a cat", 150): [[BOS, *CAT, EOS] + [EOS] * 70, [BOS] + [EOS] * 76],
    (a_caption(75), 75): [full()],
    (a_caption(76), 75): [full()],
    (a_caption(76), 150): [full(), [BOS, A] + [EOS] * 75],
    (a_caption(150), 150): [full(), full()],
    (a_caption(151), 150): [full(), full()],
    (a_caption(151), 225): [full(), full(), [BOS, A] + [EOS] * 75],
    (a_caption(225), 225): [full(), full(), full()],
    (a_caption(400), 225): [full(), full(), full()],
    ("", 225): [[BOS] + [EOS] * 76] * 3,
}

# SD2 pads with "!" (0); a full chunk ends in EOS, an empty chunk gets EOS at position 1.
P = SD2_PAD
SD2_CASES = {
    ("a photo of a cat", 75): [[BOS, *CAT, EOS] + [P] * 70],
    ("a photo of a cat", 150): [[BOS, *CAT, EOS] + [P] * 70, [BOS, EOS] + [P] * 75],
    ("a photo of a cat", 225): [[BOS, *CAT, EOS] + [P] * 70] + [[BOS, EOS] + [P] * 75] * 2,
    (a_caption(74), 150): [[BOS] + [A] * 74 + [EOS, P], [BOS, EOS] + [P] * 75],
    (a_caption(75), 75): [full()],
    (a_caption(75), 150): [full(), [BOS, EOS] + [P] * 75],
    (a_caption(76), 75): [full()],
    (a_caption(76), 150): [full(), [BOS, A, EOS] + [P] * 74],
    (a_caption(150), 150): [full(), full()],
    (a_caption(151), 150): [full(), full()],
    (a_caption(151), 225): [full(), full(), [BOS, A, EOS] + [P] * 74],
    (a_caption(225), 225): [full(), full(), full()],
    (a_caption(400), 225): [full(), full(), full()],
    ("", 150): [[BOS, EOS] + [P] * 75, [BOS, EOS] + [P] * 75],
}


@pytest.mark.parametrize("key", list(SD1_CASES), ids=lambda k: f"{len(k[0])}chars-N{k[1]}")
def test_sd1_ids(key):
    text, N = key
    assert layout(text, N, v2=False) == SD1_CASES[key]


@pytest.mark.parametrize("key", list(SD2_CASES), ids=lambda k: f"{len(k[0])}chars-N{k[1]}")
def test_sd2_ids(key):
    text, N = key
    assert layout(text, N, v2=True) == SD2_CASES[key]


@pytest.mark.parametrize("v2", [False, True])
def test_n1_matches_the_tokenizers_own_padding(v2):
    tok = tokenizer(v2)
    for text in ["a photo of a cat", a_caption(75), a_caption(90), "", "café, 1girl, (smile:1.2)"]:
        own = tok(text, padding="max_length", truncation=True, max_length=77)["input_ids"]
        assert layout(text, 75, v2) == [own]


@pytest.mark.parametrize("N, chunks", [(75, 1), (150, 2), (225, 3)])
def test_batch_shapes(N, chunks):
    from engine.models.text_encoding import PromptEncoder

    encoder = PromptEncoder(tokenizer(), None, max_token_length=N)
    batch = encoder.tokenize(["short", a_caption(160), ""])
    assert tuple(batch.ids.shape) == (3, chunks, 77)
    assert batch.weights is None
    assert batch.token_counts == (1, 160, 0)
    assert encoder.embedding_length == embedding_length(N) == {75: 77, 150: 152, 225: 227}[N]


def test_weighted_tokenize_lays_weights_out_like_ids():
    from engine.models.text_encoding import PromptEncoder

    messages = []
    encoder = PromptEncoder(tokenizer(), None, max_token_length=150, weighted=True, warn=messages.append)
    batch = encoder.tokenize([a_caption(79) + " (b:3)"])
    ids, weights = batch.ids[0], batch.weights[0]
    assert tuple(weights.shape) == (2, 77)
    # token 80 is "b": chunk 1, position 80 - 75 = 5
    assert ids[1, 5].item() == 321 and weights[1, 5].item() == pytest.approx(3.0)
    assert weights.sum().item() == pytest.approx(2 * 77 + 2.0)  # all 1.0 except that one
    assert messages == []


def test_weighted_truncation_warns_and_stops_repeating():
    from engine.models.text_encoding import PromptEncoder

    messages = []
    encoder = PromptEncoder(tokenizer(), None, weighted=True, warn=messages.append)
    for k in range(8):
        encoder.tokenize([a_caption(80 + k)])
    assert len(messages) == 5
    assert "80 tokens" in messages[0] and "max_token_length" in messages[0]
    assert "not reported" in messages[-1]


def test_pad_and_chunk_helpers():
    assert pad_ids([5, 6], 75, bos=BOS, eos=EOS, pad=0) == [BOS, 5, 6, EOS] + [0] * 73
    assert pad_ids(list(range(100)), 75, bos=BOS, eos=EOS, pad=0)[-2:] == [74, EOS]
    with pytest.raises(ValueError):
        chunk_ids([BOS, EOS], eos=EOS, pad=0)
    with pytest.raises(ValueError, match="150 or 225"):
        embedding_length(100)


def test_count_tokens_batch():
    texts = ["a photo of a cat", "", a_caption(200), "1girl, (smile:1.2)"] * 500
    counts = count_tokens(texts)
    assert counts[:4] == [5, 0, 200, 10]  # 1 girl , ( smile : 1 . 2 )
    assert len(counts) == 2000
    assert count_tokens(["1girl, (smile:1.2)"], weighted=True) == [4]
    assert count_tokens([]) == []


TOKENS_TORCH_FREE = snippet("sdft tokens", (
    "import sys\n"
    "from engine.models.tokenizer import count_tokens\n"
    "from engine.models import weighting, tokens_cli\n"
    "assert count_tokens(['a b']) == [2]\n"
    "assert tokens_cli.tokens_command(['a b', '--json']) == 0\n"
    "assert count_tokens(['(a:1.2) b'], True, weighted=True) == [2]\n"
    "from engine.models.tokenizer import light_tokenizer_is_trainings\n"
    "heavy = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]\n"
    "assert heavy in ([], [] if light_tokenizer_is_trainings() else ['transformers']), heavy\n"
))


def test_torch_free_modules(in_fresh_process):
    result = in_fresh_process(TOKENS_TORCH_FREE)
    assert result.returncode == 0, result.stderr


def test_token_counting_from_many_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    from engine.models.tokenizer import count_tokens

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: count_tokens(["a red circle, simple background"], v2=False), range(8)))
    assert all(r == results[0] for r in results) and results[0][0] > 0
