"""The kohya_ss GUI's own JSON keys: what each is to the GUI, and so to ``sdft from-kohya``.

A GUI config (bmaltais/kohya_ss, its presets and the ``<output_name>_<time>.json`` it saves)
holds every field of a training tab. Most are kohya script options under their own names
(engine/kohya/options.py); the rest are the GUI's: read here as the GUI reads them before it
launches kohya (engine/kohya/gui.py), or dropped with what they are to the GUI. A key in none of
these tables is refused as unknown.
"""

from __future__ import annotations

# The GUI's name for a kohya option.
RENAMED = {"optimizer": "optimizer_type", "max_resolution": "resolution"}

# An SDXL config's own names for sdxl_train.py's options (kohya_gui's SDXL parameters).
SDXL_RENAMED = {"sdxl_cache_text_encoder_outputs": "cache_text_encoder_outputs", "sdxl_no_half_vae": "no_half_vae"}
# Fields the GUI passes only to SD 1.x/2.x scripts: an SDXL config keeps them, unused.
NOT_FOR_SDXL = {"learning_rate_te": "the GUI passes it to SD 1.x/2.x scripts only; SDXL's are learning_rate_te1 "
                                    "and learning_rate_te2"}

# Which tab wrote the file: the fine-tune tab's data fields (else the DreamBooth tab's).
FINE_TUNE_KEYS = ("train_dir", "image_folder", "caption_metadata_filename", "latent_metadata_filename",
                  "use_latent_files", "create_caption", "generate_caption_database", "create_buckets",
                  "generate_image_buckets", "full_path")
# ... a LoRA tab or a textual-inversion tab: their scripts are refused as a whole.
LORA_KEYS = ("LoRA_type", "network_dim", "network_alpha", "network_module")
EMBEDDING_KEYS = ("token_string", "init_word", "num_vectors_per_token")
# The model-family check boxes, and the script each picks in the fine-tune / DreamBooth tabs.
FAMILY_SWITCHES = {"sdxl": "sdxl_train.py", "sdxl_checkbox": "sdxl_train.py", "sd3_checkbox": "sd3_train.py",
                   "flux1_checkbox": "flux_train.py", "anima_checkbox": "anima_train.py",
                   "lumina_checkbox": "lumina_train.py"}

# Settings the GUI passes only for another model family (SDXL, SD3, FLUX.1, Anima, Lumina), or to
# a script option fine_tune.py and train_db.py do not have: dropped, whatever their value.
FAMILY_PREFIXES = ("sdxl_", "sd3_", "flux1_", "flux_", "anima_", "lumina_", "t5xxl")
FAMILY_KEYS = ("ae", "apply_t5_attn_mask", "block_lr", "blocks_to_swap", "blockwise_fused_optimizers", "clip_g",
               "clip_l", "cpu_offload_checkpointing", "discrete_flow_shift", "disable_mmap_load_safetensors",
               "double_blocks_to_swap", "fused_optimizer_groups", "guidance_scale", "learning_rate_te1",
               "learning_rate_te2", "logit_mean", "logit_std", "mem_eff_save", "mode_scale", "model_prediction_type",
               "save_clip", "save_t5xxl", "show_timesteps", "show_timesteps_resolution", "single_blocks_to_swap",
               "split_mode", "timestep_sampling", "train_blocks", "weighting_scheme")
FAMILY_NOTE = "a setting for SDXL, SD3, FLUX.1 or another family's script, which this config does not run"

# accelerate launch's settings (the GUI's "Accelerate launch" panel), read in gui.py or noted.
LAUNCH_NOTES = {
    "num_cpu_threads_per_process": "accelerate's CPU threads per process; sdft sets its threads itself",
    "num_machines": "accelerate's machine count; for several machines see README, Many GPUs",
    "main_process_port": "accelerate's port for several machines; see README, Many GPUs",
    "gpu_ids": "which GPUs accelerate uses: set CUDA_VISIBLE_DEVICES for sdft",
    "extra_accelerate_launch_args": "more accelerate launch options; sdft train --gpus N starts accelerate itself",
}
# torch.compile settings beyond the backend, at the GUI's defaults (others are refused).
COMPILE_DEFAULTS = {"dynamo_mode": "default", "dynamo_use_fullgraph": False, "dynamo_use_dynamic": False}

# The GUI's own fields: what they are to the GUI (dropped from the run file, said in the table).
GUI_ONLY = {
    "model_list": "the GUI's model drop-down (pretrained_model_name_or_path names the model)",
    "save_as_bool": "the GUI's save-format switch (save_model_as says the format)",
    "file_path": "where the GUI saved this config",
    "noise_offset_type": "which noise fields the GUI shows (noise_offset and multires_noise_iterations say "
                         "what trains)",
    "create_buckets": "the GUI's bucketing and latent pre-encoding step (prepare_buckets_latents.py): sdft "
                      "buckets the images and caches their latents itself",
    "generate_image_buckets": "the GUI's bucketing and latent pre-encoding step (prepare_buckets_latents.py): "
                              "sdft buckets the images and caches their latents itself",
    "full_path": "how the GUI's metadata scripts write the image keys; sdft reads either",
    "batch_size": "the batch size of the GUI's latent pre-encoding step (sdft's is cache.vae_batch_size)",
    "use_wandb": "the GUI's old W&B switch (read as log_with = \"wandb\" when on)",
}

# Switches for what sdft does not have: left out when off, refused when on.
OFF_ONLY = {"train_inpainting": "inpainting training (kohya's --train_inpainting, random masks per step) is not in "
                                "sdft"}

# In a GUI file, 0 for these means "not set": the GUI leaves them out of kohya's options then.
ZERO_IS_UNSET = ("max_train_steps", "vae_batch_size", "max_timestep", "multires_noise_iterations", "clip_skip",
                 "stop_text_encoder_training")


# ... but for these 0 is a value the GUI passes on: kohya's sdxl_train.py keeps that text encoder frozen.
ZERO_IS_A_RATE = ("learning_rate_te1", "learning_rate_te2")


def is_family_key(key: str) -> bool:
    return key in FAMILY_KEYS or key.startswith(FAMILY_PREFIXES)
