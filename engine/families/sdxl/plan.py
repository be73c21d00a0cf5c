"""SDXL's figures for the VRAM planner (engine/plan/estimate.py; docs/sdxl.md, "Memory").

Counted on SDXL base 1.0's built-in configs (configs/), built on the meta device; the test
tests/test_plan_coefficients.py recounts every count, so they cannot drift from the model.

The activations were measured as SD's were: the full-size U-Net run on fake tensors (no memory,
no weights) at 1024², batch 1, bf16, PyTorch's SDPA kernel, with a dispatch mode that adds up every
storage an operation creates and subtracts it when freed (tests/plan_activations.py, run by hand;
on SD 1.5 at 512² the same script gives SD's figures: 0.936 GB at the end of the forward pass,
0.24 GB peak with checkpointing, 0.07 GB per sampled image). SDXL at 1024²:

* without checkpointing, 6.89 GB held at the end of the forward pass (SD 1.5 at 512²: 0.94): four
  times the pixels, and 70 transformer layers where SD has 16, 60 of them at 32² latents;
* with checkpointing, a peak of 0.724 GB: the checkpointed blocks' inputs, then one block's
  activations recomputed in backward (SDXL's largest is a 10-layer transformer at 32²);
* with every gradient kept, 0.27 GB more than the gradients (SD 1.5: 0.11) with checkpointing;
* sampling, the U-Net's forward without gradients: 0.165 GB per image.

AMP and fp32 keep more of the activations in 4 bytes; their figures are the bf16 ones times SD's
measured ratios (AMP 1.33 without checkpointing, 1.31 with; fp32 2.0 and 2.14).
"""

from __future__ import annotations

from engine.families.base import PlanCoefficients

_HALF, _HALF_GC = 6.89e9, 0.724e9
# the estimate adds 0.1 GB for bf16 with checkpointing (the recomputed block's weight casts, SD's
# figure); the measured peak is the sum
_GC_CAST = 0.1e9
# what is still held when every gradient exists: SD's figures (0.50 / 0.18 GB per 512² sample)
# times SDXL's measured ratio with checkpointing (0.27 / 0.11 GB); without checkpointing the peak
# is at the end of the forward pass, so the same ratio stands in for it
_TAIL_RATIO = 0.27 / 0.109

SDXL_PLAN = PlanCoefficients(
    unet_params=2_567_463_684,
    text_params=(123_060_480, 694_659_840),            # CLIP ViT-L; OpenCLIP bigG with its projection
    # no attention at the 128² latent level; 2 layers of 10 heads at 64² (4 down, 6 up), 10 layers of
    # 20 heads at 32² (20 down, 10 mid, 30 up)
    attention_levels=((4, 10, 10), (16, 20, 60)),
    hypernetwork_widths=(),                            # hypernetworks are not built for SDXL
    largest_param=29_491_200,                          # up_blocks.0.resnets.0.conv1: 3x3, 2560 -> 1280
    largest_text_param=63_242_240,                     # bigG's token embedding, 49408 x 1280
    adafactor_state_bytes=0.3807,                      # mostly Linear layers: factored to almost nothing
    shard_unit_params=350_840_320,                     # a 10-layer transformer at 32²
    activation_side=1024,
    activations={("half", False): _HALF, ("half", True): _HALF_GC - _GC_CAST,
                 ("amp", False): _HALF * 1.245 / 0.936, ("amp", True): (_HALF_GC - _GC_CAST) * 0.184 / 0.14,
                 ("fp32", False): _HALF * 1.871 / 0.936, ("fp32", True): (_HALF_GC - _GC_CAST) * 0.30 / 0.14},
    activation_tail={False: 0.50e9 * _TAIL_RATIO, True: 0.18e9 * _TAIL_RATIO},
    sampling_per_image=0.165e9,
    # SD's 0.03 GB per chunk for CLIP ViT-L; bigG scaled by width x layers (1280 x 32 / 768 x 12)
    text_activation_per_chunk=(0.03e9, 0.03e9 * 1280 * 32 / (768 * 12)),
)
