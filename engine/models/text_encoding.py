"""Captions to U-Net conditioning, as NovelAI / kohya train SD.

* 75 / 150 / 225 tokens: the caption is padded to N + 2 ids and cut into chunks of 77,
  each with its own BOS/EOS; every chunk goes through CLIP on its own and the states are
  stitched back into 77 / 152 / 227 positions.
* Clip skip k: ``final_layer_norm(hidden_states[-k])``; k = 1 is CLIP's own output.
* Weighted captions (A1111 syntax) scale the states of the weighted tokens.

The same :class:`PromptEncoder` encodes training captions and the sample prompts
(:func:`encode_prompts_for_sampling`) so samples show what training conditions on.
There is no ``torch.no_grad`` here: the trainer decides (the text encoder may be training).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from engine.models.tokenizer import (
    CHUNK_LEN,
    CHUNK_TEXT,
    check_max_token_length,
    chunk_ids,
    pad_ids,
)
from engine.models.weighting import weighted_token_ids

WEIGHT_NORMALIZATIONS = ("none", "mean")
_MAX_TRUNCATION_WARNINGS = 5


@dataclass
class TokenBatch:
    """Token ids ready for the text encoder.

    ids: LongTensor (B, n, 77), n = max_token_length / 75.
    weights: FloatTensor (B, n, 77) with 1.0 on BOS/EOS/PAD, or None without weighting.
    token_counts: text tokens per caption before truncation (BOS/EOS not counted).
    """

    ids: torch.Tensor
    weights: torch.Tensor | None = None
    token_counts: tuple[int, ...] = ()

    def __len__(self) -> int:
        return self.ids.shape[0]


def _unwrap(module):
    """The CLIPTextModel inside DDP (``.module``) or torch.compile (``._orig_mod``)."""
    for attr in ("module", "_orig_mod"):
        while hasattr(module, attr) and isinstance(getattr(module, attr), torch.nn.Module):
            module = getattr(module, attr)
    return module


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """CLIP's final LayerNorm: on the model in transformers 5, under ``text_model`` in 4.x."""
    model = _unwrap(text_encoder)
    for owner in (model, getattr(model, "text_model", None)):
        norm = getattr(owner, "final_layer_norm", None)
        if isinstance(norm, torch.nn.Module):
            return norm
    raise TypeError(
        f"{type(model).__name__} has no final_layer_norm: clip skip needs a CLIP text model"
    )


def recombine(states: torch.Tensor, chunks: int) -> torch.Tensor:
    """(B, n·77, ...) per-chunk states → (B, 77) or (B, 75n + 2, ...).

    Keeps chunk 0's BOS state, positions 1…75 of every chunk, and the last chunk's final
    state. Works on encoder states (B, n·77, D) and on weights (B, n·77) alike.
    """
    if chunks == 1:
        return states
    parts = [states[:, :1]]
    for j in range(chunks):
        start = j * CHUNK_LEN
        parts.append(states[:, start + 1 : start + 1 + CHUNK_TEXT])
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


class PromptEncoder:
    """Tokenize and encode captions exactly as training does.

    ``warn`` receives user-facing warnings (clip skip on SD2, truncated weighted captions);
    without it they go to Python's ``warnings``.
    """

    def __init__(
        self,
        tokenizer,
        text_encoder,
        *,
        max_token_length: int = 75,
        clip_skip: int = 1,
        v2: bool = False,
        weighted: bool = False,
        weight_normalization: str = "none",
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.chunks = check_max_token_length(max_token_length)
        if weight_normalization not in WEIGHT_NORMALIZATIONS:
            raise ValueError(
                f"weight_normalization = {weight_normalization!r}: use \"none\" (kohya) or \"mean\" (A1111)"
            )
        if not isinstance(clip_skip, int) or clip_skip < 1:
            raise ValueError(f"model.clip_skip = {clip_skip!r}: use 1 (last layer, the default) or more (NAI: 2)")
        layers = getattr(getattr(_unwrap(text_encoder), "config", None), "num_hidden_layers", None)
        if layers is not None and clip_skip > layers:
            raise ValueError(
                f"model.clip_skip = {clip_skip} but the text encoder has only {layers} layers: "
                f"use 1…{layers}"
            )
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_token_length = max_token_length
        self.clip_skip = clip_skip
        self.v2 = v2
        self.weighted = weighted
        self.weight_normalization = weight_normalization
        self._warn = warn
        self._truncation_warnings = 0
        # The training loop tokenizes on its batch-loading thread while sampling may tokenize
        # on the training thread: one at a time (a fast tokenizer is not safe to share).
        self._tokenizing = threading.Lock()
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        # SD1 pads with EOS, SD2 with "!" (id 0); the tokenizer says which.
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        if v2 and clip_skip > 1:
            self.warn(
                f"clip_skip = {clip_skip} with an SD2 model: SD2's text encoder already stops one "
                "layer before OpenCLIP's last (23 of 24 layers), so clip skip 1 is SD2's "
                f"penultimate layer and {clip_skip} skips {clip_skip - 1} more. Kept as kohya does; "
                "SD2 models are usually trained with clip_skip = 1."
            )
        if v2 and self.pad == self.eos:
            self.warn(
                "SD2 model with a tokenizer that pads with <|endoftext|>: SD2 pads with \"!\" "
                "(id 0). Check model.tokenizer_dir."
            )

    # -- messages ---------------------------------------------------------------------
    def warn(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)
        else:
            warnings.warn(message, UserWarning, stacklevel=3)

    @property
    def embedding_length(self) -> int:
        """Positions per caption after recombination: 77, 152 or 227."""
        return CHUNK_LEN if self.chunks == 1 else CHUNK_TEXT * self.chunks + 2

    # -- tokenization ---------------------------------------------
    def tokenize(self, captions: list[str]) -> TokenBatch:
        """Captions → ids (B, n, 77) [and weights (B, n, 77) when weighted]. Thread-safe."""
        with self._tokenizing:
            return self._tokenize(captions)

    def _tokenize(self, captions: list[str]) -> TokenBatch:
        if isinstance(captions, str):
            captions = [captions]
        captions = list(captions)
        N = self.max_token_length
        if self.weighted:
            items = weighted_token_ids(self.tokenizer, captions, N)
            text_ids = [item.ids for item in items]
            text_weights = [item.weights for item in items]
            counts = tuple(item.total for item in items)
            for caption, item in zip(captions, items, strict=True):
                if item.truncated:
                    self._warn_truncated(caption, item.total)
        else:
            encoded = self.tokenizer(captions, add_special_tokens=False, truncation=False, verbose=False)
            text_ids = encoded["input_ids"]
            text_weights = None
            counts = tuple(len(ids) for ids in text_ids)

        ids = [
            chunk_ids(pad_ids(row, N, bos=self.bos, eos=self.eos, pad=self.pad), eos=self.eos, pad=self.pad)
            for row in text_ids
        ]
        ids_tensor = torch.tensor(ids, dtype=torch.long).reshape(len(captions), self.chunks, CHUNK_LEN)
        weights_tensor = None
        if text_weights is not None:
            # Same layout as the ids: 1.0 on BOS / EOS / PAD; the chunker only copies
            # positions, so chunking the weight rows moves each weight with its token.
            rows = []
            for row in text_weights:
                padded = [1.0, *row] + [1.0] * (N + 1 - len(row))
                rows.append(_chunk_weights(padded))
            weights_tensor = torch.tensor(rows, dtype=torch.float32).reshape(len(captions), self.chunks, CHUNK_LEN)
        return TokenBatch(ids=ids_tensor, weights=weights_tensor, token_counts=counts)

    def _warn_truncated(self, caption: str, total: int) -> None:
        self._truncation_warnings += 1
        if self._truncation_warnings > _MAX_TRUNCATION_WARNINGS:
            return
        preview = caption if len(caption) <= 60 else caption[:57] + "..."
        more = (
            " Further truncations are not reported; `sdft tokens` shows where a caption is cut."
            if self._truncation_warnings == _MAX_TRUNCATION_WARNINGS
            else ""
        )
        self.warn(
            f"weighted caption has {total} tokens, only the first {self.max_token_length} are used "
            f"(model.max_token_length): {preview!r}.{more}"
        )

    # -- encoding --------------------------------------------------
    def encode(self, tokens: TokenBatch, device, dtype: torch.dtype | None = None) -> torch.Tensor:
        """TokenBatch → states (B, 77 or 75n + 2, D), in ``dtype`` when given."""
        batch = tokens.ids.shape[0]
        ids = tokens.ids.to(device, non_blocking=True).reshape(batch * self.chunks, CHUNK_LEN)  # pinned on a GPU
        if self.clip_skip == 1:
            states = self.text_encoder(ids).last_hidden_state
        else:
            hidden = self.text_encoder(ids, output_hidden_states=True).hidden_states
            states = final_layer_norm(self.text_encoder)(hidden[-self.clip_skip])
        states = recombine(states.reshape(batch, self.chunks * CHUNK_LEN, -1), self.chunks)

        if tokens.weights is not None:
            weights = recombine(tokens.weights.reshape(batch, self.chunks * CHUNK_LEN), self.chunks)
            states = self._apply_weights(states, weights.to(device=states.device, non_blocking=True))
        if dtype is not None:
            states = states.to(dtype)
        return states

    def _apply_weights(self, states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Scale each position's state by its weight; "mean" keeps each caption's mean."""
        weighted = states * weights.to(states.dtype).unsqueeze(-1)
        if self.weight_normalization == "mean":
            # Means in fp32: fp16 sums over 227 x 1024 values lose precision.
            before = states.float().mean(dim=(1, 2), keepdim=True)
            after = weighted.float().mean(dim=(1, 2), keepdim=True)
            safe = torch.where(after.abs() > 1e-12, after, torch.ones_like(after))
            ratio = torch.where(after.abs() > 1e-12, before / safe, torch.ones_like(after))
            weighted = weighted * ratio.to(weighted.dtype)
        return weighted

    def __call__(self, captions: list[str], device, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.encode(self.tokenize(captions), device, dtype)


def _chunk_weights(padded: list[float]) -> list[list[float]]:
    """Weights for N + 2 positions → n chunks of 77 (1.0 at each chunk's BOS/EOS)."""
    total = len(padded)
    chunks_n = (total - 2) // CHUNK_TEXT
    if chunks_n == 1:
        return [padded]
    return [[1.0, *padded[1 + CHUNK_TEXT * j : 1 + CHUNK_TEXT * (j + 1)], 1.0] for j in range(chunks_n)]


def encode_prompts_for_sampling(
    encoder: PromptEncoder,
    prompts: list[str],
    negative_prompts: list[str | None] | None,
    device,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample prompts and their negatives through the training encoder.

    Returns ``(prompt_embeds, negative_prompt_embeds)`` of equal shape (B, 77|152|227, D),
    to pass as precomputed embeddings to a diffusers pipeline. A missing negative is the
    empty caption, encoded the same way (same length, same clip skip, same padding).
    Runs without gradients: sampling never trains.
    """
    prompts = list(prompts)
    negatives = list(negative_prompts) if negative_prompts is not None else [None] * len(prompts)
    if len(negatives) != len(prompts):
        raise ValueError(f"{len(prompts)} sample prompts but {len(negatives)} negative prompts")
    negatives = [negative or "" for negative in negatives]
    with torch.no_grad():
        states = encoder(prompts + negatives, device, dtype)
    return states[: len(prompts)], states[len(prompts) :]
