"""CLIP's tokenizer, built offline from the BPE merge list shipped with sdft.

SD1 and SD2 share CLIP's 49,408-entry vocabulary; they differ only in padding: SD1 pads
with ``<|endoftext|>`` (49407), SD2 with ``"!"`` (id 0). SPEC §5.1.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from pathlib import Path

BOS_ID = 49406
EOS_ID = 49407
SD2_PAD_TOKEN = "!"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2  # the published CLIP recipe keeps the first 48,894 merges


def _bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte -> printable character table, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges derived from the packaged BPE file (CLIP's recipe)."""
    data = resources.files("engine.models").joinpath("clip_bpe").joinpath(BPE_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : MERGE_COUNT + 1]
    merges = [tuple(line.split()) for line in lines]
    base = _bytes_to_unicode()
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges  # type: ignore[return-value]


def build_clip_tokenizer(v2: bool = False):
    """A transformers CLIPTokenizer with SD1 (EOS) or SD2 ("!") padding, no network."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pad = SD2_PAD_TOKEN if v2 else "<|endoftext|>"
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad, model_max_length=77)


def load_tokenizer(source: str | Path | None = None, v2: bool = False):
    """The model's own tokenizer when it has one (a folder), else the built-in vocabulary.

    SPEC §5.5: ``model.tokenizer_dir`` or a diffusers folder's ``tokenizer/`` wins.
    """
    if source is not None:
        from transformers import CLIPTokenizer

        folder = Path(source)
        if (folder / "tokenizer").is_dir():
            folder = folder / "tokenizer"
        if any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json")):
            return CLIPTokenizer.from_pretrained(str(folder))
    return build_clip_tokenizer(v2=v2)
