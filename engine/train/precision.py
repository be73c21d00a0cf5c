"""Device and precision decisions, made once and explained to the user, and the accelerator
started with them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.hardware import cuda_has_bf16

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    device: torch.device
    mixed_precision: str          # what accelerate gets: "no" | "fp16" | "bf16"
    weight_dtype: torch.dtype     # frozen parts (VAE aside) and, with full_bf16, trained parts
    trainable_dtype: torch.dtype
    vae_dtype: torch.dtype
    notes: tuple[str, ...] = ()


def choose_device(setting: str) -> torch.device:
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError('memory.device = "cuda" but no CUDA GPU is visible; use "auto" or "cpu"')
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def decide_precision(memory, device: torch.device) -> Precision:
    """Map the [memory] options onto what this device can run, saying what changed."""
    notes: list[str] = []
    mixed = memory.mixed_precision
    if device.type == "cpu" and mixed == "fp16":
        # accelerate silently ignores fp16 on a CPU; bf16 autocast is what a CPU can do.
        mixed = "bf16"
        notes.append("mixed_precision fp16 is not available on a CPU: using bf16 instead")
    full_bf16 = memory.full_bf16
    if device.type == "cuda" and mixed == "bf16" and not cuda_has_bf16(device):
        mixed, full_bf16, why = _without_bf16(memory)
        notes.append(why)
    if memory.full_fp16:
        raise RuntimeError(
            "memory.full_fp16 is not supported: fp16 master weights need a patched gradient scaler "
            "and lose updates. Use full_bf16 on bf16 GPUs, or mixed_precision = \"fp16\" alone"
        )
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed]
    if device.type == "cpu":
        weight_dtype = torch.float32 if mixed == "no" else torch.bfloat16
    trainable = torch.bfloat16 if full_bf16 else torch.float32
    vae_dtype = DTYPES[memory.vae_dtype]
    if device.type == "cpu" and vae_dtype == torch.float16:
        vae_dtype = torch.float32
        notes.append("vae_dtype fp16 is not available on a CPU: encoding in fp32")
    if device.type == "cuda" and vae_dtype == torch.bfloat16 and not cuda_has_bf16(device):
        vae_dtype = torch.float32
        notes.append("vae_dtype bf16 needs a GPU with bf16 (compute capability 8.0 or newer): encoding in fp32")
    return Precision(device, mixed, weight_dtype, trainable, vae_dtype, tuple(notes))


def _without_bf16(memory) -> tuple[str, bool, str]:
    """What a GPU without bf16 runs instead of bf16: fp16 with gradient scaling, fp32 weights (full
    precision with a fused backward pass, which fp16's scaler cannot follow), and the note saying so."""
    from engine.hardware import BF16_WORDS

    mixed = "no" if memory.fused_backward_pass else "fp16"
    why = f"mixed_precision bf16 needs {BF16_WORDS}; this one would only emulate it, many times slower: "
    why += ("training in fp32 (the fused backward pass cannot run under fp16's gradient scaler)"
            if mixed == "no" else "using fp16 with gradient scaling instead")
    if memory.full_bf16:
        why += "; full_bf16 is off, so the weights are fp32 (more memory: sdft plan says how much)"
    return mixed, False, why


def start_accelerator(cfg, say):
    """The run's accelerate ``Accelerator`` and its Precision; precision notes go to ``say``."""
    import datetime

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    from engine.train.distributed import ddp_timeout_minutes

    device = choose_device(cfg.memory.device)
    precision = decide_precision(cfg.memory, device)
    for note in precision.notes:
        say(note, "warning")
    # accelerate keeps one global state per process; a second run in the same process
    # (the wizard, the dashboard, tests) may use another precision, so start afresh.
    AcceleratorState._reset_state(reset_partial_state=False)
    # With clip skip, a trained text encoder's last layers get no gradient: DDP must know.
    skips_layers = cfg.train.train_text_encoder and cfg.model.clip_skip > 1
    t = cfg.train
    ddp = DistributedDataParallelKwargs(find_unused_parameters=skips_layers,
                                        gradient_as_bucket_view=t.ddp_gradient_as_bucket_view,
                                        static_graph=t.ddp_static_graph)
    waits = InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=ddp_timeout_minutes(t)))
    accelerator = Accelerator(mixed_precision=precision.mixed_precision, cpu=device.type == "cpu",
                              kwargs_handlers=[ddp, waits])
    refuse_unsupported_launch(accelerator)
    set_backend_flags(cfg.memory, device)
    return accelerator, precision


def refuse_unsupported_launch(accelerator) -> None:
    """sdft trains data-parallel (one whole model per GPU); an accelerate config that asks for
    DeepSpeed or FSDP would wrap the model in ways its step, saves and resume do not follow."""
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind in ("DEEPSPEED", "FSDP", "MEGATRON_LM"):
        raise RuntimeError(f"this accelerate configuration asks for {kind}, which sdft does not train with: "
                           "run `sdft train RUN.toml --gpus N` (data parallel, one whole model per GPU) and fit "
                           "memory with memory.fused_backward_pass and bf16 weights; `accelerate config` "
                           "should say multi-GPU without DeepSpeed or FSDP")


def set_backend_flags(memory, device: torch.device) -> None:
    """CUDA's speed switches that change no result beyond rounding: TF32 matrix maths (Ampere
    and newer) and cuDNN's per-shape kernel autotuning. Nothing to switch on a CPU."""
    if device.type != "cuda":
        return
    if memory.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = bool(memory.cudnn_benchmark)
