"""The one interface every model family's adapter implements, and the planner's figures it
carries. No torch at import: the planner and the wizard read adapters before any model loads.

The generic code (the Trainer and its components, the sampler, the checkpointer, ``sdft
convert``, the planner) asks the family of the loaded model, ``engine.families.family_of``,
instead of testing which family it is (docs/architecture.md, "Model families").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class PlanCoefficients:
    """The VRAM planner's per-family figures (engine/plan/estimate.py explains each term). The
    counts come from the family's built-in full-size configs, built on the meta device
    (tests/test_plan_coefficients.py recounts them); the activations from fake-tensor runs of
    that U-Net (tests/plan_activations.py, run by hand; docs/sdxl.md, "Memory")."""
    unet_params: float                    # trained U-Net parameters
    text_params: tuple[float, ...]        # each text encoder (SDXL: CLIP ViT-L, then OpenCLIP bigG)
    # Classic ("math") attention keeps its score matrices: the two attention levels that hold the
    # most, each (latent tokens / this many, heads, transformer layers down + mid + up).
    attention_levels: tuple[tuple[int, int, int], tuple[int, int, int]]
    hypernetwork_widths: tuple[int, ...]  # the attention widths a hypernetwork hooks (none: not built)
    # The largest single tensor a fused backward pass steps at a time (SD and SDXL: the first up
    # block's 3x3 conv of 2560 -> 1280 channels), and the text encoders' (a token embedding) when
    # they train.
    largest_param: float
    largest_text_param: float
    # Adafactor factors its second moment over the last two dims, which barely helps 3x3 convs:
    # its bytes per parameter depend on the U-Net's shapes.
    adafactor_state_bytes: float
    # memory.sharding gathers one unit at a time (engine/train/sharding.py units_of): the largest,
    # a resnet or attention of the widest blocks, counted on the built-in configs.
    shard_unit_params: float
    # Activation bytes of one training sample at ``activation_side``² (they grow with the pixels):
    # (precision kind "amp" | "fp32" | "half", gradient checkpointing) -> bytes held at the end of
    # the forward pass; ``activation_tail``: what is still held when every gradient exists.
    activation_side: int
    activations: Mapping[tuple[str, bool], float] = field(hash=False)
    activation_tail: Mapping[bool, float] = field(hash=False)
    # Sampling a preview: the U-Net's forward without gradients, per image at ``activation_side``²
    # in 16 bit (classifier-free guidance runs two).
    sampling_per_image: float
    # Each trained text encoder's activations per sample and 77-token chunk.
    text_activation_per_chunk: tuple[float, ...]

    @property
    def text_total(self) -> float:
        return sum(self.text_params)


def text_encoder_rate(cfg, key: str) -> float:
    """The learning rate ``optimizer.<key>`` sets for a text encoder; unset: optimizer.learning_rate."""
    value = getattr(cfg.optimizer, key)
    return cfg.optimizer.learning_rate if value is None else value


class Family:
    """A model family's answers. Subclasses set the class attributes and implement the methods;
    every method gets the model ``load`` returned (an ``engine.models.load.LoadedModel``)."""

    name: str                 # the registry's id (engine/registry/families.py)
    label: str                # "SD 1.x", for messages
    vae_scale: float          # latents x this have unit spread (the VAE's config may say otherwise)
    plan: PlanCoefficients | None   # None: the planner has no figures for it yet
    # Whether the U-Net takes each image's size and crop numbers (SDXL), which the data pipeline
    # then records per image when it buckets and flips (engine/data/pipeline.py).
    size_conditioning: bool = False
    # The suffixes of kohya's cached-latent files (.npz beside the images) that hold this family's
    # latents (engine/data/kohya_npz.py); None: every era's names, as for SD1/SD2.
    kohya_latents: tuple[str, ...] | None = None
    # The model's text encoders by attribute name, each with the [optimizer] key of its learning
    # rate (unset: optimizer.learning_rate).
    text_encoder_rates: tuple[tuple[str, str], ...] = (("text_encoder", "learning_rate_te"),)
    # kohya's sdxl_train.py: a text encoder whose rate is 0 stays frozen (SD's trains at rate 0).
    frozen_at_zero_rate: bool = False

    @property
    def text_encoder_roles(self) -> tuple[str, ...]:
        return tuple(role for role, _key in self.text_encoder_rates)

    def trained_text_encoders(self, cfg) -> tuple[str, ...]:
        """The text encoders a run trains, by their name on the model: with train.train_text_encoder
        in full mode every one, except (``frozen_at_zero_rate``) one whose rate is 0."""
        if not (cfg.train.train_text_encoder and cfg.train.mode == "full"):
            return ()
        return tuple(role for role, key in self.text_encoder_rates
                     if not (self.frozen_at_zero_rate and text_encoder_rate(cfg, key) == 0))

    def recognises(self, view) -> bool:
        """Whether the source seen as ``view`` (``engine.families.sources.SourceView``: a
        .safetensors header's tensors, a diffusers folder's configs) holds this family."""
        return False

    def native_side(self, v_prediction: bool) -> int:
        """The image side the base model was trained at (sample and bucket defaults)."""
        raise NotImplementedError

    def load(self, source: str, **options) -> Any:
        """The model at ``source`` (single file, diffusers folder or hub id), fp32 on the CPU."""
        raise NotImplementedError

    def prompt_encoder(self, model, *, max_token_length: int, clip_skip: int, weighted: bool,
                       warn: Callable[[str], None] | None = None) -> Any:
        """The object whose ``tokenize`` and ``encode`` turn captions into the U-Net's text states."""
        raise NotImplementedError

    def refusals(self, cfg) -> list[tuple[str, str, str]]:
        """(key, why, hint) for each run-file setting this family cannot honour: ``--check``
        reports them and the Trainer refuses them before it trains (an accepted key does something)."""
        return []

    def unet_block_of(self, model, name: str) -> int:
        """The block of ``optimizer.block_lr`` the U-Net parameter ``name`` belongs to (SDXL: kohya's
        23); families without blocks refuse the key (``refusals``)."""
        raise NotImplementedError(f"{self.label}: optimizer.block_lr is not built")

    def unused_text_modules(self, model, role: str) -> list:
        """Modules of the text encoder ``role`` whose output the U-Net never sees: kept frozen when
        it trains (SDXL's TE1 feeds its penultimate layer). None by default."""
        return []

    def unet_inputs(self, model, batch, text, dtype) -> tuple[Any, dict]:
        """The U-Net's text states and its other keyword arguments besides the noisy latents and
        the timesteps, in ``dtype``, from the prompt encoder's output ``text`` and the batch
        (SDXL: the pooled text and each image's size and crop ids). By default the states alone."""
        return text.to(dtype), {}

    def save(self, path: str | Path, model, *, v_prediction: bool, fmt: str, precision: str,
             trained: Mapping[str, Any] | None = None, metadata: Mapping[str, str] | None = None,
             epoch: int = 0, global_step: int = 0, scheduler_overrides: Mapping | None = None) -> Path:
        """Write ``model`` in ``fmt`` (engine.models.save.FORMATS). ``trained`` holds the parts a
        run trained, by the model's role names ("unet", "text_encoder", ...), unwrapped and maybe
        gathered; every other part comes from ``model``."""
        raise NotImplementedError

    def pipeline_text(self, positive, negative) -> dict:
        """The sampling pipeline's keyword arguments for the prompt encoder's outputs of the
        prompts and their negatives (SD: the states alone)."""
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative}

    def sampling_pipeline(self, model, unet, scheduler) -> Any:
        """diffusers' pipeline around the model's parts and ``unet`` (the trained one)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.label} family adapter>"
