"""The learning benchmark's dataset: concepts whose right answer is known.

Each concept is a caption and a way to draw it: a coloured shape, or a layout (a shape in a
corner, stripes in one direction). Every image of a concept is drawn with its own jitter
(position, size, colours, background shade), so a concept is a cloud of images, not one
picture. Training images and held-out images are drawn alike from different random streams;
the held-out ones never train and only the validation loss sees them.

Concepts differ in colour and layout more than in fine shape, because the benchmark scores
samples in latent space (docs/learning-bench.md says why), where a random VAE keeps colour
and layout apart far better than the outline of a shape.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SIDE = 64                       # pixels: 8x8 latents, the smallest side SD's four U-Net levels take
BACKGROUND = (200, 200, 200)    # light grey, shaded per image

RGB = tuple[int, int, int]


def _jitter(rng: random.Random, colour: RGB, amount: int = 20) -> RGB:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def _canvas(rng: random.Random, side: int, colour: RGB = BACKGROUND):
    from PIL import Image, ImageDraw

    shade = rng.randint(-15, 15)    # lighter or darker, never tinted
    image = Image.new("RGB", (side, side), tuple(c + shade for c in colour))
    return image, ImageDraw.Draw(image)


def _shape(kind: str, colour: RGB, where: tuple[float, float] = (0.5, 0.5)):
    """A drawing of one filled shape of ``colour`` centred near ``where`` (fractions of the side)."""

    def draw(rng: random.Random, side: int):
        image, pen = _canvas(rng, side)
        r = side * rng.uniform(0.18, 0.26)
        cx = side * where[0] + rng.uniform(-0.08, 0.08) * side
        cy = side * where[1] + rng.uniform(-0.08, 0.08) * side
        fill = _jitter(rng, colour)
        if kind == "circle":
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == "square":
            pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:   # triangle
            pen.polygon(((cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)), fill=fill)
        return image

    return draw


def _stripes(vertical: bool):
    """Dark bands on a light ground, across or down the picture, at a random phase and width."""

    def draw(rng: random.Random, side: int):
        image, pen = _canvas(rng, side, (235, 235, 235))
        period = rng.randint(side // 5, side // 4)
        width = period // 2
        ink = _jitter(rng, (25, 25, 25))
        for start in range(-rng.randint(0, period), side, period):
            box = (start, 0, start + width - 1, side) if vertical else (0, start, side, start + width - 1)
            pen.rectangle(box, fill=ink)
        return image

    return draw


@dataclass(frozen=True)
class Concept:
    name: str                                   # file-name stem and report label
    caption: str                                # what the training captions and the prompts say
    draw: Callable[[random.Random, int], object]


CONCEPTS: tuple[Concept, ...] = (
    Concept("red-circle", "a red circle", _shape("circle", (210, 40, 40))),
    Concept("blue-square", "a blue square", _shape("square", (40, 70, 210))),
    Concept("yellow-triangle", "a yellow triangle", _shape("triangle", (235, 205, 40))),
    Concept("purple-top-left", "a purple circle in the top left corner", _shape("circle", (130, 50, 160), (0.28, 0.28))),
    Concept("purple-bottom-right", "a purple circle in the bottom right corner",
            _shape("circle", (130, 50, 160), (0.72, 0.72))),
    Concept("green-square-top", "a green square at the top", _shape("square", (40, 160, 60), (0.5, 0.27))),
    Concept("horizontal-stripes", "horizontal stripes", _stripes(vertical=False)),
    Concept("vertical-stripes", "vertical stripes", _stripes(vertical=True)),
)

# The CI-sized benchmark (tests/test_learning_bench.py): two coloured shapes and one layout pair.
CI_CONCEPT_NAMES = ("red-circle", "blue-square", "horizontal-stripes", "vertical-stripes")


def concepts_named(names) -> tuple[Concept, ...]:
    """The concepts of these names, in this order; ValueError names an unknown one."""
    known = {c.name: c for c in CONCEPTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown concept {', '.join(unknown)}: use {', '.join(known)}")
    return tuple(known[n] for n in names)


@dataclass(frozen=True)
class ConceptImage:
    path: Path
    concept: int        # index into ConceptDataset.concepts
    caption: str


@dataclass(frozen=True)
class ConceptDataset:
    """The images on disk: ``train/`` and ``held-out/``, each with a kohya metadata JSON."""

    root: Path
    concepts: tuple[Concept, ...]
    train: tuple[ConceptImage, ...]
    held_out: tuple[ConceptImage, ...]
    side: int

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def held_out_dir(self) -> Path:
        return self.root / "held-out"

    @property
    def train_metadata(self) -> Path:
        return self.root / "train.json"

    @property
    def held_out_metadata(self) -> Path:
        return self.root / "held-out.json"


def _write_split(folder: Path, metadata: Path, concepts, per_concept: int, side: int,
                 seed: int) -> tuple[ConceptImage, ...]:
    from engine import atomic
    from engine.data.metadata import write_metadata_json

    folder.mkdir(parents=True, exist_ok=True)
    images, entries = [], {}
    for index, concept in enumerate(concepts):
        # One stream per (split seed, concept): adding a concept leaves the others' images as they were.
        rng = random.Random(f"{seed}/{concept.name}")
        for n in range(per_concept):
            path = folder / f"{concept.name}_{n:02d}.png"
            with atomic.atomic_path(path) as tmp:
                concept.draw(rng, side).save(tmp, format="PNG")
            images.append(ConceptImage(path, index, concept.caption))
            entries[path.name] = {"caption": concept.caption, "image_size": [side, side]}
    write_metadata_json(metadata, entries)
    return tuple(images)


def write_concept_dataset(root: str | Path, concepts=CONCEPTS, *, per_concept: int = 6, held_out: int = 2,
                          side: int = SIDE, seed: int = 0) -> ConceptDataset:
    """Draw ``per_concept`` training and ``held_out`` held-out images of each concept under ``root``."""
    if len(concepts) < 2:
        raise ValueError("the learning benchmark needs at least two concepts (adherence against chance 1/K)")
    if per_concept < 1 or held_out < 1:
        raise ValueError("each concept needs at least one training image and one held-out image")
    root = Path(root)
    dataset = ConceptDataset(root, tuple(concepts), (), (), side)
    train = _write_split(dataset.train_dir, dataset.train_metadata, concepts, per_concept, side, seed)
    kept = _write_split(dataset.held_out_dir, dataset.held_out_metadata, concepts, held_out, side, seed + 1)
    dataset = ConceptDataset(root, tuple(concepts), train, kept, side)
    _write_index(dataset)
    return dataset


def _write_index(dataset: ConceptDataset) -> None:
    """concepts.json: which caption is which concept (for people and for other trainers' runs)."""
    from engine import atomic

    index = {"side": dataset.side, "concepts": [{"name": c.name, "caption": c.caption} for c in dataset.concepts]}
    atomic.write_text(dataset.root / "concepts.json", json.dumps(index, indent=2) + "\n")


def read_concept_dataset(root: str | Path) -> ConceptDataset:
    """The dataset a benchmark run drew under ``root``, read back (images are not drawn again)."""
    root = Path(root)
    try:
        index = json.loads((root / "concepts.json").read_text(encoding="utf-8"))
        concepts = concepts_named([c["name"] for c in index["concepts"]])
        side = int(index["side"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{root / 'concepts.json'} is missing or damaged ({exc}): run `sdft bench --learning` "
                         "on this folder again to draw the dataset") from exc
    owner = {c.caption: k for k, c in enumerate(concepts)}
    dataset = ConceptDataset(root, concepts, (), (), side)

    def split(folder: Path, metadata: Path) -> tuple[ConceptImage, ...]:
        entries = json.loads(metadata.read_text(encoding="utf-8"))
        images = [ConceptImage(folder / name, owner[entry["caption"]], entry["caption"])
                  for name, entry in entries.items()]
        return tuple(sorted(images, key=lambda i: (i.concept, i.path.name)))   # the order they were drawn in

    return ConceptDataset(root, concepts, split(dataset.train_dir, dataset.train_metadata),
                          split(dataset.held_out_dir, dataset.held_out_metadata), side)
