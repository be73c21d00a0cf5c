"""Helpers for the text-encoding tests: the real CLIP vocabulary and tiny CLIP text models."""

from __future__ import annotations

from functools import lru_cache

BOS, EOS, SD2_PAD = 49406, 49407, 0
A = 320  # "a" -> "a</w>": one token per "a ", so lengths are easy to count by hand


def a_caption(count: int) -> str:
    """A caption of exactly ``count`` CLIP tokens ("a a a ...")."""
    return " ".join(["a"] * count)


@lru_cache(maxsize=2)
def tokenizer(v2: bool = False):
    from engine.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(v2=v2)


def tiny_text_encoder(v2: bool = False, layers: int = 3, seed: int = 0):
    """A random CLIPTextModel over CLIP's 49,408-token vocabulary (SD widths scaled down)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.tiny import TinySpec, tiny_text_config

    torch.manual_seed(seed)
    spec = TinySpec("sd2" if v2 else "sd1", text_layers=layers)
    model = CLIPTextModel(CLIPTextConfig(**tiny_text_config(spec)))
    return model.eval()
