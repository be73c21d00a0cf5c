"""Grids of preview images with a label over each, drawn with Pillow alone (no torch).

Two grids use it (docs/run-folder.md): the one each sampling point writes beside its images
(every prompt at that step, ``NAME_sSTEP_grid.png``), and ``sdft samples RUN_DIR``'s (one prompt
across the run's sampling points, each cell labelled with its step). Labels are the user's text
drawn as plain text; what the font cannot draw becomes "?" rather than an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from engine.atomic import atomic_path

GAP = 4                 # pixels between cells and around the grid
LABEL_HEIGHT = 16       # one line of the default font, with room
BACKGROUND = (24, 24, 24)
TEXT = (230, 230, 230)
# A sample's file name: NAME_sSTEP_INDEX.png (engine/train/sampling.py); the grid is NAME_sSTEP_grid.png.
SAMPLE_FILE = re.compile(r"^(?P<name>.*)_s(?P<step>\d{8})_(?P<index>\d{2,})\.png$")


@dataclass(frozen=True)
class Cell:
    path: Path
    label: str


def grid_path(folder: Path, output_name: str, step: int) -> Path:
    return Path(folder) / f"{output_name}_s{step:08d}_grid.png"


def label_font(size: int = 11):
    """Pillow's own font at ``size`` pixels (no font file needed); the fixed bitmap font where
    Pillow cannot scale it."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` on one line, cut with "..." to ``width`` pixels."""
    text = " ".join(text.split())
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _draw_label(draw, xy, text: str, font, width: int) -> None:
    try:
        draw.text(xy, _fit(draw, text, font, width), fill=TEXT, font=font)
    except UnicodeEncodeError:   # a bitmap font draws Latin-1 only
        plain = text.encode("latin-1", "replace").decode("latin-1")
        draw.text(xy, _fit(draw, plain, font, width), fill=TEXT, font=font)


def make_grid(cells: list[Cell], *, title: str = "", columns: int | None = None):
    """One image: the cells' pictures in rows of ``columns`` (about square by default), each
    under its label, centred in a cell as large as the largest picture; ``title`` on top."""
    from PIL import Image, ImageDraw

    if not cells:
        raise ValueError("a grid needs at least one image")
    pictures = []
    for cell in cells:
        with Image.open(cell.path) as image:
            pictures.append(image.convert("RGB"))
    columns = max(1, min(len(cells), columns or math.ceil(math.sqrt(len(cells)))))
    rows = math.ceil(len(cells) / columns)
    cell_w = max(p.width for p in pictures)
    cell_h = max(p.height for p in pictures) + LABEL_HEIGHT
    top = LABEL_HEIGHT + GAP if title else 0
    width = GAP + columns * (cell_w + GAP)
    grid = Image.new("RGB", (width, top + GAP + rows * (cell_h + GAP)), BACKGROUND)
    draw, font = ImageDraw.Draw(grid), label_font()
    if title:
        _draw_label(draw, (GAP, GAP), title, font, width - 2 * GAP)
    for n, (cell, picture) in enumerate(zip(cells, pictures, strict=True)):
        x = GAP + (n % columns) * (cell_w + GAP)
        y = top + GAP + (n // columns) * (cell_h + GAP)
        _draw_label(draw, (x, y + 1), cell.label, font, cell_w)
        grid.paste(picture, (x + (cell_w - picture.width) // 2, y + LABEL_HEIGHT))
    return grid


def save_grid(grid, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


@dataclass(frozen=True)
class PromptSamples:
    """One prompt's images across a run, by step; ``missing`` lists images the log names but
    the folder no longer has."""

    prompt: str | None
    steps: list[tuple[int, Path]]
    missing: list[Path]
    prompts_seen: list[int]        # every prompt index that has images, for the error message


def _from_events(log: Path, run_dir: Path) -> list[tuple[int, int, Path, str]]:
    import json

    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:   # a line cut short by a kill
            continue
        if isinstance(event, dict) and event.get("event") == "sample":
            path = Path(event.get("path", ""))
            if not path.is_absolute() and not path.exists():
                path = run_dir / "samples" / path.name
            found.append((int(event.get("index", 0)), int(event.get("step", 0)), path, str(event.get("prompt", ""))))
    return found


def _from_files(run_dir: Path) -> list[tuple[int, int, Path, str]]:
    found = []
    for path in sorted((run_dir / "samples").glob("*.png")):
        match = SAMPLE_FILE.match(path.name)
        if match:
            found.append((int(match["index"]), int(match["step"]), path, ""))
    return found


def prompt_samples(run_dir: Path, index: int) -> PromptSamples:
    """The images of prompt ``index`` (0-based, as in the file names) at every sampling point:
    from ``events.jsonl`` (a resumed run's too), or from ``samples/``'s file names without one."""
    run_dir = Path(run_dir)
    log = run_dir / "events.jsonl"
    found = _from_events(log, run_dir) if log.is_file() else _from_files(run_dir)
    by_step: dict[int, Path] = {}
    prompt = None
    for i, step, path, text in found:
        if i == index:
            by_step[step] = path          # a step sampled again after a resume: the newest image
            prompt = text or prompt
    present = [(step, by_step[step]) for step in sorted(by_step) if by_step[step].is_file()]
    missing = [by_step[step] for step in sorted(by_step) if not by_step[step].is_file()]
    return PromptSamples(prompt, present, missing, sorted({i for i, *_ in found}))
