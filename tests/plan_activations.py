"""Measure a U-Net's training activations for the VRAM planner, on fake tensors (run by hand).

    python tests/plan_activations.py sd1      # SD 1.5 at 512²: reproduces SD's planner figures
    python tests/plan_activations.py sdxl     # SDXL base 1.0 at 1024² (engine/families/sdxl/plan.py)

The family's built-in full-size U-Net is built under PyTorch's FakeTensorMode (shapes only: no
memory, no weights, seconds on a CPU), in bf16 with SDPA attention, batch 1. A dispatch mode adds
up the bytes of every storage an operation creates (views and in-place results make none) and
subtracts them when the storage is freed, keeping the peak. Printed, in GB beyond the weights:

* ``forward end``: what the forward pass holds when the loss is computed (no checkpointing);
* ``checkpointing peak``: the peak of forward and backward with gradient checkpointing, each
  gradient dropped once accumulated (the fused backward pass);
* ``tail with gradients``: with checkpointing and every gradient kept, the peak less the gradients;
* ``sampling``: the forward pass without gradients, per image (batch 2: classifier-free guidance).

Not a test (pytest collects only test_*.py): it takes a minute for SDXL and is run when the
planner's figures are revisited (docs/sdxl.md, "Memory").
"""

from __future__ import annotations

import sys
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

FAMILIES = {"sd1": 512, "sdxl": 1024}


class LiveBytes(TorchDispatchMode):
    """The bytes of the storages operations created that are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out   # a view or an in-place result shares an input's storage
        inputs = {id(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in inputs:
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key not in self.sizes:
                self.sizes[key] = storage.nbytes()
                self.live += self.sizes[key]
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key)
        return out


def _unet_config(name: str) -> dict:
    if name == "sdxl":
        from engine.families.sdxl.configs import builtin_config

        return builtin_config("unet")
    from engine.models.configs import builtin_config as sd_config

    return sd_config(name, "unet")


def measure(name: str, *, checkpointing: bool, keep_grads: bool, sampling: bool = False) -> tuple[float, float]:
    """(peak, held at the end of the forward pass) in bytes beyond the weights."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    cfg, side = _unet_config(name), FAMILIES[name]
    batch = 2 if sampling else 1
    with FakeTensorMode(allow_non_fake_inputs=True):
        torch.set_default_dtype(torch.bfloat16)
        try:
            unet = UNet2DConditionModel.from_config(cfg)
        finally:
            torch.set_default_dtype(torch.float32)
        unet.set_attn_processor(AttnProcessor2_0())
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train(not sampling)
        if not keep_grads:
            for p in unet.parameters():
                p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
        latents = torch.randn(batch, 4, side // 8, side // 8, dtype=torch.bfloat16)
        states = torch.randn(batch, 77, cfg["cross_attention_dim"], dtype=torch.bfloat16)
        extra = {}
        if cfg.get("addition_embed_type") == "text_time":
            pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
            extra["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, dtype=torch.bfloat16),
                                          "time_ids": torch.randn(batch, 6)}
        timesteps = torch.full((batch,), 500)
        tracker = LiveBytes()
        with tracker:
            if sampling:
                with torch.no_grad():
                    del unet(latents, timesteps, states, **extra).sample
                return tracker.peak, 0.0
            out = unet(latents, timesteps, states, **extra).sample
            held = tracker.live
            loss = out.float().pow(2).mean()
            del out
            loss.backward()
        return tracker.peak, held


def main(name: str) -> None:
    from engine.families import family

    params = family(name).plan.unet_params
    _, forward_end = measure(name, checkpointing=False, keep_grads=False)
    gc_peak, _ = measure(name, checkpointing=True, keep_grads=False)
    kept_peak, _ = measure(name, checkpointing=True, keep_grads=True)
    sampled, _ = measure(name, checkpointing=False, keep_grads=False, sampling=True)
    side = FAMILIES[name]
    print(f"{name} at {side}², batch 1, bf16, SDPA (GB beyond the weights)")
    print(f"  forward end           {forward_end / 1e9:.3f}")
    print(f"  checkpointing peak    {gc_peak / 1e9:.3f}")
    print(f"  tail with gradients   {(kept_peak - 2 * params) / 1e9:.3f}")
    print(f"  sampling, per image   {sampled / 2 / 1e9:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sdxl")
