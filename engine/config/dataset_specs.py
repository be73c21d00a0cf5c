"""The resolved shapes of kohya's dataset tables: one subset, one dataset, a run's datasets.

Parsing and validating the tables is engine/config/dataset.py; the key tables and their
placement checks are engine/config/dataset_keys.py; each file key is declared here, as a field
checked by engine/config/fields.py. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from engine.config.fields import opt

INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")


def _path(value: object) -> object:
    """A path key: the file's text as a Path (resolved against the TOML's folder later)."""
    return Path(value) if isinstance(value, str) else value


def _resolution(value: object) -> tuple[int, int]:
    """``512`` (square) or ``[width, height]``, positive, as (width, height)."""
    def whole(v: object) -> TypeGuard[int]:
        return isinstance(v, int) and not isinstance(v, bool)

    if whole(value):
        sides = (value, value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(whole(v) for v in value):
        sides = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"must be an integer or two integers [width, height], got {value!r}")
    if min(sides) <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return sides


def _extension(value: object) -> object:
    """A caption file's extension as kohya appends it to the image's name: ".txt", with the dot."""
    if isinstance(value, str) and value and not value.startswith("."):
        raise ValueError(f"must start with a dot, got {value!r}: kohya appends it to the image's name as it is, "
                         f"so a.png would look for a{value}; write \".{value}\"")
    return value


def _low_high(value: object) -> tuple[float, float]:
    """``[low, high]``: two numbers, low not above high."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"must be two numbers [low, high], got {value!r}")
    if value[0] > value[1]:
        raise ValueError(f"low must not exceed high, got {value!r}")
    return (float(value[0]), float(value[1]))


# Each file key is a field declared with opt(): its type, default, bounds and help are checked by
# engine/config/fields.py, the same checker as the run file's. Where each key may stand is
# engine/config/dataset_keys.py; ``key`` and ``subsets`` are filled in by the parser.


@dataclass
class SubsetSpec:
    """One ``[[datasets.subsets]]`` table with every value resolved (merge order applied)."""

    metadata_file: Path | None = opt(None, "The subset's metadata JSON (captions and tags per image): build one "
                                     "with `sdft prepare`; unset: a folder subset (image_dir with caption files).",
                                     normalize=_path)
    image_dir: Path | None = opt(None, "Folder of the images; with a metadata file and unset: its keys are full "
                                 "paths.", normalize=_path)
    num_repeats: int = opt(1, "Times each image is seen per epoch (below 1: the subset is skipped).")
    keep_tokens: int = opt(0, "Leading caption tags kept in place when shuffling or dropping tags.", min=0)
    token_warmup_min: int = opt(1, "Tags shown at the start of the token warm-up.", min=0)
    caption_dropout_every_n_epochs: int = opt(0, "Drop every caption in each N-th epoch; 0 = never.", min=0)
    token_warmup_step: float = opt(0, "Steps until all tags are shown (below 1: a fraction of the run); 0 = off.",
                                   min=0)
    caption_dropout_rate: float = opt(0.0, "Chance that an image trains with an empty caption: 0 = never, "
                                      "1 = always.", min=0.0, max=1.0)
    caption_tag_dropout_rate: float = opt(0.0, "Chance that each tag (after keep_tokens) is dropped: 0 = never, "
                                          "1 = always.", min=0.0, max=1.0)
    shuffle_caption: bool = opt(False, "Shuffle the caption's tags each time it is drawn.")
    enable_wildcard: bool = opt(False, "Pick one line of a multi-line caption at random ({a|b} also picks).")
    flip_aug: bool = opt(False, "Mirror images at random (doubles the cached latents).")
    color_aug: bool = opt(False, "Jitter the hue at random (latents are then not cached).")
    random_crop: bool = opt(False, "Crop at a random place instead of the centre (latents are then not cached).")
    caption_separator: str = opt(",", 'What separates tags in a caption, e.g. ",".')
    keep_tokens_separator: str = opt("", 'Tags before this mark stay in place, e.g. "|||"; empty = off.')
    secondary_separator: str | None = opt(None, 'Joins tags that shuffle and drop as one, e.g. ";;;".')
    caption_prefix: str | None = opt(None, 'Text put before every caption, e.g. "masterpiece".')
    caption_suffix: str | None = opt(None, 'Text put after every caption, e.g. "best quality".')
    resize_interpolation: str | None = opt(None, 'How images are resized, e.g. "lanczos"; unset: area when '
                                           "shrinking, Lanczos when enlarging.", choices=INTERPOLATIONS)
    face_crop_aug_range: tuple[float, float] | None = opt(None, "Face crop scale range [low, high], e.g. "
                                                          "[2.0, 4.0] (needs face info in file names).",
                                                          normalize=_low_high)
    custom_attributes: dict[str, Any] | None = opt(None, "Free values passed along with the subset: an inline table "
                                         "{ name = value }.")
    caption_from_filename: bool = opt(False, "An image with neither caption nor tags trains with its file name "
                                      "(sdft's key; kohya has none).")
    alpha_mask: bool = opt(False, "The image's alpha channel weights the loss (masked loss).")
    conditioning_data_dir: Path | None = opt(None, "A folder with a mask image per image, same stem (masked "
                                             "loss; kohya's key for it).", normalize=_path)
    is_val: bool = opt(False, "Held out: only the validation loss sees this subset (sdft's key).")
    # A folder subset (kohya's DreamBooth method): image_dir without metadata_file, docs/formats.md
    caption_extension: str | None = opt(None, 'Folder subsets: the caption file beside each image, e.g. ".txt" '
                                        "(unset: [data] caption_extension, kohya's --caption_extension).",
                                        normalize=_extension)
    class_tokens: str | None = opt(None, 'Folder subsets: the caption of an image without a caption file, e.g. '
                                   '"sks dog" (kohya\'s class tokens).')
    is_reg: bool = opt(False, "Folder subsets: regularization images, repeated to match the training images of "
                       "an epoch as kohya's train_db.py does.")
    cache_info: bool = opt(False, "kohya's image-size cache for folder subsets; sdft reads sizes from the image "
                           "headers at every start, so only false is accepted.")
    key: str = ""                       # dotted key, e.g. "datasets[0].subsets[1]"

    @property
    def is_folder(self) -> bool:
        """A folder subset: images and caption files in image_dir, no metadata file (kohya's
        DreamBooth method)."""
        return self.metadata_file is None

    @property
    def source(self) -> Path:
        """Where the subset's list of images comes from: its metadata file, or its folder."""
        if self.metadata_file is not None:
            return self.metadata_file
        assert self.image_dir is not None, "the parser refuses a folder subset without image_dir"
        return self.image_dir

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
    batch_size: int = opt(1, "Images per micro-batch.", min=1)
    resolution: tuple[int, int] | None = opt(None, "Training size: 512, or [width, height]; unset: from the model "
                                             "(512, or 768 for 768-v).", normalize=_resolution)
    enable_bucket: bool = opt(False, "Aspect-ratio buckets in bucket_reso_steps steps within the resolution's area.")
    bucket_no_upscale: bool = opt(False, "Never enlarge an image to fit a bucket.")
    min_bucket_reso: int = opt(256, "Shortest bucket side, e.g. 256.", min=1)
    max_bucket_reso: int = opt(1024, "Longest bucket side, e.g. 1024.", min=1)
    bucket_reso_steps: int = opt(64, "Bucket sides are multiples of this (of 8; 64 is the usual value).")
    validation_split: float = opt(0.0, "Share of each subset's images held out for the validation loss, e.g. 0.1.",
                                  min=0.0, max=1.0)
    validation_seed: int | None = opt(None, "Which images are held out (unset: the run's seed).")
    # kohya's LoRA key: accepted at its default only (dataset_keys.NOT_IN_SDFT says why)
    network_multiplier: float = opt(1.0, "kohya's LoRA strength per dataset; sdft accepts only 1.0.")
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
