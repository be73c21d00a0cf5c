"""The built-in demo: a generated dataset, a tiny model, and a run TOML that trains it.

Everything is made locally (no downloads): a few dozen pictures of coloured shapes in
several aspect ratios with captions and tags, a tiny random SD1 model, and a run TOML that
uses the recipe's features (buckets, cached latents, clip skip 2, 150-token prompts,
AdamW, a sample image). It trains on a CPU in about a minute.
"""

from __future__ import annotations

import random
from pathlib import Path

COLOURS = {
    "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 200, 40),
    "purple": (130, 50, 160), "orange": (240, 130, 30), "white": (240, 240, 240), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "stripe")
# (width, height): square, landscape and portrait pictures, so several buckets are used.
SIZES = ((256, 256), (320, 224), (224, 320), (384, 192), (192, 384), (288, 256), (256, 288), (300, 200))
IMAGE_COUNT = 36

RUN_TOML = """\
# sdft demo run: a tiny random Stable Diffusion 1.x model fine-tuned on generated shapes.
# Edit anything here and train it again with:  sdft train {toml_name} --restart
# (--restart keeps the earlier run in runs/demo/earlier/; --resume latest continues a stopped one)
config_version = 1

[model]
pretrained_model_name_or_path = "model"   # a diffusers folder made by the demo
clip_skip = 2                              # NovelAI: CLIP's second-to-last layer
max_token_length = 150                     # two 75-token chunks

[train]
output_dir = "runs"
output_name = "demo"
max_train_steps = {steps}
seed = 42

[optimizer]
type = "AdamW"
learning_rate = 1e-4
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 4

[memory]
mixed_precision = "no"

[cache]
latents = "disk"
vae_batch_size = 4

[save]
every_n_steps = {save_every}
precision = "fp16"

[sample]
every_n_steps = {save_every}
prompts = ["a red circle on a blue background --w 256 --h 256 --s 8 --d 1"]

[logging]
every_n_steps = 5

[general]
enable_bucket = true
resolution = 256
min_bucket_reso = 128
max_bucket_reso = 512
bucket_reso_steps = 64
batch_size = 4
shuffle_caption = true
keep_tokens = 1

[[datasets]]
  [[datasets.subsets]]
  image_dir = "images"
  metadata_file = "metadata.json"
"""


def _draw(rng: random.Random, size: tuple[int, int]):
    from PIL import Image, ImageDraw

    background, colour = rng.sample(sorted(COLOURS), 2)
    shape = rng.choice(SHAPES)
    image = Image.new("RGB", size, COLOURS[background])
    draw = ImageDraw.Draw(image)
    w, h = size
    r = min(w, h) // 3
    cx, cy = w // 2 + rng.randint(-w // 8, w // 8), h // 2 + rng.randint(-h // 8, h // 8)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[colour])
    elif shape == "triangle":
        draw.polygon(((cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)), fill=COLOURS[colour])
    else:
        for x in range(0, w, max(8, r // 2)):
            draw.rectangle((x, 0, x + max(4, r // 4), h), fill=COLOURS[colour])
    caption = f"a {colour} {shape} on a {background} background"
    tags = f"{shape}, {colour} {shape}, {background} background, simple background"
    return image, caption, tags


def make_demo_dataset(image_dir: Path, count: int = IMAGE_COUNT, seed: int = 0) -> None:
    from engine import atomic

    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(count):
        image, caption, tags = _draw(rng, SIZES[i % len(SIZES)])
        stem = image_dir / f"shape_{i:03d}"
        image.save(stem.with_suffix(".png"))
        atomic.write_text(stem.with_suffix(".caption"), caption + "\n")
        atomic.write_text(stem.with_suffix(".txt"), tags + "\n")


DEFAULT_STEPS = 40


def demo_exists(folder: str | Path) -> bool:
    """An earlier ``sdft demo`` left its run file in ``folder`` (the demo reuses it)."""
    return (Path(folder) / "demo.toml").is_file()


def prepare_demo(folder: str | Path, *, steps: int | None = None, force: bool = False) -> Path:
    """Create (or reuse) the demo folder; returns the path of its run TOML.

    An existing folder keeps its images, model and run file (edits included); ``steps``, when
    given, is written into that file's ``train.max_train_steps``. ``force`` makes all of them anew.
    """
    from engine import atomic
    from engine.data.metadata import build_metadata, write_metadata_json
    from engine.models.tiny import TinySpec, save_tiny_model

    folder = Path(folder)
    images = folder / "images"
    if force or not any(images.glob("*.png")):
        make_demo_dataset(images)
    if force or not (folder / "model" / "model_index.json").exists():
        save_tiny_model(folder / "model", TinySpec("sd1"))
    write_metadata_json(folder / "metadata.json", build_metadata(images))
    toml_path = folder / "demo.toml"
    if force or not toml_path.exists():
        steps = steps or DEFAULT_STEPS
        text = RUN_TOML.format(toml_name=toml_path, steps=steps, save_every=max(1, steps // 2))
        atomic.write_text(toml_path, text)
    elif steps is not None:
        _set_steps(toml_path, steps)
    return toml_path


def _set_steps(toml_path: Path, steps: int) -> None:
    """``train.max_train_steps = steps`` in the demo's run file, its other lines and comments kept."""
    import tomlkit

    from engine import atomic

    document = tomlkit.parse(toml_path.read_text(encoding="utf-8"))
    document.setdefault("train", tomlkit.table())["max_train_steps"] = steps
    atomic.write_text(toml_path, tomlkit.dumps(document))
