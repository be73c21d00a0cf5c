"""Turn tagger scores into a tag line: pure functions, no model, no numpy needed.

Name edits happen once, on the tag list (as kohya does): character expansion, underscores,
replacements. Undesired and always-first tags are compared with the edited names. Then,
per image: thresholds by each row's own category (9 rating, 0 general, 4 character),
optional ``max_tags`` (most probable general/character tags kept, order unchanged),
character tags after (or before) the general ones, the arg-max rating prepended or
appended, and the always-first tags moved to the front in the order given.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from engine.labeling.options import LabelError, TagOptions

RATING, GENERAL, CHARACTER = 9, 0, 4


@dataclass(frozen=True)
class TagRow:
    name: str
    category: int


def load_selected_tags(path: Path) -> list[TagRow]:
    """``selected_tags.csv`` (tag_id,name,category,count) → rows in file order."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "name" not in reader.fieldnames or "category" not in reader.fieldnames:
                raise LabelError(f"{path}: expected a header with name and category columns "
                                 "(tag_id,name,category,count), found "
                                 f"{', '.join(reader.fieldnames or []) or 'nothing'}")
            rows = []
            for number, row in enumerate(reader, start=2):
                try:
                    rows.append(TagRow(row["name"], int(row["category"])))
                except (TypeError, ValueError):
                    raise LabelError(f"{path}: line {number}: category {row.get('category')!r} is not a number") from None
    except OSError as exc:
        raise LabelError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not rows:
        raise LabelError(f"{path}: no tags")
    return rows


def load_tag_lines(path: Path) -> list[str]:
    """DeepDanbooru ``tags.txt``: one tag per line, blank lines ignored."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except OSError as exc:
        raise LabelError(f"cannot read {path}: {exc.strerror or exc}") from None
    tags = [t for t in lines if t]
    if not tags:
        raise LabelError(f"{path}: no tags")
    return tags


def parse_replacements(text: str) -> list[tuple[str, str]]:
    """``"a,b;c,d"`` → [(a, b), (c, d)]; ``\\,`` and ``\\;`` are literal."""
    if not text:
        return []
    pairs = []
    for part in _split_escaped(text, ";", keep_escapes=True):
        if not part.strip():
            continue
        fields = _split_escaped(part, ",")
        if len(fields) != 2:
            raise LabelError(f"tag_replacement: {part!r} must be 'source,target' (escape a literal comma as \\,)")
        pairs.append((fields[0].strip(), fields[1].strip()))
    return pairs


def _split_escaped(text: str, sep: str, keep_escapes: bool = False) -> list[str]:
    """Split on unescaped ``sep``; escapes are resolved unless kept for a second split."""
    out, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in ",;\\":
            current.append(text[i:i + 2] if keep_escapes else text[i + 1])
            i += 2
            continue
        if ch == sep:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    out.append("".join(current))
    return out


def expand_character(name: str, separator: str) -> str:
    """``name_(series)`` → ``name`` + separator + ``series``; other names unchanged."""
    if not name.endswith(")") or "(" not in name:
        return name
    head, _, series = name.rpartition("(")
    head = head[:-1] if head.endswith("_") else head
    if not head:
        return name
    return head + separator + series[:-1]


def edit_names(rows: Sequence[TagRow], opts: TagOptions) -> list[str]:
    """The names written for each row: expansion, underscores, replacements (in that order)."""
    names = []
    for row in rows:
        name = row.name
        if opts.character_tag_expand and row.category == CHARACTER:
            name = expand_character(name, opts.caption_separator)
        if opts.remove_underscore and len(name) > 3:
            name = name.replace("_", " ")
        names.append(name)
    for source, target in parse_replacements(opts.tag_replacement):
        names = [target if n == source else n for n in names]
    return names


def split_list(values: Sequence[str] | str | None, separator: str = ",") -> list[str]:
    """A comma list (or list of strings) → stripped, non-empty items."""
    if values is None:
        return []
    if isinstance(values, str):
        values = values.split(separator.strip() or ",")
    return [v.strip() for v in values if v and v.strip()]


class TagSelector:
    """Scores of one image → ordered tag list, for a fixed table and options."""

    def __init__(self, rows: Sequence[TagRow], opts: TagOptions):
        self.rows = list(rows)
        self.opts = opts
        self.names = edit_names(self.rows, opts)
        base = opts.thresh if opts.thresh is not None else 0.35
        self.general_threshold = opts.general_threshold if opts.general_threshold is not None else base
        self.character_threshold = opts.character_threshold if opts.character_threshold is not None else base
        self.undesired = set(split_list(opts.undesired_tags, opts.caption_separator))
        self.always_first = split_list(opts.always_first_tags, opts.caption_separator)
        self.rating_rows = [i for i, r in enumerate(self.rows) if r.category == RATING]

    def select(self, probs: Sequence[float]) -> list[str]:
        if len(probs) != len(self.rows):
            raise LabelError(f"the model gives {len(probs)} scores but the tag file has {len(self.rows)} rows: "
                             "use the selected_tags.csv that came with this model.onnx")
        general, character = [], []
        for i, (row, p) in enumerate(zip(self.rows, probs, strict=True)):
            if row.category == CHARACTER:
                if p >= self.character_threshold and self.names[i] not in self.undesired:
                    character.append(i)
            elif row.category != RATING:
                if p >= self.general_threshold and self.names[i] not in self.undesired:
                    general.append(i)
        if self.opts.max_tags is not None and len(general) + len(character) > self.opts.max_tags:
            ranked = sorted(general + character, key=lambda i: (-probs[i], i))
            keep = set(ranked[:max(0, self.opts.max_tags)])
            general = [i for i in general if i in keep]
            character = [i for i in character if i in keep]
        order = character + general if self.opts.character_tags_first else general + character
        tags = [self.names[i] for i in order]
        if (self.opts.use_rating_tags or self.opts.use_rating_tags_as_last_tag) and self.rating_rows:
            best = max(self.rating_rows, key=lambda i: (probs[i], -i))
            rating = self.names[best]
            if rating not in self.undesired:
                tags = [rating, *tags] if self.opts.use_rating_tags else [*tags, rating]
        front = [t for t in self.always_first if t in tags]
        return front + [t for t in tags if t not in front]

    def text(self, probs: Sequence[float]) -> str:
        return self.opts.caption_separator.join(self.select(probs))


def merge_tags(existing: str, new: str, separator: str) -> str:
    """``append`` for tag files: existing tags, then the new ones not already there."""
    sep = separator.strip() or ","
    old = [t.strip() for t in existing.split(sep) if t.strip()]
    added = [t.strip() for t in new.split(sep) if t.strip() and t.strip() not in old]
    return separator.join(old + added)
