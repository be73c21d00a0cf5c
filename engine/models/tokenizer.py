"""CLIP's tokenizer, built offline from the BPE merge list shipped with sdft.

SD1 and SD2 share CLIP's 49,408-entry vocabulary; they differ only in padding: SD1 pads
with ``<|endoftext|>`` (49407), SD2 with ``"!"`` (id 0), which is then a special token
that a caption's own "!" splits on (transformers registers every special token so).

Two builds of the same tokenizer: transformers' ``CLIPTokenizer`` for training and for
the model folders sdft writes, and :class:`ClipTokenizer`, the same ``tokenizers``
pipeline without transformers, for the commands that only count and show tokens
(``sdft tokens``, the wizard, the health check), which must start in well under a second
of CPU while importing transformers alone costs ~0.4 s (docs/formats.md, "The tokenizer").
tests/test_clip_tokenizer.py proves the two equal.
"""

from __future__ import annotations

import gzip
import threading
from functools import lru_cache
from importlib import resources
from pathlib import Path

BOS_ID = 49406
EOS_ID = 49407
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
SD2_PAD_TOKEN = "!"
SD2_PAD_ID = 0
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
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges  # type: ignore[return-value]


def build_clip_tokenizer(v2: bool = False):
    """A transformers CLIPTokenizer with SD1 (EOS) or SD2 ("!") padding, no network."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pad = SD2_PAD_TOKEN if v2 else EOS_TOKEN
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad, model_max_length=77)


# CLIP's pre-tokenizer: a word is a run of letters, one digit, a run of other non-space
# characters, or an English contraction (CLIP's simple_tokenizer, as transformers' CLIPTokenizer).
CLIP_WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
END_OF_WORD = "</w>"


def clip_pipeline(v2: bool = False):
    """CLIP's tokenizer as a ``tokenizers`` pipeline, configured as transformers' CLIPTokenizer.

    Lower-cased, NFC-normalised text with each run of white space made one space, split into
    CLIP's words, byte-level BPE with ``</w>`` ending each word; BOS, EOS (and SD2's "!")
    are special tokens, matched in the raw text before normalisation; with special tokens
    a caption is ``BOS ids EOS``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = clip_vocab_and_merges()
    pipeline = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), dropout=None, continuing_subword_prefix="",
                             end_of_word_suffix=END_OF_WORD, fuse_unk=False, unk_token=EOS_TOKEN))
    pipeline.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pipeline.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    pipeline.decoder = decoders.ByteLevel()
    pipeline.post_processor = processors.RobertaProcessing(   # BOS text EOS, offsets as they are
        (EOS_TOKEN, EOS_ID), (BOS_TOKEN, BOS_ID), trim_offsets=False, add_prefix_space=False)
    specials = ([SD2_PAD_TOKEN] if v2 else []) + [BOS_TOKEN, EOS_TOKEN]
    pipeline.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return pipeline


class ClipTokenizer:
    """CLIP's tokenizer without transformers, for counting and showing tokens.

    Callable like transformers' tokenizers on a list of captions, with the attributes sdft
    reads (``bos_token_id``, ``eos_token_id``, ``pad_token_id``, ``decode``...), so the
    model's own transformers tokenizer (``sdft tokens --tokenizer-dir``) can stand in for it.
    """

    is_fast = True   # gives character offsets
    bos_token_id = BOS_ID
    eos_token_id = EOS_ID

    def __init__(self, v2: bool = False):
        self.pipeline = clip_pipeline(v2)
        self.pad_token_id = SD2_PAD_ID if v2 else EOS_ID

    def __call__(self, texts: list[str], *, add_special_tokens: bool = True, truncation: bool = False,
                 verbose: bool = False, return_offsets_mapping: bool = False) -> dict[str, list]:
        """``{"input_ids": [...]}`` (and ``"offset_mapping"``) per caption, never truncated:
        the 75 / 150 / 225 layout cuts afterwards (``pad_ids``). ``verbose`` is accepted
        for transformers' signature; this tokenizer prints nothing."""
        if isinstance(texts, str) or truncation:
            raise ValueError("ClipTokenizer takes a list of captions and never truncates (cut with pad_ids)")
        encoded = self.pipeline.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        result: dict[str, list] = {"input_ids": [e.ids for e in encoded]}
        if return_offsets_mapping:
            result["offset_mapping"] = [e.offsets for e in encoded]
        return result

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``: each ``</w>`` becomes a space (transformers' CLIPTokenizer.decode)."""
        return self.pipeline.decode(list(ids), skip_special_tokens=False).replace(END_OF_WORD, " ").strip()

    def batch_decode(self, sequences: list[list[int]]) -> list[str]:
        return [self.decode(ids) for ids in sequences]


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """Write ``tokenizer`` as a diffusers ``tokenizer/`` folder that old and new stacks read.

    transformers >= 5 saves only ``tokenizer.json``; older releases (the slow CLIPTokenizer
    that diffusers <= 0.32 loads) need ``vocab.json`` and ``merges.txt``, so both are
    derived from the BPE model in ``tokenizer.json`` when the save did not write them.
    """
    import json

    from engine.atomic import write_text

    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    model = json.loads((folder / "tokenizer.json").read_text("utf-8"))["model"]
    if not (folder / "vocab.json").is_file():
        write_text(folder / "vocab.json", json.dumps(model["vocab"], ensure_ascii=False) + "\n")
    if not (folder / "merges.txt").is_file():
        lines = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        write_text(folder / "merges.txt", "\n".join(["#version: 0.2", *lines]) + "\n")
    return folder


def load_tokenizer(source: str | Path | None = None, v2: bool = False):
    """The model's own tokenizer when it has one (a folder), else the built-in vocabulary.

    ``model.tokenizer_dir`` or a diffusers folder's ``tokenizer/`` wins.
    """
    if source is not None:
        folder = Path(source)
        if (folder / "tokenizer").is_dir():
            folder = folder / "tokenizer"
        if any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json")):
            return _folder_tokenizer(str(folder.resolve()), _files_stamp(folder))
    return _builtin_model_tokenizer(v2)


@lru_cache(maxsize=2)
def _builtin_model_tokenizer(v2: bool):
    """The built-in vocabulary as a model's tokenizer: transformers' (a model saves it with
    ``save_pretrained`` and pipelines call it), built once per process as a folder's is;
    counting uses the lighter :func:`cached_clip_tokenizer`."""
    with _BUILD_LOCK:
        return build_clip_tokenizer(v2=v2)


def _files_stamp(folder: Path) -> tuple:
    """What identifies a tokenizer folder's contents: each file's name, size and mtime."""
    return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in folder.iterdir()
                        if p.is_file() and (st := p.stat())))


@lru_cache(maxsize=4)
def _folder_tokenizer(folder: str, _stamp: tuple):
    """A folder's tokenizer, read once per process while its files stay the same: reading
    CLIP's 3.6 MB tokenizer.json costs more than loading a small model's weights, and the
    learning benchmark, the wizard and the tests load the same model many times. Tokenizers
    are only read from (training, sampling and token counts never change one)."""
    from transformers import CLIPTokenizer

    with _BUILD_LOCK:
        return CLIPTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------------------------------
# Token layout for 75 / 150 / 225 tokens. Plain lists, no torch, so the
# health check, the wizard and `sdft tokens` share it with the training encoder.

MAX_TOKEN_LENGTHS = (75, 150, 225)
CHUNK_TEXT = 75          # text tokens per chunk
CHUNK_LEN = CHUNK_TEXT + 2   # one chunk = BOS + 75 + EOS = CLIP's 77 positions


def check_max_token_length(max_token_length: int) -> int:
    """The number of 77-id chunks for ``max_token_length``; ValueError names the fix."""
    if max_token_length not in MAX_TOKEN_LENGTHS:
        raise ValueError(
            f"model.max_token_length = {max_token_length!r} is not supported: "
            "use 75 (CLIP's own limit), 150 or 225"
        )
    return max_token_length // CHUNK_TEXT


def embedding_length(max_token_length: int) -> int:
    """Positions the U-Net sees after recombination: 77, 152 or 227."""
    chunks = check_max_token_length(max_token_length)
    return CHUNK_LEN if chunks == 1 else CHUNK_TEXT * chunks + 2


def pad_ids(text_ids: list[int], max_token_length: int, *, bos: int, eos: int, pad: int) -> list[int]:
    """``[BOS] + first N text ids + [EOS] + PAD…``, length N + 2."""
    kept = list(text_ids[:max_token_length])
    return [bos, *kept, eos] + [pad] * (max_token_length - len(kept))


def chunk_ids(ids: list[int], *, eos: int, pad: int) -> list[list[int]]:
    """Split N + 2 padded ids into chunks of 77, each with its own BOS/EOS.

    Chunk j is ``[ids[0]] + ids[1+75j : 76+75j] + [ids[-1]]``. With SD2's "!" padding
    (pad != eos) two fixes apply: a chunk full of text ends in EOS, and an empty chunk gets
    EOS at position 1. With SD1 (pad == eos) both are no-ops.
    """
    total = len(ids)
    if (total - 2) % CHUNK_TEXT or total < CHUNK_LEN:
        raise ValueError(f"expected 77, 152 or 227 padded ids, got {total}")
    chunks_n = (total - 2) // CHUNK_TEXT
    if chunks_n == 1:
        return [list(ids)]
    chunks = []
    for j in range(chunks_n):
        chunk = [ids[0], *ids[1 + CHUNK_TEXT * j : 1 + CHUNK_TEXT * (j + 1)], ids[-1]]
        if chunk[-2] not in (eos, pad):
            chunk[-1] = eos
        if chunk[1] == pad:
            chunk[1] = eos
        chunks.append(chunk)
    return chunks


_BUILD_LOCK = threading.Lock()


def light_tokenizer_is_trainings() -> bool:
    """Whether :class:`ClipTokenizer` reads captions as training's tokenizer does.

    transformers >= 5 builds CLIPTokenizer on this same pipeline. The pure-Python
    CLIPTokenizer of transformers 4 reads some text its own way (CJK characters one word
    each, zero-width and other format characters dropped, ``<|ENDOFTEXT|>`` in any case
    special), so under it the counts come from transformers itself. Reads the installed
    version's metadata, not the package: no import.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("transformers").split(".")[0]) >= 5
    except (PackageNotFoundError, ValueError):
        return True


@lru_cache(maxsize=2)
def _cached(v2: bool):
    return ClipTokenizer(v2=v2) if light_tokenizer_is_trainings() else build_clip_tokenizer(v2=v2)


def cached_clip_tokenizer(v2: bool = False):
    """The built-in tokenizer for counting, built once per process (thousands of captions):
    :class:`ClipTokenizer`, or transformers' where the two differ (``light_tokenizer_is_trainings``).

    Locked: the wizard counts tokens in worker threads, and building it twice at once
    would waste the ~0.2 s it costs (and transformers' lazy imports fail from two threads).
    """
    with _BUILD_LOCK:
        return _cached(v2)


def count_tokens(texts: list[str], v2: bool = False, *, weighted: bool = False, tokenizer=None) -> list[int]:
    """CLIP text tokens per caption, BOS/EOS not counted (compare with 75 / 150 / 225).

    One batched tokenizer call for all captions. ``weighted`` counts what the encoder reads
    once A1111 attention syntax is removed. Neither torch nor transformers is imported.
    """
    texts = list(texts)
    if not texts:
        return []
    if weighted:
        from engine.models.weighting import weighted_token_ids

        tok = tokenizer or cached_clip_tokenizer(bool(v2))
        return [item.total for item in weighted_token_ids(tok, texts, max_tokens=0)]
    tok = tokenizer or cached_clip_tokenizer(bool(v2))
    encoded = tok(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [len(ids) for ids in encoded]
