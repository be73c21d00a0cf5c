"""Python's cyclic garbage collector, paused while a headless run starts.

Importing torch, transformers and diffusers and building the models leaves several hundred
thousand long-lived Python objects, and the collector walks all of them on each full pass: six
passes in a start, about 0.6 s of it on the 2-core bench machine (README, Performance). Almost
nothing made while starting is garbage, so `sdft train` pauses the collector until the run is
about to take its first step. Then one pass frees what start-up did leave in cycles, what is left
is frozen (later passes skip it, so they stay short during training) and collection resumes.
"""

from __future__ import annotations

import gc

_paused = False


def pause_collector() -> None:
    """Stop automatic collection until :func:`resume_collector` (called first by the CLI)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_collector() -> None:
    """Collect once, freeze the survivors and collect automatically again; does nothing when
    :func:`pause_collector` did not pause it, so every caller may call it."""
    global _paused
    if not _paused:
        return
    _paused = False
    gc.collect()
    gc.freeze()
    gc.enable()
