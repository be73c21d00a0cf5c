"""optimizer.block_lr: kohya's 23 SDXL U-Net blocks on diffusers' names, checked against kohya's
own rule (sdxl_train.py get_block_params_to_optimize) applied to the single-file names."""

from __future__ import annotations

import pytest
import torch

from engine.families.sdxl.blocks import BLOCK_COUNT, block_of
from engine.families.sdxl.keys import UNET_PREFIX, unet_key_map


def kohya_block(ldm_name: str) -> int:
    """kohya's get_block_params_to_optimize, on its U-Net's (LDM) parameter names."""
    name = ldm_name.removeprefix(UNET_PREFIX)
    if name.startswith(("time_embed.", "label_emb.")):
        return 0
    if name.startswith("input_blocks."):
        return 1 + int(name.split(".")[1])
    if name.startswith("middle_block."):
        return 10 + int(name.split(".")[1])
    if name.startswith("output_blocks."):
        return 13 + int(name.split(".")[1])
    if name.startswith("out."):
        return 22
    raise ValueError(name)


def full_size_unet_keys() -> list[str]:
    from diffusers import UNet2DConditionModel

    from engine.families.sdxl.configs import builtin_config

    cfg = {k: v for k, v in builtin_config("unet").items() if not k.startswith("_")}
    with torch.device("meta"):
        return list(UNet2DConditionModel(**cfg).state_dict())


def tiny_unet_keys() -> list[str]:
    from sdxl_helpers import tiny_sdxl_parts

    return list(tiny_sdxl_parts(1)["unet"].state_dict())


@pytest.mark.parametrize("keys", [full_size_unet_keys, tiny_unet_keys], ids=["sdxl-base", "tiny"])
def test_every_parameter_is_in_kohyas_block(keys):
    names = keys()
    mapping = unet_key_map(names)
    blocks = {name: block_of(name) for name in names}
    assert all(blocks[name] == kohya_block(mapping[name]) for name in names)
    assert sorted(set(blocks.values())) == list(range(BLOCK_COUNT))   # every block holds parameters


def test_schema_takes_a_list_or_kohyas_string():
    from engine.config.schema import block_rates

    rates = ",".join(["1e-6"] * 22 + ["0"])
    assert block_rates(rates) == [1e-6] * 22 + [0.0]
    assert block_rates([1] * 23) == [1.0] * 23
    with pytest.raises(ValueError, match="must have 23 learning rates"):
        block_rates([1e-6] * 22)
    with pytest.raises(ValueError, match="separated by commas"):
        block_rates("1e-6;2e-6")


def test_blocks_train_at_their_rates_and_a_zero_block_stays_frozen(tmp_path, tiny_sdxl_folder):
    from test_sdxl_train import load, sdxl_run

    from engine.events import ListSink, StepMetrics
    from engine.runner import run_training

    model = tiny_sdxl_folder(1)   # shared per worker: the run only reads it
    rates = [0.0] + [1e-4] * 9 + [2e-4] * 3 + [1e-4] * 9 + [0.0]   # embeddings and out frozen
    run = sdxl_run(tmp_path, model, steps=2, optimizer_extra=f"block_lr = {rates}",
                   save_extra='precision = "float"')
    sink = ListSink()
    result = run_training(run, sink=sink)
    assert result.status == "completed"
    lrs = sink.of(StepMetrics)[0].lrs
    assert sorted(lrs) == sorted(f"block{i}" for i in range(1, 22))
    assert lrs["block10"] == 2e-4 and lrs["block1"] == 1e-4
    before, after = load(model).unet.state_dict(), load(result.model_path).unet.state_dict()
    for name in before:
        unchanged = torch.equal(before[name], after[name].float())
        assert unchanged == (block_of(name) in (0, 22)), name
