"""Caption and tag text: read sidecars, join caption + tags, clean, edit safely.

How the joined text is processed further at each draw: docs/formats.md, "Caption processing".

Nothing here overwrites a caption unless asked: edits take a policy (skip / overwrite /
append) and every write is atomic (temp file + rename). No torch.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from engine import atomic
from engine.data.scan import lies_within

POLICIES = ("skip", "overwrite", "append")


class SidecarEncodingError(ValueError):
    """A sidecar that is not UTF-8, met where its text would be written back (append)."""


def read_sidecar(path: str | Path, *, strict: bool = False, within: str | Path | None = None,
                 not_read: list[tuple[Path, str]] | None = None) -> str | None:
    """UTF-8 text (BOM stripped), whitespace-stripped; None when the file does not exist.

    Undecodable bytes become U+FFFD for reading; ``strict`` raises SidecarEncodingError
    instead, for callers that write the text back (appending to a lossy copy would
    destroy the original characters). A sidecar that is not a regular file of a caption's size
    (a FIFO, a device, a huge file: engine/user_files.py), or with ``within`` (the dataset
    folder) a link leading outside it, is not read: None, and (path, why) in ``not_read``.
    """
    from engine.user_files import FileRefused, read_bytes

    reason = None
    if within is not None and os.path.lexists(path) and not lies_within(path, within):
        reason = f"a link to {os.path.realpath(path)}, outside {within}"
    else:
        try:
            data = read_bytes(path, "caption file")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except FileRefused as exc:
            reason = exc.reason
    if reason is not None:
        if not_read is not None:
            not_read.append((Path(path), reason))
        return None
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        if strict:
            raise SidecarEncodingError(
                f"{path}: not UTF-8 text (byte {exc.start}); appending would garble it. Re-save the "
                "file as UTF-8, or use the overwrite policy to replace it") from None
        return data.decode("utf-8-sig", errors="replace").strip()


def sidecar_encoding_problem(path: str | Path) -> str | None:
    """Why ``path`` is not UTF-8 text (the first bad byte), or None when it is (or is absent).
    A sidecar sdft does not read at all (a FIFO, a device, over the size limit) says that."""
    from engine.user_files import FileRefused, read_bytes

    try:
        read_bytes(path, "caption file").decode("utf-8-sig")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except FileRefused as exc:
        return f"not read: it {exc.reason}"
    except UnicodeDecodeError as exc:
        return f"byte 0x{exc.object[exc.start]:02x} at offset {exc.start} is not UTF-8"
    return None


def write_caption(path: str | Path, text: str, *, policy: str = "skip", separator: str = ", ") -> bool:
    """Write a sidecar honouring ``policy``; returns True when the file changed.

    skip: leave an existing non-empty file alone. overwrite: replace it. append: add
    ``separator + text`` after the existing text (no duplicate when it already ends so).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown caption policy {policy!r}; use one of {', '.join(POLICIES)}")
    path = Path(path)
    old = read_sidecar(path, strict=policy == "append")
    text = text.strip()
    if old:
        if policy == "skip":
            return False
        if policy == "append":
            if not text or old.endswith(text):
                return False
            text = old + separator + text
    if old == text:
        return False
    atomic.write_text(path, text + "\n" if text else "")
    return True


# ---------------------------------------------------------------- joining caption and tags


def caption_from_file_name(path: str | Path) -> str:
    """The caption an image gets from its name when it has neither caption nor tags and its
    subset sets ``caption_from_filename``: the stem, underscores as spaces, runs of spaces as one
    ("red_fox  in_snow.png" -> "red fox in snow"). Nothing else is guessed, so what trains is
    what the file is called (docs/run-file.md, the dataset keys)."""
    return " ".join(Path(path).stem.replace("_", " ").split())


def join_separator(mode: str, caption_separator: str = ",") -> str:
    """SEP for ``[data] caption_tags_join``: "separator", "comma_space" or a literal string."""
    if mode == "separator":
        return caption_separator
    if mode == "comma_space":
        return ", "
    return mode


def join_caption_and_tags(caption: str | None, tags: str | None, *, sep: str = ",",
                          wildcard: bool = False) -> str:
    """caption + SEP + tags, or tags alone for an empty caption (never a leading separator)."""
    caption = caption or ""
    tags = tags or ""
    if not tags:
        return caption
    if wildcard:
        tags = tags.replace("\n", sep)
        if not caption:
            return tags          # kohya yields "" here, silently losing the tags
        lines = caption.split("\n")
        return "\n".join(line + sep + tags if line.strip() else line for line in lines)
    if not caption:
        return tags
    return caption + sep + tags


def with_prefix_suffix(caption: str, prefix: str | None, suffix: str | None) -> str:
    """A subset's ``caption_prefix`` / ``caption_suffix`` around a caption, space-separated as kohya does."""
    if prefix:
        caption = prefix + " " + caption
    if suffix:
        caption = caption + " " + suffix
    return caption


def caption_file_text(text: str | None, *, wildcard: bool = False) -> str | None:
    """What a folder subset trains with from its caption file's text, as kohya's DreamBooth method
    reads it: the first non-empty line (every one, joined by newlines, with ``enable_wildcard``);
    None for no file or an empty one."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return None
    return "\n".join(lines) if wildcard else lines[0]


def caption_as_trained(caption: str | None, tags: str | None, *, join: str = "separator", separator: str = ",",
                       wildcard: bool = False, prefix: str | None = None, suffix: str | None = None,
                       file_name: str | Path | None = None, caption_file: bool = False,
                       class_tokens: str | None = None) -> str:
    """The text an image trains with before its per-sample draws (dropout, shuffles, warm-up):
    tags joined as ``data.caption_tags_join`` says (or, with neither, ``file_name`` through
    :func:`caption_from_file_name` when its subset sets ``caption_from_filename``), then the
    subset's prefix and suffix. ``caption_file``: ``caption`` is a folder subset's caption file,
    read by :func:`caption_file_text`, else ``class_tokens``. Token counts (the wizard, ``sdft
    prepare``, the health check) use this, so they count what training encodes."""
    if caption_file:
        caption = caption_file_text(caption, wildcard=wildcard)
        caption = (class_tokens or "") if caption is None else caption
    joined = join_caption_and_tags(caption, tags, sep=join_separator(join, separator), wildcard=wildcard)
    if not joined and file_name is not None:
        joined = caption_from_file_name(file_name)
    return with_prefix_suffix(joined, prefix, suffix)


# A CLIP token covers a word piece of at most a few dozen characters, so a caption's first
# max_token_length tokens lie well inside max_token_length * 64 characters; cutting there first
# keeps a 10 MB caption from costing minutes of tokenizing at every draw (docs/formats.md).
CHARS_PER_TOKEN = 64


def caption_char_limit(max_token_length: int) -> int:
    """The characters of a caption training reads: more can never reach the token limit."""
    return max_token_length * CHARS_PER_TOKEN


def split_tags(tags: str | None) -> list[str]:
    return [t.strip() for t in (tags or "").split(",") if t.strip()]


def tag_frequency(all_tags: Iterable[str | None]) -> dict[str, int]:
    """Tag → number of images carrying it (lower-cased, once per image), as in ``sdft.tag_frequency``."""
    counts: Counter[str] = Counter()
    for tags in all_tags:
        counts.update({t.lower() for t in split_tags(tags)})
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- cleaning (kohya's tag and caption cleanup)

_W = r"[\w\-]+"
HAIR_LENGTH = re.compile(r"(long|short|medium) hair")
_MULTI_PERSON_FAMILIES = [
    HAIR_LENGTH,
    re.compile(r"(bob|hime) cut"),
    re.compile(rf"{_W} eyes"),
    re.compile(rf"({_W} sleeves|sleeveless)"),
    re.compile(rf"(ponytail|braid|ahoge|twintails|{_W} bun|single hair bun|single side bun|two side up"
               rf"|two tails|{_W} braid|sidelocks)"),
]
_ANY_HAIR = re.compile(rf"{_W} hair")
_ONE_WORD = re.compile(rf"({_W}|hair ornament)")


def clean_tags(tags: str) -> str:
    """DeepDanbooru/WD14 tag cleanup as kohya does it, on a ", "-separated string: underscores to
    spaces (``^_^`` kept); rating tags dropped; when "girls" or "boys" appears, each per-person
    family (hair length, cut, eyes, sleeves, hair style, hair colour) that has several members is
    dropped; a one-word tag is dropped when a longer tag ends with it."""
    tags = tags.replace("^_^", "\0").replace("_", " ").replace("\0", "^_^")
    cut = tags.find(", rating")
    if cut >= 0:
        tags = tags[:cut]
    items = [t.strip() for t in tags.split(",")]
    items = [t for t in items if t and not t.startswith("rating:")]
    wrapped = ", " + ", ".join(items) + ", "
    if "girls" in wrapped or "boys" in wrapped:
        for family in _MULTI_PERSON_FAMILIES:
            members = [t for t in items if family.fullmatch(t)]
            if len(members) > 1:
                items = [t for t in items if not family.fullmatch(t)]
        kept_length = next((t for t in items if HAIR_LENGTH.fullmatch(t)), None)
        hair = [t for t in items if _ANY_HAIR.fullmatch(t) and t != kept_length]
        if len(hair) > 1:
            items = [t for t in items if not (_ANY_HAIR.fullmatch(t) and t != kept_length)]
    words = {t for t in items if _ONE_WORD.fullmatch(t)}
    redundant = set()
    for word in words:
        longer = re.compile(rf"(\w+ )+{re.escape(word)}")
        if any(other != word and longer.fullmatch(other) for other in items):
            redundant.add(word)
    return ", ".join(t for t in items if t not in redundant)


CAPTION_REPLACEMENTS: list[tuple[tuple[str, ...], str]] = [
    (("anime anime",), "anime"),
    (("young ",), ""),
    (("anime girl",), "girl"),
    (("cartoon female", "cartoon lady", "cartoon character", "cartoon woman"), "girl"),
    (("cartoon women",), "girls"),
    (("cartoon girl",), "girl"),
    (("anime female", "anime lady", "anime character", "anime woman"), "girl"),
    (("anime women",), "girls"),
    (("lady",), "girl"),
    (("female",), "girl"),
    (("woman",), "girl"),
    (("women",), "girls"),
    (("people",), "girls"),
    (("person",), "girl"),
    (("a cartoon figure",), "a figure"),
    (("a cartoon image",), "an image"),
    (("a cartoon picture",), "a picture"),
    (("an anime cartoon image",), "an image"),
    (("a cartoon anime drawing",), "a drawing"),
    (("a cartoon drawing",), "a drawing"),
    (("girl girl",), "girl"),
]


def clean_caption(caption: str) -> str:
    """BLIP caption cleanup: the substitutions of ``CAPTION_REPLACEMENTS`` in order, each until stable."""
    for sources, target in CAPTION_REPLACEMENTS:
        for source in sources:
            while source in caption:
                updated = caption.replace(source, target)
                if updated == caption:
                    break
                caption = updated
    return caption


def clean_entry(entry: dict) -> tuple[dict, list[str]]:
    """A cleaned copy of a metadata entry and notes for missing caption/tags (entry kept)."""
    out = dict(entry)
    notes = []
    if out.get("caption") is None:
        notes.append("no caption")
    else:
        out["caption"] = clean_caption(out["caption"])
    if out.get("tags") is None:
        notes.append("no tags")
    else:
        out["tags"] = clean_tags(out["tags"])
    return out, notes
