"""Terminal image preview: half-block rendering everywhere, Kitty/Sixel graphics where supported.

Each half-block cell shows two vertical pixels with "▀": the foreground is the upper pixel, the
background the lower one, so a W×H cell area shows a W×2H image with square-ish pixels. Textual
downgrades the colours on terminals without true colour. In terminals that show real pixels
(Kitty's graphics protocol or Sixel; see ``graphics.py``) the picture is drawn by textual-image.

API (also used by the dashboard for sample images): ``ImageView().set_image(path | None)``.
"""

from __future__ import annotations

from pathlib import Path

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from sdft_tui.widgets.graphics import graphics_widget_class

HALF = "▀"


def load_thumbnail(path: Path, width: int, height: int):
    """An RGB Pillow image fitting ``width`` × ``height`` pixels (aspect kept), or None + reason."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (width * 2, height * 2))  # JPEG: decode at a reduced scale (fast)
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        im.thumbnail((max(1, width), max(1, height)), Image.Resampling.BILINEAR)
        return im.copy()


def half_block_text(im, background: str = "black") -> Text:
    """Rich Text of an RGB image, two pixel rows per line."""
    w, h = im.size
    px = im.load()
    text = Text(no_wrap=True, overflow="crop")
    for y in range(0, h, 2):
        for x in range(w):
            top = px[x, y]
            style = Style(color=f"rgb({top[0]},{top[1]},{top[2]})",
                          bgcolor=(f"rgb({px[x, y + 1][0]},{px[x, y + 1][1]},{px[x, y + 1][2]})"
                                   if y + 1 < h else background))
            text.append(HALF, style)
        if y + 2 < h:
            text.append("\n")
    return text


class ImageView(Widget):
    """Shows one image scaled to the widget; ``set_image(None)`` clears it."""

    DEFAULT_CSS = """
    ImageView { width: 1fr; height: 1fr; content-align: center middle; }
    """

    def __init__(self, path: Path | str | None = None, *, name=None, id=None, classes=None):
        super().__init__(name=name, id=id, classes=classes)
        self._path: Path | None = Path(path) if path else None
        self._cache: tuple | None = None
        self._graphics_class = graphics_widget_class()  # None: half-blocks

    @property
    def uses_graphics(self) -> bool:
        return self._graphics_class is not None

    def compose(self):
        if self._graphics_class is not None:
            picture = self._graphics_class(str(self._path) if self._path else None, id="picture")
            picture.styles.width = "1fr"
            picture.styles.height = "1fr"
            yield picture

    @property
    def path(self) -> Path | None:
        return self._path

    def set_image(self, path: Path | str | None) -> None:
        new = Path(path) if path else None
        if new != self._path:
            self._path = new
            self._cache = None
            if self.uses_graphics and self.is_mounted:
                self.query_one("#picture").image = str(new) if new else None
            self.refresh()

    def render(self):
        if self._path is None:
            return Text("no image", style="dim")
        w, h = self.size.width, self.size.height
        if w < 2 or h < 1:
            return Text("")
        key = (self._path, w, h)
        if self._cache is None or self._cache[0] != key:
            try:
                text = half_block_text(load_thumbnail(self._path, w, h * 2))
            except Exception as exc:  # unreadable image: say so instead of crashing the screen
                text = Text(f"cannot preview {self._path.name}: {exc}", style="red")
            self._cache = (key, text)
        return self._cache[1]
