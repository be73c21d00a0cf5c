"""Every option of kohya-ss/sd-scripts' ``fine_tune.py`` and where it goes in a run TOML.

One row per option: its kind on kohya's command line (a flag or a value), kohya's default (a
config file written by kohya's ``--output_config`` or its GUI holds every option; one at its
default says nothing and is skipped), and its place in sdft: a dotted run-file key, a dataset
table key (``general.*`` / ``subset.*``, used when no ``--dataset_config`` is given, as kohya
builds its dataset from these options then), a conversion, or a refusal with its reason.
``tests/test_from_kohya.py`` checks this table against the parser in kohya's source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

FLAG, VALUE, LIST = "flag", "value", "list"   # store_true / one value / nargs="*"


@dataclass(frozen=True)
class Opt:
    kind: str
    default: Any = None
    to: str | Callable | None = None      # dotted key, or a function(value, options) -> {key: value}
    refused: str | None = None            # why sdft does not take it
    note: str | None = None               # said in the report next to where it went


def refuse(reason: str, kind: str = VALUE, default: Any = None) -> Opt:
    return Opt(kind, default, refused=reason)


HUB = "uploading to or resuming from the Hugging Face hub is not part of sdft; upload the saved file yourself"
DEEPSPEED = ("sdft has no DeepSpeed path: train on several GPUs with `sdft train RUN.toml --gpus N`, split the "
             "weights and optimizer states across them with memory.sharding = \"full\" (ZeRO-3 alike), or fit one "
             "GPU with memory.fused_backward_pass and bf16 weights (README, Many GPUs)")
LOGS = "sdft's console has no log levels: headless output goes to the terminal, library warnings and tracebacks to sdft.log"
NOT_YET = "not in sdft yet"


def _true(key: str, value: Any = True) -> Callable:
    return lambda _v, _all: {key: value}


def _optimizer_type(value, options) -> dict:
    from engine.kohya.values import optimizer_name

    name = optimizer_name(value)
    return {"optimizer.type": name, **_adafactor_args(options)}


def _optimizer_args(value, options) -> dict:
    from engine.kohya.values import parse_key_values

    return {"optimizer.args": parse_key_values(value, "optimizer_args"), **_adafactor_args(options)}


def _optimizer_entry(options):
    from engine.kohya.values import KohyaValueError, optimizer_name
    from engine.registry.optimizers import find

    try:
        return find(optimizer_name(options.get("optimizer_type") or ""))
    except KohyaValueError:
        return None


def _adafactor_args(options) -> dict:
    """kohya's Adafactor: relative_step on unless given, transformers' defaults for the rest; sdft's
    Adafactor defaults differ, so a converted file says kohya's in full."""
    from engine.kohya.values import parse_key_values

    entry = _optimizer_entry(options)
    if entry is None or entry.name != "Adafactor":
        return {}
    given = parse_key_values(options.get("optimizer_args") or [], "optimizer_args")
    return {"optimizer.args": {"scale_parameter": True, "relative_step": True, "warmup_init": False, **given}}


def _adafactor_relative_step(options) -> bool:
    args = _adafactor_args(options).get("optimizer.args")
    return bool(args and (args["relative_step"] or args["warmup_init"]))


def _sampler(value, _all) -> dict:
    from engine.kohya.values import sampler_name

    return {"sample.sampler": sampler_name(value)}


def _scheduler(value, options) -> dict:
    from engine.kohya.values import KohyaValueError, scheduler_name

    entry = _optimizer_entry(options)
    if entry is not None and entry.schedule_free:
        raise KohyaValueError(f"kohya ignores the schedule with {entry.name}, a schedule-free optimizer (its "
                              "warm-up is optimizer_args warmup_steps)")
    if _adafactor_relative_step(options):
        return {"optimizer.lr_scheduler": "adafactor"}   # kohya switches to it, whatever was asked
    return {"optimizer.lr_scheduler": scheduler_name(value)}


def _prior_loss_weight(value, _all) -> dict:
    from engine.kohya.values import KohyaValueError

    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise KohyaValueError(f"{value!r} is not a number") from None
    if weight != 1.0:
        raise KohyaValueError(f"sdft weighs regularization images' loss like the others (1.0, kohya's default); "
                              f"{value} is not in sdft yet")
    return {}   # 1.0 is what sdft does: nothing to write


def _key_values(key: str) -> Callable:
    from engine.kohya.values import parse_key_values

    return lambda value, _all: {key: parse_key_values(value, key)}


def _resolution(value, _all) -> dict:
    from engine.kohya.values import parse_resolution

    return {"general.resolution": parse_resolution(value)}


def _crop_range(value, _all) -> dict:
    from engine.kohya.values import parse_pair

    return {"general.face_crop_aug_range": parse_pair(value, "face_crop_aug_range")}


OPTIONS: dict[str, Opt] = {
    # logging of kohya's own console
    "console_log_level": refuse(LOGS), "console_log_file": refuse(LOGS), "console_log_simple": refuse(LOGS, FLAG),
    # model
    "v2": Opt(FLAG, to="model.v2"),
    "v_parameterization": Opt(FLAG, to="model.v_parameterization"),
    "pretrained_model_name_or_path": Opt(VALUE, to="model.pretrained_model_name_or_path"),
    "tokenizer_cache_dir": Opt(VALUE, to="model.tokenizer_dir",
                               note="sdft reads the tokenizer from this folder (it does not save one there)"),
    "vae": Opt(VALUE, to="model.vae"),
    "clip_skip": Opt(VALUE, to="model.clip_skip"),
    "max_token_length": Opt(VALUE, to="model.max_token_length"),
    # model card metadata
    "metadata_title": Opt(VALUE, to="save.metadata.title"),
    "metadata_author": Opt(VALUE, to="save.metadata.author"),
    "metadata_description": Opt(VALUE, to="save.metadata.description"),
    "metadata_license": Opt(VALUE, to="save.metadata.license"),
    "metadata_tags": Opt(VALUE, to="save.metadata.tags"),
    "metadata_usage_hint": Opt(VALUE, to="save.metadata.usage_hint"),
    "metadata_trigger_phrase": Opt(VALUE, to="save.metadata.trigger_phrase"),
    "metadata_thumbnail": refuse("sdft does not embed a thumbnail in saved models"),
    "metadata_merged_from": refuse("describes merged models; a fine-tune has one base, recorded as sdft.base_model"),
    "metadata_preprocessor": refuse("describes control-net style models; not used for a fine-tune"),
    "metadata_is_negative_embedding": refuse("describes textual-inversion embeddings; not used for a fine-tune"),
    # the dataset, as kohya builds it from options when there is no --dataset_config
    "train_data_dir": Opt(VALUE, to="subset.image_dir"),
    "in_json": Opt(VALUE, to="subset.metadata_file"),
    "dataset_config": Opt(VALUE, to="dataset_config"),
    "dataset_repeats": Opt(VALUE, 1, to="general.num_repeats"),
    "train_batch_size": Opt(VALUE, 1, to="general.batch_size"),
    "resolution": Opt(VALUE, to=_resolution),
    "enable_bucket": Opt(FLAG, to="general.enable_bucket"),
    "min_bucket_reso": Opt(VALUE, 256, to="general.min_bucket_reso"),
    "max_bucket_reso": Opt(VALUE, 1024, to="general.max_bucket_reso"),
    "bucket_reso_steps": Opt(VALUE, 64, to="general.bucket_reso_steps"),
    "bucket_no_upscale": Opt(FLAG, to="general.bucket_no_upscale"),
    "shuffle_caption": Opt(FLAG, to="general.shuffle_caption"),
    "caption_separator": Opt(VALUE, ",", to="general.caption_separator"),
    "keep_tokens": Opt(VALUE, 0, to="general.keep_tokens"),
    "keep_tokens_separator": Opt(VALUE, "", to="general.keep_tokens_separator"),
    "secondary_separator": Opt(VALUE, to="general.secondary_separator"),
    "enable_wildcard": Opt(FLAG, to="general.enable_wildcard"),
    "caption_prefix": Opt(VALUE, to="general.caption_prefix"),
    "caption_suffix": Opt(VALUE, to="general.caption_suffix"),
    "color_aug": Opt(FLAG, to="general.color_aug"),
    "flip_aug": Opt(FLAG, to="general.flip_aug"),
    "face_crop_aug_range": Opt(VALUE, to=_crop_range),
    "random_crop": Opt(FLAG, to="general.random_crop"),
    "resize_interpolation": Opt(VALUE, to="general.resize_interpolation"),
    "token_warmup_min": Opt(VALUE, 1, to="general.token_warmup_min"),
    "token_warmup_step": Opt(VALUE, 0, to="general.token_warmup_step"),
    "alpha_mask": Opt(FLAG, to="subset.alpha_mask"),
    "caption_dropout_rate": Opt(VALUE, 0.0, to="general.caption_dropout_rate"),
    "caption_dropout_every_n_epochs": Opt(VALUE, 0, to="general.caption_dropout_every_n_epochs"),
    "caption_tag_dropout_rate": Opt(VALUE, 0.0, to="general.caption_tag_dropout_rate"),
    "caption_extension": Opt(VALUE, ".caption", to="data.caption_extension",
                             note="the caption files folder subsets read (unless they set their own), and those "
                                  "sdft prepare / caption / tag use"),
    "caption_extention": Opt(VALUE, to="data.caption_extension", note="kohya's old spelling"),
    "cache_info": refuse("a DreamBooth-method option (kohya's image-size cache for folder datasets); "
                         "the metadata method does not use it", FLAG),
    "dataset_class": refuse("custom dataset classes are not supported; describe the data with [[datasets]] tables"),
    "debug_dataset": refuse("`sdft buckets` and `sdft prepare` show what the dataset holds", FLAG),
    # latents
    "cache_latents": Opt(FLAG, to=_true("cache.latents", "memory")),
    "cache_latents_to_disk": Opt(FLAG, to=_true("cache.latents", "disk")),
    "vae_batch_size": Opt(VALUE, 1, to="cache.vae_batch_size"),
    "skip_cache_check": Opt(FLAG, to=_true("cache.verify", "exists")),
    "no_half_vae": Opt(FLAG, to=_true("memory.vae_dtype", "fp32"), note="fp32 is sdft's default VAE precision"),
    # output and saving
    "output_dir": Opt(VALUE, to="train.output_dir"),
    "output_name": Opt(VALUE, to="train.output_name"),
    "save_precision": Opt(VALUE, to="save.precision"),
    "save_model_as": Opt(VALUE, to="save.format"),
    "use_safetensors": Opt(FLAG, to=_true("save.format", "safetensors")),
    "save_every_n_epochs": Opt(VALUE, to="save.every_n_epochs"),
    "save_every_n_steps": Opt(VALUE, to="save.every_n_steps"),
    "save_n_epoch_ratio": Opt(VALUE, to="save.n_epoch_ratio"),
    "save_last_n_epochs": Opt(VALUE, to="save.last_n_epochs"),
    "save_last_n_steps": Opt(VALUE, to="save.last_n_steps"),
    "save_last_n_epochs_state": Opt(VALUE, to="save.last_n_states", note="sdft keeps the newest N states"),
    "save_last_n_steps_state": Opt(VALUE, to="save.last_n_states", note="sdft keeps the newest N states"),
    "save_state": Opt(FLAG, to="save.state"),
    "save_state_on_train_end": Opt(FLAG, to="save.state_on_train_end"),
    "resume": refuse("a kohya (accelerate) state folder has another layout; train in sdft, then "
                     "`sdft train RUN.toml --resume latest` continues at the exact step"),
    "huggingface_repo_id": refuse(HUB), "huggingface_repo_type": refuse(HUB), "huggingface_path_in_repo": refuse(HUB),
    "huggingface_token": refuse(HUB), "huggingface_repo_visibility": refuse(HUB),
    "save_state_to_huggingface": refuse(HUB, FLAG), "resume_from_huggingface": refuse(HUB, FLAG),
    "async_upload": refuse(HUB, FLAG),
    # length, precision, memory
    "max_train_steps": Opt(VALUE, 1600, to="train.max_train_steps"),
    "max_train_epochs": Opt(VALUE, to="train.max_train_epochs"),
    "seed": Opt(VALUE, to="train.seed"),
    "gradient_accumulation_steps": Opt(VALUE, 1, to="train.gradient_accumulation_steps"),
    "gradient_checkpointing": Opt(FLAG, to="memory.gradient_checkpointing"),
    "mixed_precision": Opt(VALUE, "no", to="memory.mixed_precision"),
    "full_fp16": Opt(FLAG, to="memory.full_fp16"),
    "full_bf16": Opt(FLAG, to="memory.full_bf16"),
    "fp8_base": refuse("fp8 base weights are for LoRA-style training; sdft fine-tunes the weights themselves", FLAG),
    "mem_eff_attn": Opt(FLAG, to=_true("memory.attention", "sdpa"),
                        note="kohya's memory-efficient attention: PyTorch SDPA does the same job"),
    "xformers": Opt(FLAG, to=_true("memory.attention", "xformers")),
    "diffusers_xformers": Opt(FLAG, to=_true("memory.attention", "xformers")),
    "sdpa": Opt(FLAG, to=_true("memory.attention", "sdpa")),
    "torch_compile": Opt(FLAG, to="memory.torch_compile"),
    "dynamo_backend": Opt(VALUE, "inductor", to="memory.dynamo_backend"),
    "lowram": refuse("sdft decides where models live; `sdft plan RUN.toml` shows the memory", FLAG),
    "highvram": refuse("sdft decides where models live; `sdft plan RUN.toml` shows the memory", FLAG),
    "max_data_loader_n_workers": Opt(VALUE, 8, to="data.num_workers",
                                     note="background threads loading the next batches"),
    "persistent_data_loader_workers": refuse("not needed: sdft's loader threads always live for the whole run",
                                             FLAG),
    "ddp_timeout": Opt(VALUE, 0, to="train.ddp_timeout"),   # 0 or unset: the default wait, as in kohya
    "ddp_gradient_as_bucket_view": Opt(FLAG, to="train.ddp_gradient_as_bucket_view"),
    "ddp_static_graph": Opt(FLAG, to="train.ddp_static_graph"),
    "deepspeed": refuse(DEEPSPEED, FLAG), "zero_stage": refuse(DEEPSPEED, VALUE, 2),
    "offload_optimizer_device": refuse(DEEPSPEED), "offload_optimizer_nvme_path": refuse(DEEPSPEED),
    "offload_param_device": refuse(DEEPSPEED), "offload_param_nvme_path": refuse(DEEPSPEED),
    "zero3_init_flag": refuse(DEEPSPEED, FLAG), "zero3_save_16bit_model": refuse(DEEPSPEED, FLAG),
    "fp16_master_weights_and_gradients": refuse(DEEPSPEED, FLAG),
    # trackers
    "logging_dir": Opt(VALUE, to="logging.logging_dir"),
    "log_with": Opt(VALUE, to="logging.log_with"),
    "log_prefix": Opt(VALUE, to="logging.log_prefix"),
    "log_tracker_name": Opt(VALUE, to="logging.log_tracker_name"),
    "wandb_run_name": Opt(VALUE, to="logging.wandb_run_name"),
    "log_tracker_config": refuse(f"{NOT_YET}: tracker settings come from the [logging] keys"),
    "wandb_api_key": refuse("put it in the environment (WANDB_API_KEY); a run file never holds secrets"),
    "log_config": refuse("not needed: sdft always logs the run TOML to the trackers", FLAG),
    # the objective
    "train_text_encoder": Opt(FLAG, to="train.train_text_encoder"),
    "noise_offset": Opt(VALUE, to="train.noise_offset"),
    "noise_offset_random_strength": Opt(FLAG, to="train.noise_offset_random_strength"),
    "adaptive_noise_scale": Opt(VALUE, to="train.adaptive_noise_scale"),
    "multires_noise_iterations": Opt(VALUE, to="train.multires_noise_iterations"),
    "multires_noise_discount": Opt(VALUE, 0.3, to="train.multires_noise_discount"),
    "ip_noise_gamma": Opt(VALUE, to="train.ip_noise_gamma"),
    "ip_noise_gamma_random_strength": Opt(FLAG, to="train.ip_noise_gamma_random_strength"),
    "zero_terminal_snr": Opt(FLAG, to="train.zero_terminal_snr"),
    "min_timestep": Opt(VALUE, to="train.min_timestep"),
    "max_timestep": Opt(VALUE, to="train.max_timestep"),
    "loss_type": Opt(VALUE, "l2", to="train.loss_type"),
    "huber_schedule": Opt(VALUE, "snr", to="train.huber_schedule"),
    "huber_c": Opt(VALUE, 0.1, to="train.huber_c"),
    "huber_scale": Opt(VALUE, 1.0, to="train.huber_scale"),
    "min_snr_gamma": Opt(VALUE, to="train.min_snr_gamma"),
    "scale_v_pred_loss_like_noise_pred": Opt(FLAG, to="train.scale_v_pred_loss_like_noise_pred"),
    "debiased_estimation_loss": Opt(FLAG, to="train.debiased_estimation_loss"),
    "weighted_captions": Opt(FLAG, to="train.weighted_captions"),
    "v_pred_like_loss": refuse("kohya parses it but never applies it in fine_tune"),
    # samples
    "sample_every_n_steps": Opt(VALUE, to="sample.every_n_steps"),
    "sample_every_n_epochs": Opt(VALUE, to="sample.every_n_epochs"),
    "sample_at_first": Opt(FLAG, to="sample.at_first"),
    "sample_prompts": Opt(VALUE, to="sample.prompts"),
    "sample_sampler": Opt(VALUE, "ddim", to=_sampler),
    # the optimizer and its schedule
    "optimizer_type": Opt(VALUE, "", to=_optimizer_type),
    "use_8bit_adam": Opt(FLAG, to=_true("optimizer.type", "AdamW8bit")),
    "use_lion_optimizer": Opt(FLAG, to=_true("optimizer.type", "Lion")),
    "learning_rate": Opt(VALUE, 2e-6, to="optimizer.learning_rate"),
    "learning_rate_te": Opt(VALUE, to="optimizer.learning_rate_te"),
    "max_grad_norm": Opt(VALUE, 1.0, to="optimizer.max_grad_norm"),
    "optimizer_args": Opt(LIST, to=_optimizer_args),
    "lr_scheduler": Opt(VALUE, "constant", to=_scheduler),
    "lr_scheduler_args": Opt(LIST, to=_key_values("optimizer.lr_scheduler_args")),
    "lr_scheduler_type": Opt(VALUE, "", to="optimizer.lr_scheduler_type"),
    "lr_warmup_steps": Opt(VALUE, 0, to="optimizer.lr_warmup_steps"),
    "lr_decay_steps": Opt(VALUE, 0, to="optimizer.lr_decay_steps"),
    "lr_scheduler_num_cycles": Opt(VALUE, 1, to="optimizer.lr_scheduler_num_cycles"),
    "lr_scheduler_power": Opt(VALUE, 1, to="optimizer.lr_scheduler_power"),
    "lr_scheduler_timescale": Opt(VALUE, to="optimizer.lr_scheduler_timescale"),
    "lr_scheduler_min_lr_ratio": Opt(VALUE, to="optimizer.lr_scheduler_min_lr_ratio"),
    "fused_backward_pass": Opt(FLAG, to="memory.fused_backward_pass"),
    # the converter itself
    "config_file": Opt(VALUE, note="read by sdft from-kohya --config-file"),
    "output_config": refuse("writes kohya's own config; `sdft from-kohya` writes the run TOML", FLAG),
}

# Options of kohya's other trainers (train_network.py, sdxl_train.py) that sdft has; a
# fine_tune.py command line never holds them, but a command or config file moved over from
# those scripts does. The test of OPTIONS against fine_tune.py's parser leaves these out.
OTHER_SCRIPTS: dict[str, Opt] = {
    # train_db.py's own (engine/kohya/dreambooth.py reads reg_data_dir and the text encoder's)
    "reg_data_dir": refuse("regularization images are train_db.py's: fine_tune.py has none (convert the "
                           "train_db.py command, or write is_reg = true subsets)"),
    "prior_loss_weight": Opt(VALUE, 1.0, to=_prior_loss_weight,
                             note="1.0, kohya's default: sdft weighs regularization images' loss like the others"),
    "no_token_padding": refuse("kohya's DreamBooth option to leave captions unpadded, as Diffusers' DreamBooth "
                               "script does; sdft pads every caption to its token chunks, as fine_tune.py", FLAG),
    "stop_text_encoder_training": Opt(VALUE, to="train.stop_text_encoder_training"),
    "masked_loss": Opt(FLAG, to="train.masked_loss"),
    "conditioning_data_dir": Opt(VALUE, to="subset.conditioning_data_dir"),
    "validation_split": Opt(VALUE, 0.0, to="general.validation_split"),
    "validation_seed": Opt(VALUE, to="general.validation_seed"),
    "validate_every_n_steps": Opt(VALUE, to="train.validate_every_n_steps"),
    "validate_every_n_epochs": Opt(VALUE, to="train.validate_every_n_epochs"),
    "max_validation_steps": Opt(VALUE, to="train.max_validation_steps"),
}


def _text_encoder_cache(_value, options) -> dict:
    """kohya turns --cache_text_encoder_outputs on with its _to_disk twin; the disk wins."""
    return {"cache.text_encoder_outputs": "disk" if options.get("cache_text_encoder_outputs_to_disk") else "memory"}


def _block_lr(value, _all) -> dict:
    """kohya's 23 comma-separated rates, judged as the run file's key judges them."""
    from engine.config.schema import block_rates
    from engine.kohya.values import KohyaValueError

    try:
        return {"optimizer.block_lr": block_rates(value)}
    except ValueError as exc:
        raise KohyaValueError(str(exc)) from None


def _fused_groups(value, _all) -> dict:
    from engine.kohya.values import KohyaValueError

    try:
        groups = int(value)
    except (TypeError, ValueError):
        raise KohyaValueError(f"{value!r} is not a whole number of optimizer groups") from None
    return {"memory.fused_backward_pass": True} if groups > 0 else {}


# sdxl_train.py's own options (tests/test_from_kohya_sdxl.py checks them against its parser), and
# fine_tune.py options that mean something else there.
SDXL_OWN: dict[str, Opt] = {
    "learning_rate_te1": Opt(VALUE, to="optimizer.learning_rate_te1"),
    "learning_rate_te2": Opt(VALUE, to="optimizer.learning_rate_te2"),
    "block_lr": Opt(VALUE, to=_block_lr, note="kohya's 23 U-Net blocks, in its order"),
    "cache_text_encoder_outputs": Opt(FLAG, to=_text_encoder_cache),
    "cache_text_encoder_outputs_to_disk": Opt(FLAG, to=_true("cache.text_encoder_outputs", "disk"),
                                              note="beside the latent cache, reused by the next run"),
    "fused_optimizer_groups": Opt(VALUE, to=_fused_groups,
                                  note="kohya's optimizer groups stepped inside backward: sdft steps each weight "
                                       "on its own there, the smallest group, with the same updates"),
    "disable_mmap_load_safetensors": Opt(FLAG, to=lambda _v, _all: {},
                                         note="a loading-speed switch of kohya's for WSL; it changes nothing in "
                                              "training, and sdft has no such setting"),
}
SDXL_DIFFERENT: dict[str, Opt] = {
    "v2": refuse("SDXL is not SD 2.x: kohya's sdxl_train.py stops at --v2", FLAG),
    "clip_skip": Opt(VALUE, to=lambda _v, _all: {},
                     note="kohya's sdxl_train.py ignores clip skip (\"clip_skip will be unexpected\"): SDXL reads "
                          "fixed layers of both text encoders"),
    "reg_data_dir": refuse("kohya's sdxl_train.py reads regularization folders with kohya's N_name folders only "
                           "(no --in_json); with a metadata file it has none"),
    "no_half_vae": Opt(FLAG, to=_true("memory.vae_dtype", "fp32"),
                       note="SDXL's VAE overflows in fp16; fp32 is sdft's default VAE precision"),
}
SDXL_KNOWN: dict[str, Opt] = {**{k: v for k, v in OPTIONS.items() if k != "learning_rate_te"},
                              **OTHER_SCRIPTS, **SDXL_OWN, **SDXL_DIFFERENT}
KNOWN: dict[str, Opt] = {**OPTIONS, **OTHER_SCRIPTS, **SDXL_OWN}

# Options whose value is a secret: never written, not even in the converted file's header.
SECRETS = ("huggingface_token", "wandb_api_key")


def is_secret(name: str) -> bool:
    """A token, key or password, by its option name (kohya's two, and any other spelled so)."""
    name = name.lower()
    return name in SECRETS or name.endswith(("_token", "api_key", "apikey", "password", "secret"))
