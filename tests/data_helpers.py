"""Helpers for the data tests: generated images and datasets (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(path: Path, size: tuple[int, int], *, seed: int = 0, mode: str = "RGB", fmt: str | None = None,
               exif_orientation: int | None = None) -> Path:
    """A random-noise image of ``size`` (W, H) saved in ``mode``; optional EXIF orientation."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    im.save(path, fmt, **kwargs)
    return path


def make_dataset(root: Path, sizes: list[tuple[int, int]], *, captions: bool = True, tags: bool = True,
                 ext: str = ".png") -> list[Path]:
    """Images img000.png ... with .caption/.txt sidecars."""
    paths = []
    for i, size in enumerate(sizes):
        p = make_image(root / f"img{i:03d}{ext}", size, seed=i)
        if captions:
            p.with_suffix(".caption").write_text(f"a photo number {i}", encoding="utf-8")
        if tags:
            p.with_suffix(".txt").write_text(f"tag{i % 3}, common, red", encoding="utf-8")
        paths.append(p)
    return paths


def write_meta(path: Path, meta: dict) -> Path:
    path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return path


def run_config(tmp: Path, dataset_toml: str, **sections):
    """A RunConfig with datasets parsed from ``dataset_toml`` (a kohya dataset TOML text)."""
    import tomlkit

    from engine.config.dataset import parse_dataset_tables
    from engine.config.lines import key_lines
    from engine.config.problems import ProblemList
    from engine.config.schema import RunConfig

    cfg = RunConfig(base_dir=str(tmp))
    problems = ProblemList(file="run.toml", line_of=key_lines(dataset_toml))
    cfg.datasets = parse_dataset_tables(tomlkit.parse(dataset_toml).unwrap(), problems=problems, base_dir=tmp)
    problems.raise_if_errors()
    cfg.train.output_dir = str(tmp / "runs")
    cfg.train.seed = 1234
    for name, values in sections.items():
        for k, v in values.items():
            setattr(getattr(cfg, name), k, v)
    return cfg
