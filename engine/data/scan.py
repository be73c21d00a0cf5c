"""Find images and read their sizes from the file headers, without decoding.

Pillow's ``Image.open`` is lazy: it parses the header and stops, so a scan of thousands of
files costs milliseconds each. EXIF orientation 5–8 swaps width and height when honoured.
No torch here: the wizard uses this before any model is loaded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

BASE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OPTIONAL_EXTENSIONS = (".avif", ".jxl", ".heic", ".heif")
SKIP_SUFFIXES = (".npz", ".safetensors")
CACHE_DIR_NAMES = (".latent-cache",)
EXIF_ORIENTATION = 0x0112


class ScanError(Exception):
    """A dataset folder that cannot be used as is (message says which files and why)."""


def image_extensions() -> tuple[str, ...]:
    """The base extensions plus avif/jxl/heic when a Pillow plugin for them is importable."""
    extra: list[str] = []
    try:
        from PIL import Image

        registered = Image.registered_extensions()
        if any(ext not in registered for ext in OPTIONAL_EXTENSIONS):
            for plugin in ("pillow_avif", "pillow_jxl", "pillow_heif"):
                try:
                    module = __import__(plugin)
                    if plugin == "pillow_heif":
                        module.register_heif_opener()
                except Exception:
                    pass
            registered = Image.registered_extensions()
        extra = [ext for ext in OPTIONAL_EXTENSIONS if ext in registered]
    except ImportError:
        pass
    return BASE_EXTENSIONS + tuple(extra)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about one image."""

    path: Path
    size: tuple[int, int] | None          # (W, H) as trained on (EXIF orientation applied if asked)
    raw_size: tuple[int, int] | None      # (W, H) as stored
    orientation: int = 1                   # EXIF orientation tag (1 = upright)
    mode: str = ""                         # Pillow mode, e.g. "RGB", "CMYK", "P", "I;16"
    format: str = ""
    file_size: int = 0
    error: str | None = None               # why the header could not be read

    @property
    def rotated(self) -> bool:
        return self.orientation not in (0, 1)


def lies_within(path: str | Path, root: str | Path) -> bool:
    """Whether ``path``, every link followed, is inside ``root``. A dataset reads nothing a link
    leads to outside its folder (a caption symlinked to ~/.ssh/id_rsa would be copied into
    metadata.json and trained on)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def find_images(root: str | Path, *, recursive: bool = False, extensions: Iterable[str] | None = None,
                skip_dirs: Iterable[str] = CACHE_DIR_NAMES, outside: list[Path] | None = None) -> list[Path]:
    """Sorted image paths under ``root`` (images sharing a name are all listed: see :func:`name_clashes`).
    Links that lead outside ``root`` are left out, and listed in ``outside`` when given."""
    root = Path(root)
    if not root.is_dir():
        raise ScanError(f"image folder not found: {root}")
    exts = {e.lower() for e in (extensions or image_extensions())}
    skip = set(skip_dirs)
    found: list[Path] = []
    if recursive:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip)
            base = Path(folder)
            found.extend(base / f for f in files if _is_image(f, exts))
    else:
        with os.scandir(root) as entries:
            found = [Path(e.path) for e in entries if _is_image(e.name, exts) and e.is_file()]
    escaping = [p for p in found if not lies_within(p, root)]
    if escaping:
        if outside is not None:
            outside.extend(escaping)
        found = [p for p in found if p not in set(escaping)]
    found.sort()
    return found


def _is_image(name: str, exts: set[str]) -> bool:
    if name.startswith("."):
        return False
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in exts


@dataclass(frozen=True)
class NameClash:
    """Images that share one name in one folder, such as ``foo.jpg`` beside ``foo.png``.

    The rule everywhere (scan, health, prepare, buckets, training): every such image is kept
    and trains; all of them read the same sidecars (``foo.caption``, ``foo.txt``), as kohya
    reads them; their metadata keys keep the extension so each stays unique; and a kohya
    ``foo.npz`` is not imported for them, since kohya writes one such file for all of them.
    """

    stem: Path                  # folder / shared name, without extension
    images: tuple[Path, ...]    # sorted

    def others(self, path: Path) -> list[str]:
        return [p.name for p in self.images if p != path]

    def finding(self, path: Path) -> str:
        """The health line for ``path``: what happens and how to change it."""
        both = "both" if len(self.images) == 2 else "all"
        return (f"shares the name {self.stem.name!r} with {', '.join(self.others(path))}: {both} train and read "
                f"the same caption/tags files ({self.stem.name}.caption, {self.stem.name}.txt); rename one "
                "to give it its own caption")

    def note(self) -> str:
        """One line for the terminal and the training log."""
        names = " and ".join(p.name for p in self.images)
        name = self.stem.name
        return (f"{names} share the name {name!r} in {self.stem.parent}: all of them train (one set of "
                f"sidecars, {name}.caption / {name}.txt; metadata keys keep the extension; a kohya "
                f"{name}.npz is not used for them)")


def name_clashes(paths: Iterable[Path]) -> list[NameClash]:
    """Groups of two or more images with one name (extension aside) in one folder."""
    groups: dict[Path, list[Path]] = {}
    for path in paths:
        path = Path(path)
        groups.setdefault(path.with_suffix(""), []).append(path)
    return [NameClash(stem, tuple(sorted(set(images)))) for stem, images in sorted(groups.items())
            if len(set(images)) > 1]


def clash_index(paths: Iterable[Path]) -> dict[Path, NameClash]:
    """image path -> its clash, for the images that share a name."""
    return {image: clash for clash in name_clashes(paths) for image in clash.images}


def read_image_info(path: str | Path, *, exif_transpose: bool = True) -> ImageInfo:
    """Size, mode and orientation from the header only; never raises (errors go in ``error``)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError as exc:
        return ImageInfo(path, None, None, error=f"cannot read: {exc.strerror or exc}")
    if file_size == 0:
        return ImageInfo(path, None, None, file_size=0, error="empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            raw = (int(im.width), int(im.height))
            orientation = _orientation(im)
            mode, fmt = im.mode, im.format or ""
    except UnidentifiedImageError:
        return ImageInfo(path, None, None, file_size=file_size, error="not an image Pillow can read")
    except Exception as exc:  # truncated headers, permission errors, decoder bugs
        return ImageInfo(path, None, None, file_size=file_size, error=f"cannot read: {exc}")
    if raw[0] <= 0 or raw[1] <= 0:
        return ImageInfo(path, None, raw, orientation, mode, fmt, file_size, error=f"zero-size image {raw}")
    size = raw
    if exif_transpose and orientation in (5, 6, 7, 8):
        size = (raw[1], raw[0])
    return ImageInfo(path, size, raw, orientation, mode, fmt, file_size)


def _orientation(im) -> int:
    """EXIF orientation without decoding pixels.

    ``im.getexif()`` on a PNG loads the whole image when the eXIf chunk was not seen yet, so
    read the raw EXIF block the header parser already stored in ``im.info``.
    """
    from PIL import Image

    raw = im.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = int(exif.get(EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def read_sizes(paths: Iterable[Path], *, exif_transpose: bool = True, workers: int | None = None) -> list[ImageInfo]:
    """Header info for many files; threads overlap the file-system waits."""
    paths = list(paths)
    if len(paths) < 64:
        return [read_image_info(p, exif_transpose=exif_transpose) for p in paths]
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: read_image_info(p, exif_transpose=exif_transpose), paths, chunksize=64))


@dataclass(frozen=True)
class ScanItem:
    """An image with its sidecar texts (None = no sidecar file)."""

    info: ImageInfo
    caption: str | None
    tags: str | None

    @property
    def path(self) -> Path:
        return self.info.path


def scan_folder(root: str | Path, *, recursive: bool = False, caption_extension: str = ".caption",
                tags_extension: str = ".txt", exif_transpose: bool = True,
                progress: Callable[[int, int], None] | None = None) -> list[ScanItem]:
    """Images under ``root`` with sizes from headers and their caption/tag sidecars.
    ``progress(done, total)`` is called as the headers are read (every 64 images)."""
    from engine.data.captions import read_sidecar

    paths = find_images(root, recursive=recursive)   # links out of the folder are not read
    infos: list[ImageInfo] = []
    for start in range(0, len(paths), _PROGRESS_CHUNK):
        infos.extend(read_sizes(paths[start:start + _PROGRESS_CHUNK], exif_transpose=exif_transpose))
        if progress:
            progress(len(infos), len(paths))
    if progress and not paths:
        progress(0, 0)
    items = []
    for info in infos:
        stem = info.path.with_suffix("")
        caption = read_sidecar(stem.with_name(stem.name + caption_extension), within=root) if caption_extension else None
        tags = read_sidecar(stem.with_name(stem.name + tags_extension), within=root) if tags_extension else None
        items.append(ScanItem(info, caption, tags))
    return items


_PROGRESS_CHUNK = 64
