"""The resolved shapes of kohya's dataset tables: one subset, one dataset, a run's datasets.

Parsing and validating the tables is engine/config/dataset.py; the key tables and their
checks are engine/config/dataset_keys.py. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SubsetSpec:
    """One ``[[datasets.subsets]]`` table with every value resolved (merge order applied)."""

    metadata_file: Path
    image_dir: Path | None = None
    num_repeats: int = 1
    keep_tokens: int = 0
    token_warmup_min: int = 1
    caption_dropout_every_n_epochs: int = 0
    token_warmup_step: float = 0
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    shuffle_caption: bool = False
    enable_wildcard: bool = False
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    caption_separator: str = ","
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    resize_interpolation: str | None = None
    face_crop_aug_range: tuple[float, float] | None = None
    custom_attributes: dict | None = None
    caption_from_filename: bool = False  # an image with neither caption nor tags trains with its file name
    alpha_mask: bool = False            # the image's alpha channel weights the loss (masked loss)
    conditioning_data_dir: Path | None = None   # a mask image per image, same stem (masked loss)
    is_val: bool = False                # held out: only the validation loss sees it
    key: str = ""                       # dotted key, e.g. "datasets[0].subsets[1]"

    @property
    def cacheable(self) -> bool:
        """random_crop / color_aug change pixels per draw, so latents cannot be cached."""
        return not (self.random_crop or self.color_aug)

    @property
    def mask_source(self) -> str | None:
        """Where this subset's loss masks come from: "alpha", "folder", or None."""
        if self.conditioning_data_dir is not None:
            return "folder"
        return "alpha" if self.alpha_mask else None


@dataclass
class DatasetSpec:
    """One ``[[datasets]]`` table: bucketing and batch settings plus its subsets."""

    subsets: list[SubsetSpec] = field(default_factory=list)
    batch_size: int = 1
    resolution: tuple[int, int] | None = None    # None = from the model (512, or 768 for 768-v)
    enable_bucket: bool = False
    bucket_no_upscale: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    validation_split: float = 0.0                # share of each subset's images held out for validation
    validation_seed: int | None = None           # which ones (None = the run's seed)
    key: str = ""


@dataclass
class DatasetBlueprint:
    """Every dataset of a run, resolved; ``source`` is the file it came from (or None)."""

    datasets: list[DatasetSpec] = field(default_factory=list)
    source: str | None = None

    @property
    def subsets(self) -> list[SubsetSpec]:
        return [s for d in self.datasets for s in d.subsets]


def round_bucket_limits(min_b: int, max_b: int, d: int) -> tuple[int, int]:
    """min rounded down, max rounded up to multiples of the step."""
    if d <= 0:
        return min_b, max_b
    return (min_b // d) * d, -((-max_b) // d) * d



def check_resolution(spec: DatasetSpec, resolution: tuple[int, int]) -> list[str]:
    """The same limit checks once a model-derived resolution is known (messages, empty = fine)."""
    if not spec.enable_bucket or spec.bucket_no_upscale:
        return []
    min_b, max_b = round_bucket_limits(spec.min_bucket_reso, spec.max_bucket_reso, spec.bucket_reso_steps)
    out = []
    if min_b > min(resolution):
        out.append(f"{spec.key}: min_bucket_reso {min_b} is larger than the resolution's short side {min(resolution)}")
    if max_b < max(resolution):
        out.append(f"{spec.key}: max_bucket_reso {max_b} is smaller than the resolution's long side {max(resolution)}")
    return out
