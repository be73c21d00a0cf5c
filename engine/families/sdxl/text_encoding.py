"""Captions to SDXL's conditioning, as kohya's ``SdxlTextEncodingStrategy`` computes it.

* TE1 (CLIP ViT-L): ``hidden_states[11]``, layer 11's output without the final LayerNorm
  (the penultimate of its 12 layers);
* TE2 (OpenCLIP bigG): ``hidden_states[-2]``, the penultimate layer, no final LayerNorm;
* the U-Net's states: both concatenated on the last dim (768 + 1280 = 2048);
* the pooled embedding: TE2's last layer (after its final LayerNorm) at the first EOS of
  each chunk, through ``text_projection`` (kohya's ``_pool_workaround``: the EOS position,
  not CLIP's argmax-of-ids, so a "!"-padded chunk pools where its text ends); for 150 and
  225 tokens the first chunk's;
* 150 / 225 tokens: every chunk goes through its encoder on its own and the states are
  stitched back into 152 / 227 positions exactly as for SD1/SD2
  (``engine.models.text_encoding.recombine``, which is kohya's rule for both encoders).

No ``torch.no_grad`` here: the trainer decides (a text encoder may be training).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from engine.families.sdxl.tokens import tokenize_sdxl
from engine.models.text_encoding import _unwrap, recombine
from engine.models.tokenizer import CHUNK_LEN, EOS_ID, check_max_token_length

TE1_LAYER = 11    # kohya: enc_out["hidden_states"][11]
TE2_LAYER = -2    # kohya: enc_out["hidden_states"][-2]


@dataclass
class SdxlTokenBatch:
    """ids1 / ids2: LongTensor (B, n, 77) for TE1 / TE2; token_counts before truncation."""

    ids1: torch.Tensor
    ids2: torch.Tensor
    token_counts: tuple[int, ...] = ()

    def __len__(self) -> int:
        return self.ids1.shape[0]


@dataclass
class SdxlTextOutputs:
    """What the U-Net needs from the text: kohya's (hidden_state1, hidden_state2, pool2)."""

    states1: torch.Tensor   # (B, 77 | 152 | 227, TE1 width)
    states2: torch.Tensor   # (B, 77 | 152 | 227, TE2 width)
    pooled: torch.Tensor    # (B, TE2 projection)

    @property
    def states(self) -> torch.Tensor:
        """``encoder_hidden_states`` for the U-Net: (B, L, TE1 + TE2 width)."""
        return torch.cat([self.states1, self.states2], dim=2)

    # What the text-encoder output cache needs (engine/train/text_cache.py): one caption's rows,
    # a batch stacked from them, a move, and the three tensors by kohya's _te_outputs.npz names.
    def __len__(self) -> int:
        return self.pooled.shape[0]

    def __getitem__(self, rows: slice) -> "SdxlTextOutputs":
        """The outputs of some captions (sampling splits prompts from their negatives)."""
        return SdxlTextOutputs(self.states1[rows], self.states2[rows], self.pooled[rows])

    def row(self, index: int) -> "SdxlTextOutputs":
        return SdxlTextOutputs(self.states1[index], self.states2[index], self.pooled[index])

    @classmethod
    def stack(cls, rows: list["SdxlTextOutputs"]) -> "SdxlTextOutputs":
        return cls(torch.stack([r.states1 for r in rows]), torch.stack([r.states2 for r in rows]),
                   torch.stack([r.pooled for r in rows]))

    def to(self, device) -> "SdxlTextOutputs":
        return SdxlTextOutputs(self.states1.to(device), self.states2.to(device), self.pooled.to(device))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"hidden_state1": self.states1, "hidden_state2": self.states2, "pool2": self.pooled}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "SdxlTextOutputs":
        return cls(tensors["hidden_state1"], tensors["hidden_state2"], tensors["pool2"])


def te1_states(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    """(B·n, 77) ids → TE1's layer-11 states (B·n, 77, D1)."""
    return text_encoder(ids, output_hidden_states=True).hidden_states[TE1_LAYER]


def te2_states_and_pooled(text_encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B·n, 77) ids → TE2's penultimate states (B·n, 77, D2) and pooled (B·n, P)."""
    out = text_encoder(ids, output_hidden_states=True)
    return out.hidden_states[TE2_LAYER], pooled_at_eos(text_encoder, out.last_hidden_state, ids)


def pooled_at_eos(text_encoder, last_hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The last layer's state at each row's first EOS, through TE2's text projection.

    A row without EOS pools position 0 (kohya's argmax over an all-zero mask). The projection
    runs in its own dtype and the result comes back in the states' dtype, as in kohya.
    """
    position = (ids == EOS_ID).int().argmax(dim=1).to(last_hidden.device)
    picked = last_hidden[torch.arange(last_hidden.shape[0], device=last_hidden.device), position]
    projection = _unwrap(text_encoder).text_projection
    return projection(picked.to(projection.weight.dtype)).to(last_hidden.dtype)


class SdxlPromptEncoder:
    """Tokenize and encode captions for SDXL exactly as kohya's ``sdxl_train.py`` does."""

    output_type = SdxlTextOutputs   # what encode returns (the text-encoder output cache stacks its rows)

    def __init__(self, text_encoder1, text_encoder2, *, max_token_length: int = 75, tokenizer=None) -> None:
        self.chunks = check_max_token_length(max_token_length)
        layers = getattr(getattr(_unwrap(text_encoder1), "config", None), "num_hidden_layers", None)
        if layers is not None and layers < TE1_LAYER:
            raise ValueError(
                f"SDXL's first text encoder has {layers} layers; SDXL reads layer {TE1_LAYER} "
                "(CLIP ViT-L has 12): this is not an SDXL text encoder"
            )
        if not hasattr(_unwrap(text_encoder2), "text_projection"):
            raise TypeError(
                f"SDXL's second text encoder must have a text projection (CLIPTextModelWithProjection), "
                f"got {type(_unwrap(text_encoder2)).__name__}"
            )
        self.text_encoder1 = text_encoder1
        self.text_encoder2 = text_encoder2
        self.max_token_length = max_token_length
        self.tokenizer = tokenizer
        # Batches are tokenized on the loading thread while sampling may tokenize here too.
        self._tokenizing = threading.Lock()

    # The model's names for the two encoders: the trainer hands each prepared (maybe wrapped)
    # encoder back by the name it has on the model.
    @property
    def text_encoder(self):
        return self.text_encoder1

    @text_encoder.setter
    def text_encoder(self, module) -> None:
        self.text_encoder1 = module

    @property
    def text_encoder_2(self):
        return self.text_encoder2

    @text_encoder_2.setter
    def text_encoder_2(self, module) -> None:
        self.text_encoder2 = module

    def tokenize(self, captions: list[str]) -> SdxlTokenBatch:
        with self._tokenizing:
            layouts = tokenize_sdxl(captions, self.max_token_length, self.tokenizer)
        return SdxlTokenBatch(
            ids1=torch.tensor([layout.te1 for layout in layouts], dtype=torch.long),
            ids2=torch.tensor([layout.te2 for layout in layouts], dtype=torch.long),
            token_counts=tuple(layout.text_tokens for layout in layouts),
        )

    def encode(self, tokens: SdxlTokenBatch, device, dtype: torch.dtype | None = None) -> SdxlTextOutputs:
        batch = len(tokens)
        ids1 = tokens.ids1.to(device).reshape(batch * self.chunks, CHUNK_LEN)
        ids2 = tokens.ids2.to(device).reshape(batch * self.chunks, CHUNK_LEN)
        states1 = te1_states(self.text_encoder1, ids1)
        states2, pooled = te2_states_and_pooled(self.text_encoder2, ids2)
        states1 = recombine(states1.reshape(batch, self.chunks * CHUNK_LEN, -1), self.chunks)
        states2 = recombine(states2.reshape(batch, self.chunks * CHUNK_LEN, -1), self.chunks)
        pooled = pooled[:: self.chunks]   # each caption's first chunk
        if dtype is not None:
            states1, states2, pooled = states1.to(dtype), states2.to(dtype), pooled.to(dtype)
        return SdxlTextOutputs(states1=states1, states2=states2, pooled=pooled)

    def __call__(self, captions: list[str], device, dtype: torch.dtype | None = None) -> SdxlTextOutputs:
        return self.encode(self.tokenize(captions), device, dtype)
