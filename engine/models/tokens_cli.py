"""``sdft tokens "TEXT"``: how CLIP reads a caption (count, cut, chunk layout).

Uses the exact layout the trainer uses, so a user can check a caption before
training: how many tokens it has, which words fall past ``max_token_length`` and are never
seen, and how the ids split into chunks of 77. No torch is imported.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from engine.commandline import run_command
from engine.models.tokenizer import (
    CHUNK_TEXT,
    MAX_TOKEN_LENGTHS,
    chunk_ids,
    embedding_length,
    pad_ids,
)

USAGE_ERROR = 2


def analyse_caption(text: str, tokenizer, *, max_token_length: int = 75, weighted: bool = False) -> dict[str, Any]:
    """Everything ``sdft tokens`` shows, as plain JSON-ready values.

    Keys: token_count, max_token_length, truncated, kept_text, cut_text, tokens (the
    caption's tokens as text), cut_tokens, embedding_length, pads_with, chunks (index,
    ids[77], text_tokens, first/last caption token number, 1-based, or None when empty,
    text: the chunk's tokens decoded). Without weighting, kept_text + cut_text == text.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    limit = max_token_length
    weights: list[float] | None = None
    offsets = None
    if weighted:
        from engine.models.weighting import weighted_token_ids

        item = weighted_token_ids(tokenizer, [text], max_tokens=10**9)[0]
        ids, weights = item.ids, item.weights
    else:
        encoded = tokenizer(
            [text], add_special_tokens=False, truncation=False, verbose=False,
            return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)),
        )
        ids = list(encoded["input_ids"][0])
        if "offset_mapping" in encoded:
            offsets = encoded["offset_mapping"][0]

    pieces = tokenizer.batch_decode([[i] for i in ids]) if ids else []
    truncated = len(ids) > limit
    if truncated and offsets is not None:
        cut_at = offsets[limit][0]
        kept_text, cut_text = text[:cut_at], text[cut_at:]   # kept + cut == text
    elif truncated:  # weighted, or a slow tokenizer: rebuild the text from the tokens
        kept_text = tokenizer.decode(ids[:limit]).strip() + " "
        cut_text = tokenizer.decode(ids[limit:]).strip()
    else:
        kept_text, cut_text = text, ""

    padded = pad_ids(ids, limit, bos=bos, eos=eos, pad=pad)
    chunks = []
    kept = min(len(ids), limit)
    for index, chunk in enumerate(chunk_ids(padded, eos=eos, pad=pad)):
        first = index * CHUNK_TEXT
        count = max(0, min(kept - first, CHUNK_TEXT))
        chunks.append(
            {
                "index": index,
                "ids": chunk,
                "text_tokens": count,
                "first_token": first + 1 if count else None,
                "last_token": first + count if count else None,
                "text": _span_text(text, ids, offsets, tokenizer, first, first + count) if count else "",
            }
        )
    result: dict[str, Any] = {
        "text": text,
        "token_count": len(ids),
        "max_token_length": limit,
        "truncated": truncated,
        "kept_text": kept_text,
        "cut_text": cut_text,
        "tokens": pieces[:limit],
        "cut_tokens": pieces[limit:],
        "embedding_length": embedding_length(limit),
        "pads_with": "!" if pad != eos else "<|endoftext|>",
        "chunks": chunks,
    }
    if weights is not None:
        result["weights"] = weights[:limit]
    return result


def _span_text(text: str, ids: list[int], offsets, tokenizer, start: int, stop: int) -> str:
    """The caption text of tokens ``start:stop``: sliced from the caption when the
    tokenizer gives character offsets, else decoded (lower case, CLIP's spacing)."""
    if offsets is not None:
        return text[offsets[start][0] : offsets[stop - 1][1]]
    return tokenizer.decode(ids[start:stop]).strip()


def register(commands) -> None:
    """Add ``tokens`` to the ``sdft`` tree (see engine.commandline)."""
    parser = commands.add_parser(
        "tokens", help="show how a caption is tokenized and chunked",
        description="Show how CLIP tokenizes a caption: the token count, where it is cut, and the chunk layout.",
    )
    parser.add_argument("text", help='the caption ("-" reads it from standard input)')
    parser.add_argument(
        "--max-token-length", type=int, choices=MAX_TOKEN_LENGTHS, default=75,
        help="model.max_token_length: 75 (CLIP's limit), 150 or 225 (default 75)",
    )
    parser.add_argument("--v2", action="store_true", help='SD2 layout (pads with "!")')
    parser.add_argument("--weighted", action="store_true", help="read A1111 attention syntax: (x), [x], (x:1.3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tokenizer-dir", metavar="DIR", help="a tokenizer folder (default: built-in CLIP vocabulary)")
    parser.set_defaults(run=_tokens)


def tokens_command(argv: list[str] | None = None) -> int:
    """``sdft tokens`` from Python; returns the exit code (0 ok, 2 usage error)."""
    try:
        return run_command(register, "tokens", argv)
    except SystemExit as exit_:  # argparse already printed the reason
        return int(exit_.code or 0)


def _tokens(args) -> int:
    text = sys.stdin.read().strip("\n") if args.text == "-" else args.text
    try:
        tokenizer = _tokenizer(args.tokenizer_dir, args.v2)
    except (OSError, ValueError) as error:
        print(f"sdft tokens: cannot load a tokenizer from {args.tokenizer_dir}: {error}", file=sys.stderr)
        return USAGE_ERROR
    info = analyse_caption(text, tokenizer, max_token_length=args.max_token_length, weighted=args.weighted)
    info["v2"] = bool(args.v2)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        _print_rich(info)
    return 0


def _tokenizer(tokenizer_dir: str | None, v2: bool):
    from pathlib import Path

    from engine.models.tokenizer import cached_clip_tokenizer, load_tokenizer

    if tokenizer_dir is None:
        return cached_clip_tokenizer(v2)
    if not Path(tokenizer_dir).is_dir():
        raise ValueError("not a folder")
    return load_tokenizer(tokenizer_dir, v2=v2)


def _print_rich(info: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from engine.console import make_console

    console = make_console()  # captions are printed as they are, brackets included
    limit, count = info["max_token_length"], info["token_count"]
    status = Text(f"{count} / {limit} tokens", style="bold red" if info["truncated"] else "bold green")
    status.append(
        f"   ({'SD2' if info['v2'] else 'SD1'}, pads with {info['pads_with']}, "
        f"{len(info['chunks'])} chunk{'s' if len(info['chunks']) > 1 else ''}, "
        f"{info['embedding_length']} positions)",
        style="dim",
    )
    console.print(status)

    caption = Text(info["kept_text"])
    if info["truncated"]:
        caption.append(info["cut_text"], style="bold red strike")
    console.print(caption)
    if info["truncated"]:
        over = count - limit
        console.print(
            Text(
                f"Cut after token {limit}: {over} token{'s' if over > 1 else ''} past the limit "
                f"are never seen: {info['cut_text'].strip()!r}. Shorten the caption or raise "
                "--max-token-length (150 or 225).",
                style="red",
            )
        )

    table = Table(title="Chunks (77 ids each: BOS + 75 + EOS)", title_justify="left")
    table.add_column("chunk", justify="right")
    table.add_column("caption tokens", justify="right")
    table.add_column("count", justify="right")
    table.add_column("text")
    table.add_column("ends with", justify="right")
    for chunk in info["chunks"]:
        if chunk["text_tokens"]:
            span = f"{chunk['first_token']}–{chunk['last_token']}"
            words = chunk["text"]
        else:
            span, words = "—", "(empty)"
        table.add_row(
            str(chunk["index"]), span, str(chunk["text_tokens"]), _preview(words), _name(chunk["ids"][-1], info)
        )
    console.print(table)


def _preview(words: str, width: int = 48) -> str:
    return words if len(words) <= width else words[: width - 1] + "…"


def _name(token_id: int, info: dict[str, Any]) -> str:
    if token_id == 49407:
        return "EOS"
    if token_id == 0 and info["pads_with"] == "!":
        return 'PAD "!"'
    return str(token_id)


__all__ = ["analyse_caption", "tokens_command"]
