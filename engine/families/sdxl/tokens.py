"""SDXL's token layout for both text encoders, as kohya's ``SdxlTokenizeStrategy`` builds it.

Both tokenizers are CLIP's BPE over the same 49,408-entry vocabulary, so a caption has the
same text ids for both; they differ only in padding. kohya loads ``openai/clip-vit-large-patch14``
(pads with ``<|endoftext|>``, SD1's layout) and ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``
with ``pad_token_id = 0`` (``"!"``, SD2's layout), whatever tokenizer folders the model has.

75 / 150 / 225 tokens use the layout SD1 and SD2 training already uses
(``engine/models/tokenizer.py``: ``pad_ids`` then ``chunk_ids``, kohya's
``TokenizeStrategy._get_input_ids``): the caption is padded to N + 2 ids and cut into
chunks of 77, each with its own BOS and EOS; with "!" padding a chunk full of text ends in
EOS and an empty chunk starts with EOS. Plain lists, no torch: the wizard and
``sdft tokens`` can show both layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models.tokenizer import BOS_ID, EOS_ID, check_max_token_length, chunk_ids, pad_ids

TE1_PAD_ID = EOS_ID   # CLIP ViT-L's tokenizer pads with <|endoftext|>
TE2_PAD_ID = 0        # bigG's pads with "!" (kohya: tokenizer2.pad_token_id = 0)


@dataclass(frozen=True)
class SdxlTokenLayout:
    """One caption's ids for each text encoder: n chunks of 77 (n = max_token_length / 75)."""

    te1: list[list[int]]
    te2: list[list[int]]
    text_tokens: int      # before truncation, BOS/EOS not counted


def sdxl_token_layout(text_ids: list[int], max_token_length: int = 75) -> SdxlTokenLayout:
    """A caption's text ids (no BOS/EOS) → both encoders' chunks, truncated to the limit."""
    check_max_token_length(max_token_length)
    chunks = []
    for pad in (TE1_PAD_ID, TE2_PAD_ID):
        padded = pad_ids(text_ids, max_token_length, bos=BOS_ID, eos=EOS_ID, pad=pad)
        chunks.append(chunk_ids(padded, eos=EOS_ID, pad=pad))
    return SdxlTokenLayout(te1=chunks[0], te2=chunks[1], text_tokens=len(text_ids))


def tokenize_sdxl(captions: list[str], max_token_length: int = 75, tokenizer=None) -> list[SdxlTokenLayout]:
    """Captions → layouts, with one batched call of CLIP's tokenizer (the built-in one by default)."""
    from engine.models.tokenizer import cached_clip_tokenizer

    if isinstance(captions, str):
        captions = [captions]
    tok = tokenizer or cached_clip_tokenizer(False)
    if tok.bos_token_id != BOS_ID or tok.eos_token_id != EOS_ID:
        raise ValueError(
            f"SDXL's tokenizers are CLIP's (BOS {BOS_ID}, EOS {EOS_ID}); this one has BOS "
            f"{tok.bos_token_id} and EOS {tok.eos_token_id}: check model.tokenizer_dir"
        )
    encoded = tok(list(captions), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [sdxl_token_layout(ids, max_token_length) for ids in encoded]
