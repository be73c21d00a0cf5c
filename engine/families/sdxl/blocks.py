"""kohya's 23 U-Net blocks of SDXL for ``optimizer.block_lr`` (one learning rate each), on
diffusers' parameter names.

kohya's ``sdxl_train.py`` (``get_block_params_to_optimize``) numbers the parameters of its
LDM-layout U-Net: 0 the time and label embeddings; 1-9 ``input_blocks.0-8`` (conv_in, then
each level's layers and downsampler); 10-12 ``middle_block.0-2`` (resnet, attention, resnet);
13-21 ``output_blocks.0-8`` (each level's three layers, the upsampler with the last); 22
``out`` (the final norm and conv). diffusers names the same tensors differently
(``engine/models/convert.py`` maps them for single files); this module gives each diffusers
name kohya's block number. No torch.
"""

from __future__ import annotations

from engine.config.schema import BLOCK_LR_COUNT as BLOCK_COUNT  # noqa: F401 - kohya's UNET_NUM_BLOCKS_FOR_BLOCK_LR


def block_of(name: str, layers_per_block: int = 2) -> int:
    """kohya's block number of the diffusers U-Net parameter ``name``."""
    parts = name.split(".")
    head = parts[0]
    if head in ("time_embedding", "add_embedding"):          # LDM time_embed, label_emb
        return 0
    if head == "conv_in":                                     # input_blocks.0
        return 1
    if head == "down_blocks":                                 # input_blocks.1-8
        level, kind = int(parts[1]), parts[2]
        index = layers_per_block if kind == "downsamplers" else int(parts[3])
        return 1 + 1 + level * (layers_per_block + 1) + index
    if head == "mid_block":                                   # middle_block.0-2
        kind, index = parts[1], int(parts[2])
        return 10 + (1 if kind == "attentions" else 2 * index)
    if head == "up_blocks":                                   # output_blocks.0-8
        level, kind = int(parts[1]), parts[2]
        index = layers_per_block if kind == "upsamplers" else int(parts[3])
        return 13 + level * (layers_per_block + 1) + index
    if head in ("conv_norm_out", "conv_out"):                 # out.0, out.2
        return 22
    raise ValueError(f"U-Net parameter {name!r} is in none of kohya's 23 SDXL blocks")
