"""Real pixels in terminals that can show them: Kitty's graphics protocol or Sixel.

Half-block characters work everywhere (over SSH, in tmux, at 80x24) and stay the default.
Where the terminal says it can do better, images are drawn with the Kitty graphics protocol
(kitty) or Sixel (foot, mlterm, contour, WezTerm, iTerm2) through the ``textual-image``
package. The choice comes from the environment, not from querying the terminal, so it costs
nothing at start-up and never hangs on a terminal that does not answer:

``SDFT_IMAGES`` = ``auto`` (default) | ``halfblock`` | ``kitty`` | ``sixel``.

Inside tmux or screen, ``auto`` keeps half-blocks: multiplexers drop or garble graphics.
The protocol module must be imported before a Textual app starts (it measures the
terminal's cell size in pixels), so the entry points call :func:`prepare_graphics` first.
"""

from __future__ import annotations

import os
from typing import Mapping

HALFBLOCK, KITTY, SIXEL = "halfblock", "kitty", "sixel"
SIXEL_TERMS = ("foot", "mlterm", "contour")
SIXEL_PROGRAMS = ("WezTerm", "iTerm.app")

_widget_class = None      # the textual-image widget class once prepared, else None


def choose_protocol(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    choice = env.get("SDFT_IMAGES", "auto").strip().lower()
    if choice in (HALFBLOCK, KITTY, SIXEL):
        return choice
    if env.get("TMUX") or env.get("STY"):
        return HALFBLOCK
    term, program = env.get("TERM", ""), env.get("TERM_PROGRAM", "")
    if env.get("KITTY_WINDOW_ID") or term == "xterm-kitty":
        return KITTY
    if program in SIXEL_PROGRAMS or any(name in term for name in SIXEL_TERMS):
        return SIXEL
    return HALFBLOCK


def prepare_graphics(environ: Mapping[str, str] | None = None) -> str:
    """Pick the protocol and load its widget; falls back to half-blocks if it cannot load.

    Call before ``App.run()``; returns the protocol in use.
    """
    global _widget_class
    protocol = choose_protocol(environ)
    _widget_class = None
    if protocol == HALFBLOCK:
        return HALFBLOCK
    try:
        from textual_image import widget as image_widgets
    except Exception:  # noqa: BLE001 - not installed, or the terminal query failed
        return HALFBLOCK
    _widget_class = image_widgets.TGPImage if protocol == KITTY else image_widgets.SixelImage
    return protocol


def graphics_widget_class():
    """The prepared textual-image widget class, or None for half-block rendering."""
    return _widget_class
