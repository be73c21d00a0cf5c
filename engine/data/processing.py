"""Per-sample caption processing and the per-sample random generator.

Every random choice of a sample (flip, crop offset, caption shuffle/dropout, wildcard,
latent draw) comes from one generator seeded by ``(seed, epoch, batch position, item index)``,
so results do not depend on worker count and a resumed run repeats them exactly.
No torch here.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass

from engine.data.captions import with_prefix_suffix

_CHOICE = re.compile(r"\{([^{}]+)\}")
_OPEN, _CLOSE = "\x00", "\x01"


def sample_seed(seed: int, epoch: int, position: int, index: int, salt: str = "") -> int:
    """A 63-bit seed from the sample's coordinates (stable across Python versions and runs)."""
    text = f"sdft:{salt}:{seed}:{epoch}:{position}:{index}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def sample_rng(seed: int, epoch: int, position: int, index: int) -> random.Random:
    return random.Random(sample_seed(seed, epoch, position, index))


@dataclass(frozen=True)
class CaptionOptions:
    """The subset options that shape a caption (a SubsetSpec fits this shape too)."""

    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    enable_wildcard: bool = False
    shuffle_caption: bool = False
    token_warmup_step: float = 0
    token_warmup_min: int = 1
    caption_tag_dropout_rate: float = 0.0
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_separator: str = ","
    secondary_separator: str | None = None


def warmup_steps(token_warmup_step: float, max_train_steps: int) -> int:
    """``token_warmup_step < 1`` is a fraction of the run: converted once."""
    if token_warmup_step < 1:
        return int(math.floor(token_warmup_step * max_train_steps))
    return int(token_warmup_step)


def _split_pieces(caption: str, o) -> tuple[list[str], list[str], list[str]]:
    """The caption in (fixed, flexible, fixed suffix) pieces: keep_tokens and the suffix stay put."""
    sep = o.caption_separator
    kts = o.keep_tokens_separator
    if kts and kts in caption:
        head, rest = caption.split(kts, 1)
        if kts in rest:
            middle, tail = rest.split(kts, 1)
        else:
            middle, tail = rest, ""

        def parts(text: str) -> list[str]:
            return [p.strip() for p in text.split(sep) if p.strip()]

        return parts(head), parts(middle), parts(tail)
    pieces = [p.strip() for p in caption.strip().split(sep)]
    k = max(0, o.keep_tokens)
    return pieces[:k], pieces[k:], []


def process_caption(caption: str, options, rng: random.Random, *, epoch: int, step: int,
                    max_train_steps: int) -> str:
    """One draw of a sample's caption (steps 1–5 in order).

    ``epoch`` is 1-based as in kohya; ``step`` is the exact global optimizer step.
    """
    o = options
    # 1. prefix / suffix
    caption = with_prefix_suffix(caption, o.caption_prefix, o.caption_suffix)
    # 2. caption dropout
    dropped = False
    if o.caption_dropout_rate > 0 and rng.random() < o.caption_dropout_rate:
        dropped = True
    n = o.caption_dropout_every_n_epochs
    if n > 0 and epoch % n == 0:
        dropped = True
    if dropped:
        return ""
    # 3. lines and wildcards
    if o.enable_wildcard:
        lines = caption.split("\n")
        if len(lines) > 1:
            caption = rng.choice(lines)
        caption = caption.replace("{{", _OPEN).replace("}}", _CLOSE)
        caption = _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
        caption = caption.replace(_OPEN, "{").replace(_CLOSE, "}")
    else:
        caption = caption.split("\n", 1)[0]
    # 4. pieces: warm-up, shuffle, tag dropout
    warm = warmup_steps(o.token_warmup_step, max_train_steps)
    if o.shuffle_caption or warm > 0 or o.caption_tag_dropout_rate > 0:
        fixed, flex, suffix = _split_pieces(caption, o)
        if warm > 0 and step < warm:
            keep = int(math.floor(step * (len(flex) - o.token_warmup_min) / warm)) + o.token_warmup_min
            flex = flex[:keep]
        if o.shuffle_caption:
            rng.shuffle(flex)
        if o.caption_tag_dropout_rate > 0:
            flex = [p for p in flex if rng.random() >= o.caption_tag_dropout_rate]
        caption = (o.caption_separator + " ").join(fixed + flex + suffix)
    # 5. secondary separator
    if o.secondary_separator:
        caption = caption.replace(o.secondary_separator, o.caption_separator)
    return caption
