"""Helpers for the SDXL tests: tiny SDXL parts built once per process.

tests/conftest.py's ``tiny_sdxl_folder(seed)`` saves the same parts as a diffusers folder once
per worker. Tests only read both (a test that trains or changes a part builds its own).
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def tiny_sdxl_parts(seed: int = 0, v_prediction: bool = False) -> dict:
    """``build_tiny_sdxl_components(TinySdxlSpec(seed, v_prediction))``, cached: building is
    deterministic (tests/test_sdxl_tiny.py's ``test_seed_decides_the_weights``), so one build
    stands for every later one of the same spec. Never modify what it returns."""
    from engine.families.sdxl.tiny import TinySdxlSpec, build_tiny_sdxl_components

    return build_tiny_sdxl_components(TinySdxlSpec(seed=seed, v_prediction=v_prediction))
