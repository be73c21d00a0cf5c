"""Dataset health check: everything worth knowing about the images before a run starts.

Finds unreadable, truncated and empty files, images smaller than the smallest bucket or
enlarged a lot, exact duplicates, images sharing one name (``foo.jpg`` beside ``foo.png``),
missing captions, captions longer than the token limit, caption or tags files that are not
UTF-8, and image modes that get converted (CMYK, 16-bit, palette, alpha → composited on white).
One bad file is a line in the report, never an exception. No torch at import time; token
counts import the tokenizer lazily.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from engine.data.buckets import BucketSettings, assign_sizes
from engine.data.scan import name_clashes, read_image_info

ODD_MODES = {
    "CMYK": "CMYK: converted to RGB",
    "P": "palette image: converted to RGB",
    "PA": "palette + alpha: composited on white",
    "RGBA": "has an alpha channel: composited on white",
    "LA": "greyscale + alpha: composited on white",
    "I;16": "16-bit: reduced to 8 bits",
    "I;16B": "16-bit: reduced to 8 bits",
    "I;16L": "16-bit: reduced to 8 bits",
    "I": "32-bit integer pixels: reduced to 8 bits",
    "F": "floating-point pixels: reduced to 8 bits",
    "1": "1-bit image: converted to RGB",
    "L": "greyscale: converted to RGB",
}
SEVERITY = {"unreadable": "error", "truncated": "error", "zero_size": "error", "rejected": "error",
            "duplicate": "warning", "name_clash": "warning", "too_small": "warning", "heavy_upscale": "warning", "no_caption": "warning",
            "too_long": "warning", "not_utf8": "warning", "odd_mode": "info", "exif_rotated": "info",
            "caption_cut": "warning", "refused_file": "warning"}
# What each kind means, in a few words (the wizard's dataset step lists them so).
KIND_LABELS = {
    "unreadable": "cannot be read (skipped)", "truncated": "truncated file", "zero_size": "empty file",
    "rejected": "cannot be bucketed", "duplicate": "exact duplicates", "too_small": "smaller than the smallest bucket",
    "heavy_upscale": "enlarged more than 2x (looks soft)", "no_caption": "no caption or tags",
    "too_long": "caption longer than max_token_length", "odd_mode": "pixel format converted",
    "exif_rotated": "EXIF rotation", "not_utf8": "caption file not UTF-8 (read with replacement characters)",
    "name_clash": "images sharing one name (all train, one caption file)",
    "caption_cut": "caption cut before tokenizing (far over the token limit)",
    "refused_file": "caption file not read (not a regular file, or too large)",
    "no_mask": "no loss mask", "bad_mask": "loss mask unusable", "empty_mask": "loss mask all zero",
}
# Findings that mean the image cannot train at all (``sdft prepare`` leaves these out of the metadata).
UNDECODABLE = frozenset({"unreadable", "truncated", "zero_size"})
# Masked loss (engine/data/masks.py): a mask the run needs and lacks or cannot use, or one that is empty.
SEVERITY.update({"no_mask": "error", "bad_mask": "error", "empty_mask": "warning"})


@dataclass(frozen=True)
class HealthIssue:
    path: str
    kind: str
    message: str

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.kind, "warning")


@dataclass
class HealthReport:
    checked: int = 0
    issues: list[HealthIssue] = field(default_factory=list)

    @property
    def errors(self) -> list[HealthIssue]:
        return [i for i in self.issues if i.severity == "error"]

    def by_kind(self) -> dict[str, list[HealthIssue]]:
        out: dict[str, list[HealthIssue]] = {}
        for issue in self.issues:
            out.setdefault(issue.kind, []).append(issue)
        return out

    def to_dict(self) -> dict:
        return {"checked": self.checked,
                "issues": [{"path": i.path, "kind": i.kind, "severity": i.severity, "message": i.message}
                           for i in self.issues]}

    def lines(self) -> list[str]:
        out = [f"{self.checked} image(s) checked, {len(self.errors)} error(s), "
               f"{len(self.issues) - len(self.errors)} other finding(s)"]
        for kind, issues in self.by_kind().items():
            out.append(f"{kind} ({SEVERITY.get(kind, 'warning')}): {len(issues)}")
            for issue in issues[:20]:
                out.append(f"  {issue.path}: {issue.message}")
            if len(issues) > 20:
                out.append(f"  ... and {len(issues) - 20} more")
        return out


@dataclass(frozen=True)
class _FileResult:
    path: Path
    size: tuple[int, int] | None
    issues: tuple[HealthIssue, ...]
    sha256: str | None


def _inspect(path: Path, exif_transpose: bool, decode: bool) -> _FileResult:
    from PIL import Image

    issues = []
    info = read_image_info(path, exif_transpose=exif_transpose)
    if info.error:
        kind = "zero_size" if info.file_size == 0 else "unreadable"
        return _FileResult(path, None, (HealthIssue(str(path), kind, info.error),), None)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _FileResult(path, None, (HealthIssue(str(path), "unreadable", str(exc)),), None)
    digest = hashlib.sha256(data).hexdigest()
    if decode:
        import io

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception as exc:
            text = str(exc)
            kind = "truncated" if "truncated" in text or "broken data stream" in text else "unreadable"
            return _FileResult(path, None, (HealthIssue(str(path), kind, f"cannot decode: {text}"),), digest)
    if info.mode in ODD_MODES and info.mode not in ("RGB", "L"):
        issues.append(HealthIssue(str(path), "odd_mode", ODD_MODES[info.mode]))
    elif info.mode == "P":
        issues.append(HealthIssue(str(path), "odd_mode", ODD_MODES["P"]))
    if info.rotated:
        action = "rotated as shown" if exif_transpose else "IGNORED (exif_transpose = false, kohya parity)"
        issues.append(HealthIssue(str(path), "exif_rotated", f"EXIF orientation {info.orientation}: {action}"))
    return _FileResult(path, info.size, tuple(issues), digest)


def check_images(paths: Sequence[str | Path], *, captions: Sequence[str | None] | None = None,
                 settings: BucketSettings | None = None, max_token_length: int | None = 75, v2: bool = False,
                 upscale_limit: float = 2.0, exif_transpose: bool = True, decode: bool = True,
                 workers: int | None = None,
                 sidecar_extensions: Sequence[str] | None = (".caption", ".txt"),
                 masks: Sequence | None = None) -> HealthReport:
    """Check images (and their joined captions, aligned with ``paths``) for training problems.

    ``sidecar_extensions``: the caption/tags files beside each image to check for UTF-8
    (None when the captions come from a metadata file instead). ``masks`` (masked loss), aligned
    with ``paths``: each image's MaskSource, the MaskError that says it has none, or None."""
    paths = [Path(p) for p in paths]
    report = HealthReport(checked=len(paths))
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: _inspect(p, exif_transpose, decode), paths))
    first_of: dict[str, Path] = {}
    for r in results:
        report.issues.extend(r.issues)
        if r.sha256:
            if r.sha256 in first_of:
                report.issues.append(HealthIssue(str(r.path), "duplicate", f"same bytes as {first_of[r.sha256]}"))
            else:
                first_of[r.sha256] = r.path
    for clash in name_clashes(paths):
        report.issues.extend(HealthIssue(str(p), "name_clash", clash.finding(p)) for p in clash.images)
    if settings is not None:
        _check_sizes(results, settings, upscale_limit, report)
    if captions is not None:
        _check_captions(paths, captions, max_token_length, v2, report)
    if sidecar_extensions:
        _check_sidecar_encoding(paths, sidecar_extensions, report)
    if masks is not None:
        _check_masks(results, masks, exif_transpose, report)
    return report


def _check_masks(results, masks, exif_transpose: bool, report: HealthReport) -> None:
    """Each image's loss mask: there, readable, its image's size, not all zero."""
    from engine.data.masks import MaskError, mask_problem

    for r, source in zip(results, masks, strict=True):
        if isinstance(source, MaskError):
            report.issues.append(HealthIssue(str(r.path), "no_mask", str(source)))
        elif source is not None and r.size is not None:
            problem = mask_problem(source, r.size, exif_transpose)
            if problem:
                kind = "empty_mask" if problem.startswith("empty mask") else "bad_mask"
                report.issues.append(HealthIssue(str(r.path), kind, problem))


def _check_sidecar_encoding(paths, extensions: Sequence[str], report: HealthReport) -> None:
    """A caption file that is not UTF-8 would stop kohya (it reads strict UTF-8). sdft goes on
    with the bytes that do not decode replaced by U+FFFD (the rest of the caption still trains),
    and says so here, naming the file, so it can be re-saved as UTF-8."""
    from engine.data.captions import sidecar_encoding_problem

    seen: set[Path] = set()   # foo.jpg and foo.png share foo.caption: one finding
    for path in paths:
        stem = path.with_suffix("")
        for ext in dict.fromkeys(e for e in extensions if e):
            sidecar = stem.with_name(stem.name + ext)
            if sidecar in seen:
                continue
            seen.add(sidecar)
            problem = sidecar_encoding_problem(sidecar)
            if problem and problem.startswith("not read"):
                report.issues.append(HealthIssue(str(sidecar), "refused_file", f"{problem}; the image trains "
                                                 "without this caption file: replace it with a text file"))
            elif problem:
                report.issues.append(HealthIssue(
                    str(sidecar), "not_utf8",
                    f"not UTF-8 text ({problem}): sdft reads it with those bytes replaced by U+FFFD "
                    "(the rest of the caption trains; kohya would stop with an error); re-save it as UTF-8"))


def _check_sizes(results, settings: BucketSettings, upscale_limit: float, report: HealthReport) -> None:
    good = [r for r in results if r.size is not None]
    buckets = settings.bucket_list()
    smallest = min((min(b) for b in buckets), default=settings.bucket_reso_steps)
    assignments = assign_sizes([r.size for r in good], settings)
    for r, a in zip(good, assignments, strict=True):
        w, h = r.size
        if a.bucket is None:
            report.issues.append(HealthIssue(str(r.path), "rejected", a.error or "cannot be bucketed"))
            continue
        if min(w, h) < smallest:
            report.issues.append(HealthIssue(str(r.path), "too_small",
                                             f"{w}x{h} is smaller than the smallest bucket side {smallest}"))
        scale = max(a.resized[0] / w, a.resized[1] / h)
        if scale > upscale_limit:
            report.issues.append(HealthIssue(str(r.path), "heavy_upscale",
                                             f"{w}x{h} enlarged {scale:.1f}x to {a.resized[0]}x{a.resized[1]} "
                                             f"for bucket {a.bucket[0]}x{a.bucket[1]} (looks soft)"))


def _check_captions(paths, captions, max_token_length, v2, report) -> None:
    from engine.data.captions import caption_char_limit

    longest = []
    limit = caption_char_limit(max_token_length or 225)
    for path, caption in zip(paths, captions, strict=True):
        if not caption or not caption.strip():
            report.issues.append(HealthIssue(str(path), "no_caption", "no caption or tags: trains unconditionally"))
            longest.append("")
            continue
        if len(caption) > limit:   # cut as training cuts it, before the tokenizer sees it
            report.issues.append(HealthIssue(str(path), "caption_cut", f"a caption of {len(caption):,} characters: "
                                             f"training reads its first {limit:,} (at most {max_token_length or 225} "
                                             "tokens); shorten it"))
            caption = caption[:limit]
        longest.append(max(caption.split("\n"), key=len))
    if not max_token_length:
        return
    counts = count_tokens(longest, v2)
    for path, n in zip(paths, counts, strict=True):
        if n > max_token_length:
            report.issues.append(HealthIssue(str(path), "too_long",
                                             f"{n} tokens > max_token_length {max_token_length}: the rest is cut "
                                             "(raise model.max_token_length to 150 or 225)"))


def count_tokens(texts: list[str], v2: bool = False) -> list[int]:
    """CLIP token counts (BOS/EOS excluded) from the real tokenizer, imported lazily."""
    try:
        from engine.models.tokenizer import count_tokens as _count
    except ImportError:
        _count = None
    if _count is not None:
        return list(_count(texts, v2))
    from engine.models.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer(v2)
    return [len(ids) - 2 for ids in tok(list(texts), truncation=False)["input_ids"]]
