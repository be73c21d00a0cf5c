"""Small runs for integration tests: a few tiny images, a tiny model, a run TOML."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

RUN = """\
config_version = 1

[model]
pretrained_model_name_or_path = "{model}"
clip_skip = 2
max_token_length = 150

[train]
output_dir = "runs"
output_name = "t"
max_train_steps = {steps}
seed = 7
{train_extra}
[optimizer]
learning_rate = 1e-4
{optimizer_extra}
[cache]
latents = "{cache}"

[logging]
every_n_steps = 1

[save]
state_on_stop = true
{save_extra}
[general]
enable_bucket = true
resolution = 64
min_bucket_reso = 64
max_bucket_reso = 128
batch_size = 2
shuffle_caption = true

[[datasets]]
  [[datasets.subsets]]
  image_dir = "images"
  metadata_file = "meta.json"
"""


def make_dataset(folder: Path, count: int = 6) -> None:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    meta = {}
    sizes = [(64, 64), (96, 64), (64, 96)]
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        Image.new("RGB", (w, h), ((i * 40) % 255, 80, 160)).save(images / f"im{i}.png")
        meta[f"im{i}.png"] = {"caption": f"picture {i}, red, blue, tag{i}", "image_size": [w, h]}
    (folder / "meta.json").write_text(json.dumps(meta))


def make_run(folder: Path, model: Path, *, steps: int = 4, cache: str = "disk", train_extra: str = "",
             optimizer_extra: str = "", save_extra: str = "", name: str = "run.toml") -> Path:
    if not (folder / "meta.json").exists():
        make_dataset(folder)
    path = folder / name
    path.write_text(RUN.format(model=model, steps=steps, cache=cache, train_extra=train_extra,
                               optimizer_extra=optimizer_extra, save_extra=save_extra))
    return path


def make_broken_model(tiny: Path, folder: Path) -> Path:
    """A copy of a tiny diffusers model whose U-Net weights file is sound but holds tensors of
    another model: it passes every check that reads headers and configs (sdft train --check) and
    fails when training loads the weights into the U-Net."""
    import shutil

    import torch
    from safetensors.torch import save_file

    broken = folder / "broken-model"
    shutil.copytree(tiny, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        save_file({"not_a_unet.weight": torch.zeros(4)}, str(weights))
    return broken


def same_model_files(a, b) -> bool:
    """Two saved single-file models hold the same tensors, bit for bit."""
    import torch
    from safetensors.torch import load_file

    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
