"""The run TOML's schema: one typed, documented dataclass per table.

Key names follow kohya's ``fine_tune.py`` options so a kohya user can map one
to the other. Each field's ``doc`` is shown by ``--check``, the wizard and the README. This
module is pure Python (no torch) so the wizard can import it instantly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from engine.config.dataset_specs import DatasetBlueprint
from engine.config.fields import opt
from engine.config.key_values import table_or_list
from engine.registry import optimizers, schedulers
from engine.registry.samplers import ACCEPTED_NAMES as SAMPLER_CHOICES
from engine.registry.samplers import DEFAULT_SAMPLER

if TYPE_CHECKING:
    from pathlib import Path


def plain_file_name(value: Any) -> Any:
    """``train.output_name`` names one folder inside output_dir and the model files in it, so it
    is a plain file name: a path there would put the run (and its model) somewhere else."""
    if not isinstance(value, str):
        return value   # the type check names it
    if value.strip() in ("", ".", ".."):
        raise ValueError(f"must be a file name, got {value!r}: it names the run folder inside output_dir and "
                         "the saved models")
    if any(sep in value for sep in ("/", "\\", "\0")):
        raise ValueError(f"must be a plain file name without / or \\, got {value!r}: put folders in "
                         "train.output_dir, so the run stays where output_dir says")
    return value


BLOCK_LR_COUNT = 23   # kohya's UNET_NUM_BLOCKS_FOR_BLOCK_LR: SDXL's U-Net in 23 blocks


def block_rates(value: Any) -> Any:
    """``optimizer.block_lr``: 23 rates as a list, or kohya's comma-separated string."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            raise ValueError(f"must be {BLOCK_LR_COUNT} numbers separated by commas, got {value!r}") from None
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return value   # the type check names it
    if len(value) != BLOCK_LR_COUNT:
        raise ValueError(f"must have {BLOCK_LR_COUNT} learning rates (kohya's SDXL blocks: the embeddings, 9 "
                         f"input blocks, 3 middle, 9 output, the output layer), got {len(value)}")
    if any(v < 0 for v in value):
        raise ValueError("learning rates cannot be negative")
    return [float(v) for v in value]


CONFIG_VERSION = 1


AUTO = "auto"


@dataclass
class ModelConfig:
    """[model]: the base model and how prompts reach it."""

    pretrained_model_name_or_path: str = opt("", "Base model: a .safetensors/.ckpt file, a diffusers folder, or a hub id.")
    vae: str | None = opt(None, "Optional VAE to use instead of the model's (file, folder or hub id).")
    v2: bool | str = opt(AUTO, 'SD 2.x model? "auto" detects it from the weights.')
    v_parameterization: bool | str = opt(AUTO, 'v-prediction (SD 2.x 768-v)? "auto" reads the model metadata, then the scheduler config, else tests the U-Net.')
    clip_skip: int = opt(1, "Which CLIP layer feeds the U-Net: 1 = last (SD default), 2 = second-to-last (NovelAI).", min=1, max=12)
    max_token_length: int = opt(75, "Caption length in tokens: 75, 150 or 225 (split in 75-token chunks).", choices=(75, 150, 225))
    tokenizer_dir: str | None = opt(None, "Use this tokenizer folder instead of the model's or the built-in one.")
    use_ema_weights: bool = opt(False, "Train from the checkpoint's EMA weights when it has them.")
    allow_unsafe_pickle: bool = opt(False, "Allow .ckpt files that need full unpickling (runs code from the file!).")


@dataclass
class TrainConfig:
    """[train]: length, output and the objective."""

    mode: str = opt("full", '"full" fine-tunes the U-Net (and text encoder); "hypernetwork" trains only a hypernetwork.', choices=("full", "hypernetwork"))
    output_dir: str = opt("runs", "Folder that holds run folders; the run goes to <output_dir>/<output_name>/.")
    output_name: str = opt("sdft-run", "Name of the run folder and of the saved model files.",
                           normalize=plain_file_name)
    max_train_steps: int = opt(1600, "Optimizer steps to train for (ignored when max_train_epochs is set).", min=1)
    max_train_epochs: int | None = opt(None, "Epochs to train for; wins over max_train_steps.", min=1)
    seed: int | None = opt(None, "Random seed; unset = a random one, written into the run's config.toml.", min=0)
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.", min=1)
    ddp_timeout: int | None = opt(None, "Several processes: minutes one waits for the others (caching shares, a "
                                  "preview on the main process) before the run fails; kohya's --ddp_timeout "
                                  "(default 60).", min=1)
    ddp_gradient_as_bucket_view: bool = opt(True, "Several processes: gradients live in the averaging buffers "
                                            "instead of beside them (kohya's --ddp_gradient_as_bucket_view; "
                                            "3.4 GB less per GPU for SD 1.5).")
    ddp_static_graph: bool = opt(False, "Several processes: tell DDP the model's graph never changes (kohya's "
                                 "--ddp_static_graph; faster averaging, not with a text encoder that stops "
                                 "training mid-run).")
    train_text_encoder: bool = opt(False, "Also train the text encoder (own learning rate: optimizer.learning_rate_te).")
    stop_text_encoder_training: int | None = opt(None, "Freeze the text encoder again after this many steps.", min=1)
    noise_offset: float = opt(0.0, "Noise offset (helps very dark/bright images); 0.05-0.1 is typical.", min=0.0)
    noise_offset_random_strength: bool = opt(False, "Scale the noise offset by U(0,1) each batch.")
    adaptive_noise_scale: float | None = opt(None, "Add this times |mean latent| to the noise offset.")
    multires_noise_iterations: int = opt(0, "Multi-resolution (pyramid) noise iterations; 0 = off.", min=0)
    multires_noise_discount: float = opt(0.3, "Strength discount per multires iteration.", min=0.0, max=1.0)
    ip_noise_gamma: float = opt(0.0, "Input perturbation noise strength; 0 = off.", min=0.0)
    ip_noise_gamma_random_strength: bool = opt(False, "Scale ip_noise_gamma by U(0,1).")
    zero_terminal_snr: bool = opt(False, "Rescale the schedule to zero terminal SNR (use with v-prediction).")
    min_timestep: int = opt(0, "Lowest timestep sampled.", min=0, max=999)
    max_timestep: int = opt(1000, "Timesteps are sampled below this (exclusive).", min=1, max=1000)
    loss_type: str = opt("l2", "Loss: l2 (MSE), l1, huber or smooth_l1.", choices=("l2", "l1", "huber", "smooth_l1"))
    huber_schedule: str = opt("snr", "How the Huber c varies with the timestep.", choices=("constant", "exponential", "snr"))
    huber_c: float = opt(0.1, "Huber loss parameter.", min=0.0)
    huber_scale: float = opt(1.0, "Huber loss scale.", min=0.0)
    min_snr_gamma: float = opt(0.0, "Min-SNR weighting gamma (5 is common); 0 = off.", min=0.0)
    scale_v_pred_loss_like_noise_pred: bool = opt(False, "v-prediction only: weight the loss like epsilon prediction.")
    debiased_estimation_loss: bool = opt(False, "Debiased estimation loss weighting.")
    weighted_captions: bool = opt(False, "Read (word:1.2) / [word] emphasis in captions (AUTOMATIC1111 syntax).")
    masked_loss: bool = opt(False, "Weight the loss per latent pixel by a mask: a subset's alpha channel "
                            "(alpha_mask) or its mask folder (conditioning_data_dir), as kohya's --masked_loss.")
    validate_every_n_steps: int | None = opt(None, "Validation loss every N steps, on the held-out images "
                                             "(a dataset's validation_split or an is_val subset).", min=1)
    validate_every_n_epochs: int | None = opt(None, "Validation loss at the end of every N-th epoch (unset: "
                                              "every epoch, as kohya).", min=1)
    max_validation_steps: int | None = opt(None, "Validation batches evaluated each time (default: all).", min=1)
    ema: bool = opt(False, "Keep an exponential moving average of the trained weights.")
    ema_decay: float = opt(0.9999, "EMA decay per update, reached after a warm-up (diffusers' schedule: 1 - (1 + n) ** -2/3 after n updates).", min=0.0, max=1.0)
    ema_update_every: int = opt(1, "Update the EMA every N optimizer steps.", min=1)
    ema_cpu_offload: bool = opt(False, "Keep the EMA weights in CPU memory (saves VRAM).")
    resume: str | None = opt(None, 'Resume from a state folder, or "latest".')


@dataclass
class OptimizerConfig:
    """[optimizer]: optimizer, learning rate and its schedule."""

    type: str = opt(optimizers.DEFAULT, "Optimizer: kohya's --optimizer_type names in any case (AdamW, AdamW8bit, "
                    "Lion, Prodigy, DAdaptAdam, Adafactor, AdamWScheduleFree, ...), or module.Class for any other.",
                    choices=optimizers.NAMES, normalize=optimizers.canonical)
    learning_rate: float = opt(2e-6, "U-Net learning rate.", min=0.0)
    learning_rate_te: float | None = opt(None, "Text encoder learning rate (unset = learning_rate).", min=0.0)
    learning_rate_te1: float | None = opt(None, "SDXL: the first text encoder's (CLIP ViT-L) learning rate with "
                                          "train.train_text_encoder (unset = learning_rate; 0 keeps it frozen), "
                                          "as kohya's sdxl_train.py --learning_rate_te1.", min=0.0)
    learning_rate_te2: float | None = opt(None, "SDXL: the second text encoder's (OpenCLIP bigG) learning rate "
                                          "with train.train_text_encoder (unset = learning_rate; 0 keeps it "
                                          "frozen), as kohya's --learning_rate_te2.", min=0.0)
    block_lr: list[float] | None = opt(None, "SDXL: 23 U-Net learning rates, one per block of kohya's sdxl_train.py "
                                       "--block_lr (embeddings, input blocks 0-8, middle 0-2, output 0-8, out), "
                                       "instead of learning_rate; 0 keeps a block frozen. A list, or kohya's "
                                       "comma-separated string.", normalize=block_rates)
    args: dict[str, Any] = opt(None, 'Extra optimizer keyword arguments: a table, e.g. { weight_decay = 0.01 }, or kohya\'s '
                     'list ["weight_decay=0.01", "betas=0.9,0.999"].', factory=dict,
                     normalize=table_or_list("optimizer.args"))
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this; 0 = off.", min=0.0)
    scale_lr: str = opt("none", "Scale the learning rates with the global batch (batch size x processes x "
                        "accumulation): linear multiplies by it, sqrt by its square root, as diffusers' "
                        "--scale_lr and OneTrainer do; none (kohya's way) keeps them as written.",
                        choices=("none", "linear", "sqrt"))
    lr_scheduler: str = opt(schedulers.DEFAULT, "Learning-rate schedule (adafactor: only with Adafactor's "
                            "relative_step).", choices=schedulers.NAMES)
    lr_warmup_steps: int | float = opt(0, "Warm-up steps, or a fraction (< 1) of the total steps.", min=0)
    lr_scheduler_num_cycles: int = opt(1, "Restarts for cosine_with_restarts.", min=1)
    lr_scheduler_power: float = opt(1.0, "Power for the polynomial schedule.", min=0.0)
    lr_decay_steps: int | float = opt(0, "Decay steps of warmup_stable_decay, or a fraction (< 1) of the total.", min=0)
    lr_scheduler_min_lr_ratio: float | None = opt(None, "cosine_with_min_lr / warmup_stable_decay: the lowest "
                                                  "learning rate as a fraction of learning_rate.", min=0.0, max=1.0)
    lr_scheduler_timescale: int | None = opt(None, "inverse_sqrt: the decay timescale in steps (default: the "
                                             "warm-up steps, or 10,000).", min=1)
    lr_scheduler_args: dict[str, Any] = opt(None, "Extra scheduler keyword arguments (a table, or kohya's key=value list).",
                                  factory=dict, normalize=table_or_list("optimizer.lr_scheduler_args"))
    lr_scheduler_type: str | None = opt(None, "A schedule class instead of lr_scheduler: a torch.optim.lr_scheduler "
                                        "name (e.g. OneCycleLR) or module.Class, built with lr_scheduler_args.")


@dataclass
class MemoryConfig:
    """[memory]: precision, attention kernel and other memory/speed trade-offs."""

    mixed_precision: str = opt("no", "no, fp16 or bf16 (fp16/bf16 need a GPU; on a CPU fp16 becomes bf16).", choices=("no", "fp16", "bf16"))
    full_fp16: bool = opt(False, "Keep the trained weights in fp16 too (less memory, less stable).")
    full_bf16: bool = opt(False, "Keep the trained weights in bf16 too (less memory); written back with "
                          "stochastic rounding so fine-tune updates are not lost (stochastic_rounding).")
    stochastic_rounding: bool = opt(True, "bf16 weights (full_bf16) take each update rounded up or down at random "
                                    "in proportion, so updates far below a bf16 step add up; off rounds to "
                                    "nearest, which drops most updates at fine-tune learning rates.")
    sharding: str = opt("none", "Several GPUs: split the trained weights, their gradients and the optimizer "
                        "states across the GPUs (PyTorch FSDP): full keeps only each GPU's share between layers too "
                        "(least memory), grad_op keeps a block's weights gathered from forward to backward (faster).",
                        choices=("none", "full", "grad_op"))
    fused_backward_pass: bool = opt(False, "Step each weight inside the backward pass as soon as its gradient "
                                    "is ready (kohya's --fused_backward_pass): the model's gradients never "
                                    "all exist at once (1.7 GB less for SD1.5 in bf16). Clips each weight's "
                                    "gradient on its own; one process, no gradient accumulation, not fp16.")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass: much less memory, ~20% slower.")
    attention: str = opt("sdpa", "Attention kernel: sdpa (PyTorch), xformers, or math (reference).", choices=("sdpa", "xformers", "math"))
    vae_dtype: str = opt("fp32", "Precision of VAE encodes (fp32 avoids NaN latents).", choices=("fp32", "fp16", "bf16"))
    device: str = opt("auto", 'Where to train: "auto" (CUDA when present), "cuda" or "cpu".', choices=("auto", "cuda", "cpu"))
    allow_tf32: bool = opt(True, "Use TF32 matrix maths on Ampere and newer GPUs.")
    cudnn_benchmark: bool = opt(True, "On CUDA, let cuDNN time its convolution kernels once per image shape and "
                                "keep the fastest (the first step of each bucket is slower).")
    channels_last: bool = opt(False, "Keep the U-Net's tensors channels-last (NHWC): faster convolutions on "
                              "recent GPUs in fp16/bf16; the same losses within float rounding.")
    torch_compile: bool = opt(False, "Compile the U-Net with torch.compile (kohya's --torch_compile): a slower "
                              "start (a minute or more), then faster steps; the same losses within rounding.")
    dynamo_backend: str = opt("inductor", "The torch.compile backend (kohya's --dynamo_backend): inductor, "
                              "cudagraphs, aot_eager, eager, or any name torch._dynamo.list_backends() gives.")


@dataclass
class CacheConfig:
    """[cache]: VAE latent cache."""

    latents: str = opt("disk", 'Cache VAE latents: "disk" (reused across runs), "memory" or "none".', choices=("disk", "memory", "none"))
    cache_dir: str | None = opt(None, "Latent cache folder; unset = <output_dir>/.latent-cache.")
    vae_batch_size: int = opt(1, "Images per VAE encode while caching.", min=1)
    verify: str = opt("full", '"full" checks each cached latent\'s shape and values; "exists" trusts the files.', choices=("full", "exists"))
    latent_sampling: str = opt("sample", '"sample" draws from the VAE posterior each use; "mean"; "kohya" (one fixed draw).', choices=("sample", "mean", "kohya"))
    dtype: str = opt("float32", "Storage precision of cached latents.", choices=("float32", "float16"))
    text_encoder_outputs: str = opt("none", 'SDXL with frozen text encoders: encode each caption once and keep '
                                     'the outputs, "memory" or "disk" (beside the latent cache, reused across '
                                     'runs); kohya\'s --cache_text_encoder_outputs(_to_disk). Not with a '
                                     'trained text encoder or captions that change per draw (shuffle, tag '
                                     'dropout, token warm-up, wildcards).', choices=("none", "memory", "disk"))


@dataclass
class DataConfig:
    """[data]: how images and captions are read (sdft extensions)."""

    caption_extension: str = opt(".caption", "Sidecar file holding a natural-language caption.")
    tags_extension: str = opt(".txt", "Sidecar file holding comma-separated tags.")
    caption_tags_join: str = opt("separator", '"separator", "comma_space" or a literal string joining caption and tags.')
    recursive: bool = opt(False, "Look for images in sub-folders too.")
    exif_transpose: bool = opt(True, "Honour EXIF orientation (false = kohya parity).")
    use_train_resolution: bool | str = opt(AUTO, "Use metadata train_resolution buckets: auto, true or false.")
    num_workers: int = opt(1, "Background threads loading the next step's batches (0 = load in the training thread).", min=0)


@dataclass
class SaveMetadata:
    """[save.metadata]: descriptive modelspec fields written into saved models."""

    title: str | None = opt(None, "Model title (default: output_name).")
    author: str | None = opt(None, "Author.")
    description: str | None = opt(None, "Description.")
    license: str | None = opt(None, "License.")
    tags: str | None = opt(None, "Comma-separated tags.")
    usage_hint: str | None = opt(None, "How to prompt the model.")
    trigger_phrase: str | None = opt(None, "Trigger phrase.")


@dataclass
class SaveConfig:
    """[save]: when and how models and resumable states are written."""

    format: str = opt("safetensors", "Model format.", choices=("safetensors", "ckpt", "diffusers", "diffusers_safetensors"))
    precision: str = opt("fp16", "Precision of saved models.", choices=("fp16", "bf16", "float"))
    every_n_epochs: int | None = opt(None, "Save a model every N epochs.", min=1)
    n_epoch_ratio: int | None = opt(None, "Save about N models over the run instead: every (epochs of the run "
                                    "// N) epochs, at least every epoch (kohya's save_n_epoch_ratio).", min=1)
    every_n_steps: int | None = opt(None, "Save a model every N steps.", min=1)
    last_n_epochs: int | None = opt(None, "Keep only the last N per-epoch models.", min=1)
    last_n_steps: int | None = opt(None, "Keep only per-step models of the last N steps.", min=1)
    state: bool = opt(False, "Also write a resumable state with each save.")
    state_on_train_end: bool = opt(False, "Write a resumable state when training ends.")
    state_on_stop: bool = opt(True, "Write a resumable state when a run is stopped (Ctrl-C, stop key).")
    last_n_states: int | None = opt(2, "Keep only the newest N states.", min=1)
    use_ema: bool = opt(False, "Save the EMA weights (when train.ema is on) instead of the raw ones.")
    metadata: SaveMetadata = opt(None, "Descriptive metadata.", factory=SaveMetadata)


@dataclass
class SampleConfig:
    """[sample]: preview images generated during training."""

    every_n_steps: int | None = opt(None, "Generate samples every N steps.", min=1)
    every_n_epochs: int | None = opt(None, "Generate samples every N epochs.", min=1)
    at_first: bool = opt(False, "Also sample before the first step.")
    prompts: str | list[str] | None = opt(None, "A prompts file (.txt/.toml/.json, kohya syntax) or a list of prompts.")
    sampler: str = opt(DEFAULT_SAMPLER, "Sampler for previews: kohya's names (a prompt's --ss wins).",
                       choices=SAMPLER_CHOICES)
    steps: int = opt(20, "Default sampling steps (a prompt's --s wins).", min=1)
    use_ema: bool = opt(True, "Sample with the EMA weights when train.ema is on.")


@dataclass
class LoggingConfig:
    """[logging]: console cadence and optional trackers (events.jsonl is always written)."""

    every_n_steps: int = opt(10, "Log a line / event every N steps (one GPU sync per interval).", min=1)
    logging_dir: str | None = opt(None, "Folder for TensorBoard / W&B logs, relative to the run file "
                                  "(default: <run folder>/logs); each start logs into "
                                  "<log_prefix><YYYYmmddHHMMSS> inside it. Alone, it turns TensorBoard on.")
    log_with: str | None = opt(None, "tensorboard, wandb or all (both); needs the package (pip install tensorboard / wandb).",
                               choices=(None, "tensorboard", "wandb", "all"))
    log_prefix: str | None = opt(None, "Prefix of each start's log folder name, before its timestamp.")
    log_tracker_name: str | None = opt(None, "Tracker project name: the TensorBoard subfolder and the W&B project "
                                       "(default: finetuning).")
    wandb_run_name: str | None = opt(None, "Weights & Biases run name.")


@dataclass
class HypernetworkConfig:
    """[hypernetwork]: only used with train.mode = "hypernetwork"."""

    weights: str | None = opt(None, "Continue training this hypernetwork (.pt or .safetensors).")
    learning_rate: float | None = opt(None, "Hypernetwork learning rate (unset = optimizer.learning_rate).", min=0.0)
    save_format: str = opt("pt", "Saved hypernetwork format.", choices=("pt", "safetensors"))


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "train": TrainConfig,
    "optimizer": OptimizerConfig,
    "memory": MemoryConfig,
    "cache": CacheConfig,
    "data": DataConfig,
    "save": SaveConfig,
    "sample": SampleConfig,
    "logging": LoggingConfig,
    "hypernetwork": HypernetworkConfig,
}


@dataclass
class RunConfig:
    """A whole run, as loaded from a run TOML and validated."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    data: DataConfig = field(default_factory=DataConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    hypernetwork: HypernetworkConfig = field(default_factory=HypernetworkConfig)
    config_version: int = CONFIG_VERSION
    # The kohya-compatible dataset tables, resolved.
    datasets: DatasetBlueprint | None = None
    # Where the file came from: relative paths inside it resolve against its folder.
    source_path: str | None = None
    base_dir: str = "."

    @overload
    def resolve(self, value: str) -> str: ...
    @overload
    def resolve(self, value: None) -> None: ...
    def resolve(self, value: str | None) -> str | None:
        """A path from the file, relative to the file's folder when it exists there;
        otherwise unchanged (an absolute path, a path relative to the CWD, or a hub id)."""
        from pathlib import Path

        if not value:
            return value
        candidate = Path(self.base_dir) / value
        if not Path(value).is_absolute() and candidate.exists():
            return str(candidate)
        return value

    def run_dir(self) -> Path:
        from pathlib import Path

        out = Path(self.train.output_dir)
        if not out.is_absolute():
            out = Path(self.base_dir) / out
        return out / self.train.output_name
