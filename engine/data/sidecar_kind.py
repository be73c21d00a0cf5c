"""What a folder's ``.txt`` sidecars hold: captions or tags, read from what they say.

kohya's fine-tune recipe reads ``.caption`` files as captions and ``.txt`` as tags; DreamBooth-style
folders (and most captioners) write captions in ``.txt``. Reading a sentence as tags (or tags as a
caption) changes what training joins and shuffles, so the wizard and ``sdft prepare`` guess from
the files themselves, with this one rule:

* a sentence: a part of more than ``TAG_WORDS`` words between commas ("a photo of a dog sitting on
  the grass"), a text that ends with ``.``, ``!`` or ``?``, or a short phrase that starts with an
  article ("a red car");
* tags: two or more comma-separated parts of at most ``TAG_WORDS`` words each ("1girl, solo,
  long hair");
* anything else (one bare word, an empty file) says nothing.

A folder is read as captions or tags when at least ``MAJORITY`` of the files that said something
agree; otherwise (no ``.txt`` files, or a mix) it keeps kohya's default, tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

TAG_WORDS = 4          # "looking at the viewer" is still a tag; five words are a phrase
MAJORITY = 2 / 3
FILES_READ = 200       # enough to judge a folder, few enough to stay instant
DEFAULT_MODE = "tags"  # kohya's fine-tune recipe: .caption captions, .txt tags
ARTICLES = ("a", "an", "the")

# (caption extension, tags extension) for each reading of .txt (the run's data.*_extension keys)
SIDECAR_EXTENSIONS = {"tags": (".caption", ".txt"), "captions": (".txt", ".tags")}


def text_kind(text: str | None) -> str | None:
    """"captions" for a sentence, "tags" for a comma-separated list of short tags, None when the
    text says neither (the module's docstring gives the rule)."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [part.split() for part in re.split(r"[,\n]", text) if part.strip()]
    if any(len(words) > TAG_WORDS for words in parts):
        return "captions"
    if text[-1] in ".!?" and sum(len(words) for words in parts) >= 3:
        return "captions"
    if len(parts) >= 2:
        return "tags"
    words = parts[0]
    if len(words) >= 2 and words[0].lower() in ARTICLES:
        return "captions"
    return None


@dataclass(frozen=True)
class SidecarGuess:
    """How a folder's ``.txt`` files read: ``mode`` ("captions" or "tags") and the counts behind it."""

    mode: str
    sentences: int = 0
    tag_lists: int = 0
    files: int = 0          # .txt files read

    @property
    def decided(self) -> bool:
        """The files chose ``mode``; False: the default stands (none, or a mix)."""
        said = self.sentences + self.tag_lists
        return said > 0 and max(self.sentences, self.tag_lists) >= MAJORITY * said

    def evidence(self) -> str:
        """Why ``mode``: "9 of 10 are sentences", "no .txt files, so kohya's default", ..."""
        if not self.files:
            return "no .txt files, so kohya's default"
        if not self.decided:
            return (f"a mix ({_count(self.sentences, 'sentence')}, {_count(self.tag_lists, 'tag list')}), "
                    "so kohya's default")
        count, what = (self.sentences, "sentences") if self.mode == "captions" else (self.tag_lists, "tag lists")
        return f"{count} of {self.files} are {what}"

    def reading(self) -> str:
        """"".txt sidecars read as captions: 9 of 10 are sentences"."""
        return f".txt sidecars read as {self.mode}: {self.evidence()}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def meaning(mode: str, join: str = ",") -> str:
    """What reading .txt as ``mode`` changes: which file is the caption, which the tags, and how
    training joins them (the caption, ``join``, the tags): ".txt = caption, .tags = tags;
    trains caption,tags"."""
    return extensions_meaning(*SIDECAR_EXTENSIONS[mode], join)


def extensions_meaning(caption: str, tags: str, join: str = ",") -> str:
    """":ext = caption, .ext = tags; trains caption,tags" for any two extensions."""
    return f"{caption} = caption, {tags} = tags; trains caption{join}tags"


def guess_sidecars(texts: Iterable[str | None]) -> SidecarGuess:
    """The reading of a set of ``.txt`` texts (None: a file that could not be read)."""
    kinds = [text_kind(text) for text in texts]
    sentences, tag_lists = kinds.count("captions"), kinds.count("tags")
    guess = SidecarGuess(DEFAULT_MODE, sentences, tag_lists, len(kinds))
    if guess.decided and sentences > tag_lists:
        return SidecarGuess("captions", sentences, tag_lists, len(kinds))
    return guess


def guess_folder(folder: str | Path, *, recursive: bool = False) -> SidecarGuess:
    """The reading of the ``.txt`` files beside the images of ``folder`` (the first
    ``FILES_READ`` of them, in name order)."""
    from engine.data.captions import read_sidecar
    from engine.data.scan import find_images

    folder = Path(folder)
    texts = []
    for image in find_images(folder, recursive=recursive):
        sidecar = image.with_suffix(".txt")
        if sidecar.is_file():
            texts.append(read_sidecar(sidecar, within=folder))
            if len(texts) >= FILES_READ:
                break
    return guess_sidecars(texts)
