"""The planner's per-family counts (Family.plan) recounted from the built-in full-size configs,
built on the meta device (no weights, no memory), so the figures cannot drift from the models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _modules(name: str):
    """(U-Net, [text encoders]) of family ``name`` at full size, on the meta device."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if name == "sdxl":
        from engine.families.sdxl.configs import builtin_config

        unet_cfg = builtin_config("unet")
        te_cfgs = [(CLIPTextModel, builtin_config("text_encoder")),
                   (CLIPTextModelWithProjection, builtin_config("text_encoder_2"))]
    else:
        from engine.models.configs import builtin_config as sd_config

        folder = "sd1" if name == "sd1" else "sd2-base"
        unet_cfg = sd_config(folder, "unet")
        te_cfgs = [(CLIPTextModel, sd_config(folder, "text_encoder"))]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        encoders = [cls(CLIPTextConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
                    for cls, cfg in te_cfgs]
    return unet, encoders


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _adafactor_state_bytes(module) -> float:
    """transformers' Adafactor without a first moment (beta1 None, sdft's and kohya's default):
    fp32 row and column second moments for a tensor of two dims or more, a full one otherwise."""
    params = states = 0
    for p in module.parameters():
        params += p.numel()
        states += (p.numel() // p.shape[-1] + p.numel() // p.shape[-2]) if p.dim() >= 2 else p.numel()
    return 4 * states / params


def _shard_unit(module) -> int:
    """The largest set of parameters memory.sharding gathers at once (units_of, smallest first:
    a block's own parameters are what its resnets and attentions leave)."""
    from engine.train.sharding import units_of

    seen, largest = set(), 0
    for unit in units_of(module):
        own = [p for p in unit.parameters() if id(p) not in seen]
        seen.update(id(p) for p in own)
        largest = max(largest, sum(p.numel() for p in own))
    return largest


def _attention_levels(unet) -> list[tuple[int, int, int]]:
    """(latent tokens / this, heads, transformer layers) per level with attention, most score
    memory first (layers x heads x tokens²)."""
    from diffusers.models.attention import BasicTransformerBlock

    levels = len(unet.down_blocks)
    found: dict[int, list] = {}
    placed = ([(i, b) for i, b in enumerate(unet.down_blocks)] + [(levels - 1, unet.mid_block)]
              + [(levels - 1 - j, b) for j, b in enumerate(unet.up_blocks)])
    for level, block in placed:
        for m in block.modules():
            if isinstance(m, BasicTransformerBlock):
                found.setdefault(level, []).append(m.attn1.heads)
    out = []
    for level, heads in found.items():
        assert len(set(heads)) == 1, (level, heads)
        out.append((4 ** level, heads[0], len(heads)))
    return sorted(out, key=lambda a: -a[1] * a[2] / a[0] ** 2)


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl"])
def test_plan_counts_match_the_built_in_full_size_models(name):
    from engine.families import family

    plan = family(name).plan
    unet, encoders = _modules(name)
    assert plan.unet_params == _numel(unet)
    assert plan.text_params == tuple(_numel(te) for te in encoders)
    assert plan.largest_param == max(p.numel() for p in unet.parameters())
    assert plan.largest_text_param == max(p.numel() for te in encoders for p in te.parameters())
    assert plan.adafactor_state_bytes == pytest.approx(_adafactor_state_bytes(unet), abs=1e-4)
    assert plan.shard_unit_params == _shard_unit(unet)
    assert plan.attention_levels == tuple(_attention_levels(unet)[:2])
    assert len(plan.text_activation_per_chunk) == len(plan.text_params)


def test_sdxl_counts_are_the_published_sizes():
    """U-Net 2.567 B; CLIP ViT-L 123 M and OpenCLIP bigG (with its projection) 694.7 M."""
    from engine.families import family

    plan = family("sdxl").plan
    assert plan.unet_params == pytest.approx(2.567e9, rel=1e-3)
    assert plan.text_params[0] == pytest.approx(123.06e6, rel=1e-3)
    assert plan.text_params[1] == pytest.approx(694.7e6, rel=1e-3)
    # no attention at the highest-resolution level: the first level with attention is 2x down
    # (4x fewer tokens) with 10 heads, then 4x down with 20 heads and 10 layers per block
    assert plan.attention_levels == ((4, 10, 10), (16, 20, 60))
