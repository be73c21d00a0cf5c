"""The light CLIP tokenizer (no transformers) gives what transformers' CLIPTokenizer gives.

`sdft tokens`, the wizard's counts and the health check use ``ClipTokenizer``; training uses
transformers' ``CLIPTokenizer`` built from the same BPE file. Both must read every caption
alike: the same ids (with and without BOS/EOS), the same character offsets, the same decoded
text, hence the same ``sdft tokens`` report at 75 / 150 / 225 tokens, for SD1 (pads with EOS)
and SD2 (pads with "!", which is then a special token).
"""

from __future__ import annotations

import json
import random

import pytest

from engine.models import tokenizer as tokenizer_module
from engine.models.tokenizer import ClipTokenizer, build_clip_tokenizer, count_tokens, light_tokenizer_is_trainings
from engine.models.tokens_cli import analyse_caption

# transformers 4's pure-Python CLIPTokenizer reads CJK and zero-width characters its own way:
# sdft then counts with it (test_transformers_4_counts_with_its_own_tokenizer), so there is
# nothing to compare the light tokenizer with
same_reader = pytest.mark.skipif(not light_tokenizer_is_trainings(),
                                 reason="transformers < 5: counting uses transformers' own tokenizer")

A_LONG_SENTENCE = ("A wide photograph of an old stone bridge over a quiet river at dusk, warm lamps reflected "
                   "in the water, mist rising between the arches, a lone cyclist crossing, ")
A_LONG_TAG_LIST = ", ".join(f"tag_{i} (detail:1.{i % 9})" for i in range(90))

CAPTIONS = [
    # tags, kohya/danbooru style
    "1girl, solo, long hair, looking at viewer, smile, blue eyes, hat, simple background",
    "masterpiece, best quality, ultra-detailed, 8k, RAW photo, film grain",
    "score_9, score_8_up, rating:safe, artist:someone, year_2023",
    "sks dog, a photo of sks dog",
    # sentences, contractions, capitals
    "A photo of a cat sitting on a red sofa next to a window.",
    "It's the dog's bone; they're sure we've seen it, I'm told you'll see what he'd do.",
    "IT'S LOUD. THEY'RE HERE! Don't SHOUT?!",
    "Hello, World! Wow!! Amazing!!! (really?!)",
    # numbers and punctuation runs
    "1990s, 35mm, f/1.8, 1/250s, ISO 400, 3.14159, 2024-01-31, 12:30pm, #hashtag @user",
    "!!! ??? ... --- *** ~~~ ||| \\\\ // ^^ ## <> {} [] ()",
    "email@example.com https://example.com/path?q=1&x=2",
    # attention syntax (A1111), BREAK, wildcards
    "(masterpiece:1.2), ((best quality)), [[low quality]], (red hair:0.8), \\(escaped\\)",
    "a cat BREAK a dog AND a bird, {red|blue} sky, __wildcard__",
    "super(man), (a cat:1.5) [dog] (nested (inner:1.3) outer:1.1)",
    "(unclosed paren, [unclosed bracket, trailing: colon:, (:1.2), ()",
    # unicode: accents, NFD vs NFC, other scripts, emoji, full-width
    "café, naïve, résumé, Ångström, Straße, ÉLAN, crème brûlée",
    "cafe\u0301, nai\u0308ve",  # decomposed accents: NFC makes them one character
    "日本語のキャプション, 中文标题, 한국어 캡션",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी, ไทย",
    "🐱 cat, 👩‍🚀 astronaut, 🇯🇵 flag, ❤️ heart, 1️⃣",
    "ｆｕｌｌ－ｗｉｄｔｈ　ｔｅｘｔ，１２３",
    "ﬁ ligature, ½ fraction, ² superscript, Ⅻ numeral, ℃ sign",
    "zero\u200bwidth, soft\u00adhyphen, rtl\u200fmark, bom\ufeffhere",
    # white space
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\nand  double  spaces\u00a0nbsp\u3000ideographic",
    "\n\n\t ",
    "",
    # the special tokens written in a caption
    "<|startoftext|>a cat<|endoftext|>",
    "a <|endoftext|> b <|ENDOFTEXT|> c",
    "wow! a b!c !!! !",
    # long captions: past 75, 150 and 225 tokens
    A_LONG_SENTENCE * 3,
    A_LONG_SENTENCE * 8,
    A_LONG_TAG_LIST,
    "a " * 300,
]

# characters a random caption is drawn from: every class of character that CLIP's word split,
# the normaliser or the byte-level BPE treats on its own
ALPHABET = (list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789") + list(" ,.:;!?()[]{}<>|\\/'\"-_=+*&^%$#@~`")
            + [" ", " ", " ", "\t", "\n", "\u00a0", "\u3000", "\u200b"]
            + list("éèêëÉñßøåæœçüÜ") + ["e\u0301", "a\u0308"] + list("日本語中文한국어αβγжщ")
            + ["🐱", "👩‍🚀", "❤️", "ﬁ", "½", "²", "Ⅻ"] + ["'s", "'t", "'re", "'ll", "'d", "'m", "'ve"]
            + ["<|endoftext|>", "<|startoftext|>", "(x:1.2)", "BREAK"])


def random_captions(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60))) for _ in range(count)]


@pytest.fixture(scope="module", params=[False, True], ids=["sd1", "sd2"])
def pair(request):
    v2 = request.param
    return ClipTokenizer(v2=v2), build_clip_tokenizer(v2=v2)


@same_reader
def test_the_same_pipeline_as_transformers(pair):
    """Normaliser, word split, BPE model, special tokens, post-processor and decoder: each part
    as transformers configures it, so both read any text alike (not only the captions below)."""
    light, full = pair
    backend = getattr(full, "backend_tokenizer", None)
    if backend is None:
        pytest.skip("this transformers' CLIPTokenizer has no tokenizers pipeline (the behaviour tests still run)")
    ours, theirs = json.loads(light.pipeline.to_str()), json.loads(backend.to_str())
    for part in ("normalizer", "pre_tokenizer", "model", "added_tokens", "post_processor", "decoder"):
        assert ours[part] == theirs[part], part


@same_reader
@pytest.mark.parametrize("special", [False, True], ids=["text-only", "bos-eos"])
def test_the_same_ids_and_offsets(pair, special):
    light, full = pair
    texts = CAPTIONS + random_captions(400, seed=29)
    ours = light(texts, add_special_tokens=special, return_offsets_mapping=True)
    theirs = full(texts, add_special_tokens=special, truncation=False, return_offsets_mapping=True)
    for text, ids, expected in zip(texts, ours["input_ids"], theirs["input_ids"], strict=True):
        assert ids == list(expected), text
    for text, offsets, expected in zip(texts, ours["offset_mapping"], theirs["offset_mapping"], strict=True):
        assert [tuple(o) for o in offsets] == [tuple(o) for o in expected], text


@same_reader
def test_the_same_decoded_text(pair):
    light, full = pair
    for ids in full(CAPTIONS, add_special_tokens=True)["input_ids"]:
        assert light.decode(ids) == full.decode(ids)
        pieces = [[i] for i in ids]
        assert light.batch_decode(pieces) == full.batch_decode(pieces)


@same_reader
def test_sd2_splits_on_its_pad_token_as_transformers_does(pair):
    light, full = pair
    [ids] = light(["wow!!"], add_special_tokens=False)["input_ids"]
    assert ids == full(["wow!!"], add_special_tokens=False)["input_ids"][0]
    assert (ids[1:] == [0, 0]) == (light.pad_token_id == 0)   # SD1 reads "!!" as one token
    assert (light.bos_token_id, light.eos_token_id, light.pad_token_id) == \
        (full.bos_token_id, full.eos_token_id, full.pad_token_id)


@same_reader
@pytest.mark.parametrize("max_token_length", [75, 150, 225])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_sdft_tokens_reports_alike(pair, max_token_length, weighted):
    """Counts, cut point, kept and cut text, pieces, every chunk's 77 ids (BOS/EOS/PAD layout,
    SD2's "!" fixes) and weights: the whole report of `sdft tokens`."""
    light, full = pair
    for text in CAPTIONS:
        ours = analyse_caption(text, light, max_token_length=max_token_length, weighted=weighted)
        theirs = analyse_caption(text, full, max_token_length=max_token_length, weighted=weighted)
        assert ours == theirs, text


@same_reader
def test_count_tokens_uses_the_light_tokenizer_and_counts_alike():
    for v2 in (False, True):
        full = build_clip_tokenizer(v2)
        for weighted in (False, True):
            assert count_tokens(CAPTIONS, v2, weighted=weighted) == \
                count_tokens(CAPTIONS, v2, weighted=weighted, tokenizer=full)


def test_transformers_4_counts_with_its_own_tokenizer(monkeypatch):
    """Where the light tokenizer is not training's (transformers 4), counting uses transformers'."""
    monkeypatch.setattr(tokenizer_module, "light_tokenizer_is_trainings", lambda: False)
    tokenizer_module._cached.cache_clear()
    try:
        counter = tokenizer_module.cached_clip_tokenizer(True)
        assert not isinstance(counter, ClipTokenizer) and counter.pad_token_id == 0
    finally:
        tokenizer_module._cached.cache_clear()


def test_the_version_rule_reads_metadata_only(monkeypatch):
    import importlib.metadata

    for installed, light in (("5.25.0", True), ("4.54.1", False), ("6.0.0.dev0", True)):
        monkeypatch.setattr(importlib.metadata, "version", lambda _name, v=installed: v)
        assert light_tokenizer_is_trainings() is light, installed


def test_one_call_shape():
    light = ClipTokenizer()
    with pytest.raises(ValueError, match="list of captions"):
        light("a cat")
    with pytest.raises(ValueError, match="never truncates"):
        light(["a cat"], truncation=True)
