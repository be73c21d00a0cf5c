"""VRAM planner, the estimate: the peak GPU memory of a training configuration.

Pure Python (no torch): the wizard calls it on every keystroke of the options screen. The
optimizers' coefficients are in engine/registry/optimizers.py, each model family's in its adapter
(``Family.plan``, engine/families/).

The model (first principles, per GPU, one process)
--------------------------------------------------
Symbols: ``N`` trained U-Net parameters (SD1.x 859.5 M, SD2.x 865.9 M, SDXL 2567 M), ``s = H·W / side²``
for the largest bucket (``side`` the family's ``activation_side``: 512 SD, 1024 SDXL), ``B`` the micro-batch, ``b_w``/``b_g`` bytes per weight/gradient (4 with fp32 master
weights, i.e. AMP or fp32; 2 with ``full_bf16``/``full_fp16``), ``b_opt`` optimizer-state bytes per
parameter::

    static = N·(b_w + b_opt)                      U-Net weights + optimizer states
           + EMA on GPU: 4N                       (fp32 shadow copy; 0 with ema_cpu_offload)
           + each text encoder: frozen 2·N_te (fp16) / 4·N_te (fp32), 0 when its outputs are cached
             (SDXL) | trained N_te·(b_w + b_g + b_opt)
           + VAE when latents are not cached or previews are sampled: N_vae·bytes(vae_dtype)
    A_fwd  = a(precision, GC)·B·s + {AMP, no GC: 2N weight-cast cache | AMP+GC: 0.22 GB | bf16+GC: 0.1 GB}
           + classic ("math") attention: B·(S_tot + 1.3·S_1) without GC
    A_tail = B·s·(0.50 GB without GC | 0.18 GB with GC) [+ classic attention: 1.5·B·S_1, the backward of one
             top-level layer's scores; the reference note adds it with GC only, we add it always so that
             enabling checkpointing can never raise the estimate]
    P_fb   = grads persist ? N·b_g + A_fwd : max(A_fwd, N·b_g + A_tail)
    P_opt  = N·b_g + (torch AdamW/SGD "foreach" step transient: N·b_w | 0 for 8-bit, Adafactor, Lion, Prodigy)
    P_else = sampling a preview (VAE decoder or U-Net without gradients) | encoding a batch's latents
             when they are not cached (the VAE encoder, 0.67 GB per 512² image in fp32)
    peak   = ctx + frag·(static + max(P_fb, P_opt, P_else))      ctx = 0.5 GiB, frag = 1.05

with ``a`` = 1.245 GB (AMP), 1.871 GB (fp32), 0.936 GB (pure bf16/fp16) per 512² SD sample without
gradient checkpointing and 0.184 / 0.30 / 0.14 GB with it (SDXL per 1024² sample: 6.89 GB bf16
without, 0.62 GB with, engine/families/sdxl/plan.py); ``b_opt`` = 8 (AdamW), 2.006 (bitsandbytes
AdamW8bit/Lion8bit: tensors under 4096 elements stay 32-bit), 2.13 (SD1) / 1.89 (SD2) / 0.38 (SDXL) Adafactor
(factored over the last two dims, which barely helps 3×3 convs), 4 (Lion, SGD with momentum),
16 (Prodigy). Gradients persist with gradient accumulation > 1. ``S_1 = 6 B × heads × T²`` is one
top-level classic attention score tensor (``T = H·W/64`` latent tokens; the fp32 softmax plus its
fp16 copy) and ``S_tot = 5·S_1 + 5·6·heads₂·(T/4)²`` the five top-level and five second-level layers
(the family's ``attention_levels``: SDXL has none at the top level, 10 layers at T/4, 60 at T/16).
xformers and SDPA (flash / memory-efficient kernels) keep no score matrices.

Hypernetwork mode (``train.mode = "hypernetwork"``): the U-Net and text encoder are frozen
(U-Net weights in the mixed-precision dtype, no weight-cast cache, no U-Net gradients or optimizer
states); only the hypernetwork (per width d a pair of d→2d→d MLPs: 21.9 M params for SD1, 25.6 M for
SD2) is trained in fp32. Activations are still stored because gradients flow back through every
attention to the hypernetwork's outputs.

Sources and calibration
-----------------------
The coefficients come from fake-tensor measurements of the diffusers SD1.5/SD2 U-Net (PyTorch
``MemTracker`` + ``FakeTensorMode``). The model
is checked against published SD1.x figures (tests/test_plan_vram.py reproduces each within 15 %):

* ShivamShrirao/diffusers, ``examples/dreambooth/README.md`` (Tesla T4, SD-v1.4 U-Net only, 512²,
  xformers, text encoder and VAE outputs cached then freed; nvidia-smi GiB, torch-1.12 era, so
  gradients persist between steps and AdamW is the for-loop implementation):
  fp16 bs1 GC 8-bit Adam **9.92 GiB**; fp32 bs1 GC 8-bit **10.08**; fp16 bs2 GC 8-bit **10.4**;
  fp16 bs1 no-GC 8-bit **11.17**; fp32 bs1 no-GC 8-bit **11.17**; fp16 bs2 no-GC 8-bit **13.67**;
  fp16 bs1 GC fp32 AdamW **15.79**; fp16 bs1 no-GC fp32 AdamW **17.7**.
* kohya-ss/sd-scripts ``docs/fine_tune_README-en.md``: SD1.x full fine-tune fits **12 GB** at bs1 with
  AdamW8bit, xformers, gradient checkpointing, fp16 and cached latents.
* huggingface/diffusers ``examples/text_to_image/README.md``: SD-v1.4 full fine-tune with gradient
  checkpointing, fp16 and EMA fits a single **24 GB** GPU.
* CUDA context 0.3–0.4 GiB with lazy module loading plus cuBLAS/cuDNN workspaces (pytorch/pytorch
  #107667, #109888) → 0.5 GiB; caching-allocator fragmentation ≈ 5 %.

Accuracy: about ±10 % for fully specified configurations; keep a margin (``MARGIN``) until a dry run on
the real GPU calibrates ``ctx``/``frag``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.families import every_family, family, family_of_settings
from engine.families.base import PlanCoefficients
from engine.registry import optimizers

GB = 1e9
GIB = 2**30


def coefficients(name: str) -> PlanCoefficients:
    """The planner's figures of the family ``name``; ValueError for a family the registry lacks
    or one without figures yet."""
    adapter = family(name)
    if adapter.plan is None:
        raise ValueError(f"the planner has no figures for {adapter.label} yet")
    return adapter.plan


# Trained U-Net parameters by family, for the parameter counts the wizard and the speed matrix show.
N_UNET = {f.name: f.plan.unet_params for f in every_family() if f.plan is not None}
N_VAE = 83.65e6
# bf16 weights written back with stochastic rounding (engine/train/weight_update.py): the fp32
# copies of a piece (parameter, gradient, random bits: 12 bytes an element), 2^25 elements a piece.
ROUNDING_PIECE = 2 ** 25
# The VAE (the same for every family; measured with torch's MemTracker on fake tensors, SD's VAE
# config, 512², no gradients): the decoder's activations 0.81 GB in fp32 (half in 16 bit) when a
# preview is decoded, the encoder's 0.67 GB when latents are not cached and each batch is encoded.
# The U-Net's forward while sampling is its family's (Family.plan.sampling_per_image).
VAE_DECODE_PER_SAMPLE = 0.81e9
VAE_ENCODE_PER_SAMPLE = 0.67e9
# cuDNN autotuning (memory.cudnn_benchmark) leaves the chosen algorithms' workspaces and the
# candidates' cached blocks behind: an allowance, not a measurement yet (sdft bench --gpu-smoke
# compares the planner with the GPU's peak).
CUDNN_BENCHMARK_BYTES = 0.3e9

# Several processes: NCCL's communicators, streams and staging buffers on each GPU (an allowance).
NCCL_BYTES = 0.25e9
CTX_BYTES = 0.5 * GIB
FRAG = 1.05
MARGIN = 0.10  # keep this share of the budget free: the model is ±10 %



@dataclass(frozen=True)
class PlanOptions:
    """Everything the estimate depends on. Defaults = a plain sdft run (AdamW, AMP off, SDPA)."""

    family: str = "sd1"                   # a family in engine/registry/families.py
    width: int = 512                       # largest bucket (the peak happens there)
    height: int = 512
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"           # "no" | "fp16" | "bf16"
    full_half: bool = False                # full_fp16 / full_bf16: weights and grads in 16 bit
    gradient_checkpointing: bool = False
    attention: str = "sdpa"               # "sdpa" | "xformers" | "math"
    optimizer: str = "AdamW"
    train_text_encoder: bool = False
    max_token_length: int = 75
    # which text encoders train with train_text_encoder (SDXL: a learning rate of 0 freezes one);
    # None: every one
    trained_text_encoders: tuple[bool, ...] | None = None
    cache_text_encoder_outputs: str = "none"   # "none" | "memory" | "disk": frozen encoders stay off the GPU
    ema: bool = False
    ema_cpu_offload: bool = False
    cache_latents: str = "disk"           # "disk" | "memory" | "none"
    vae_dtype: str = "fp32"
    mode: str = "full"                    # "full" | "hypernetwork"
    fused_backward_pass: bool = False      # each weight stepped in backward: gradients never all exist
    stochastic_rounding: bool = True       # bf16 weights stepped on fp32 copies (fp32 optimizer states)
    sample: bool = False                   # sample previews: the VAE stays on the GPU, and sampling peaks
    cudnn_benchmark: bool = True           # cuDNN autotuning's workspaces
    processes: int = 1                     # GPUs training together (DDP): the figure is per GPU
    sharding: str = "none"                 # memory.sharding: "full" | "grad_op" split weights, grads, states
    ddp_bucket_view: bool = True           # train.ddp_gradient_as_bucket_view: no second copy of the gradients
    # Assumptions about the runtime (the defaults describe sdft's engine; tests override them to
    # reproduce older published setups).
    grads_persist: bool | None = None      # None: only with gradient accumulation
    text_encoder_on_gpu: bool = True       # the frozen TE encodes captions every step
    optimizer_foreach: bool | None = None  # None: the optimizer's default
    ctx_bytes: float = CTX_BYTES
    frag: float = FRAG

    @classmethod
    def from_config(cls, config, *, width: int | None = None, height: int | None = None,
                    batch_size: int | None = None, family: str | None = None, processes: int = 1) -> "PlanOptions":
        """Build from a RunConfig (engine.config.schema); resolution/batch come from its datasets
        when not given (largest bucket side = max_bucket_reso is not assumed: the resolution is)."""
        m, t = config.model, config.train
        if family is None:
            family = family_of_config(config)
        if width is None or height is None or batch_size is None:
            w, h, b = _dataset_shape(config, _native_side(family, bool(m.v_parameterization)))
            width = width or w
            height = height or h
            batch_size = batch_size or b
        return cls(
            family=family, width=width, height=height, batch_size=batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            mixed_precision=config.memory.mixed_precision,
            full_half=bool(config.memory.full_fp16 or config.memory.full_bf16),
            gradient_checkpointing=config.memory.gradient_checkpointing,
            attention=config.memory.attention, optimizer=config.optimizer.type,
            train_text_encoder=t.train_text_encoder, max_token_length=m.max_token_length,
            trained_text_encoders=_trained_text_encoders(config, family),
            cache_text_encoder_outputs=config.cache.text_encoder_outputs,
            ema=t.ema, ema_cpu_offload=t.ema_cpu_offload, cache_latents=config.cache.latents,
            vae_dtype=config.memory.vae_dtype, mode=t.mode,
            fused_backward_pass=config.memory.fused_backward_pass,
            stochastic_rounding=config.memory.stochastic_rounding,
            sample=bool(config.sample.prompts), cudnn_benchmark=config.memory.cudnn_benchmark,
            processes=processes, ddp_bucket_view=t.ddp_gradient_as_bucket_view, sharding=config.memory.sharding,
        )


def _native_side(name: str, v_prediction: bool) -> int:
    return family(name).native_side(v_prediction)


def family_of_config(config) -> str:
    """The family of a run file's base model before it loads: what a local file's header or a
    folder's configs show (engine/families/sources.py), else the ``[model]`` table's guess."""
    from engine.families.sources import detect_family

    source = config.model.pretrained_model_name_or_path
    if source:
        resolve = getattr(config, "resolve", None)
        found = detect_family(resolve(source) if resolve else source)
        if found is not None:
            return found.name
    return family_of_settings(config.model)


def _trained_text_encoders(config, name: str) -> tuple[bool, ...] | None:
    """Which text encoders would train, by the family's rates (SDXL: optimizer.learning_rate_te1 /
    _te2 = 0 keeps one frozen, as kohya's); None where every one trains with train_text_encoder."""
    from engine.families.base import text_encoder_rate

    adapter = family(name)
    if not adapter.frozen_at_zero_rate:
        return None
    return tuple(text_encoder_rate(config, key) != 0 for _role, key in adapter.text_encoder_rates)


def _dataset_shape(config, side: int = 512) -> tuple[int, int, int]:
    """(width, height, batch) of the first dataset of a RunConfig; an unset resolution is the
    model's native ``side`` (as training takes it), 1 the batch when unknown."""
    blueprint = getattr(config, "datasets", None)
    for attr in ("datasets",):
        items = getattr(blueprint, attr, None)
        if items:
            first = items[0]
            params = getattr(first, "params", first)
            res = getattr(params, "resolution", None) or (side, side)
            if isinstance(res, int):
                res = (res, res)
            return int(res[0]), int(res[1]), int(getattr(params, "batch_size", 1) or 1)
    return side, side, 1


@dataclass(frozen=True)
class Estimate:
    """Predicted peak VRAM. ``breakdown`` holds the parts (bytes) that add up to ``total_bytes``."""

    total_bytes: float
    breakdown: dict = field(default_factory=dict)
    phase: str = ""  # where the peak happens: "forward", "backward" or "optimizer step"

    @property
    def gb(self) -> float:
        return self.total_bytes / GB

    def fits(self, budget_bytes: float, margin: float = MARGIN) -> bool:
        return self.total_bytes <= budget_bytes * (1.0 - margin)


def _precision_kind(o: PlanOptions) -> str:
    if o.full_half:
        return "half"
    return "fp32" if o.mixed_precision == "no" else "amp"


def _opt_bytes(o: PlanOptions) -> tuple[float, bool]:
    """(state bytes per parameter, whether the step copies every parameter) of o.optimizer; a
    module.Class the registry does not know counts as AdamW."""
    entry = optimizers.find(o.optimizer)
    if entry is None:
        if not optimizers.is_class_path(o.optimizer):
            raise ValueError(optimizers.unknown_message(o.optimizer))
        return optimizers.UNKNOWN_STATE_BYTES, False
    per = entry.state_bytes if entry.state_bytes is not None else coefficients(o.family).adafactor_state_bytes
    foreach = entry.foreach if o.optimizer_foreach is None else (o.optimizer_foreach and entry.foreach)
    return per, foreach


def _states_in_param_dtype(name: str) -> bool:
    entry = optimizers.find(name)
    return entry is not None and entry.states_in_param_dtype


def _classic_attention(o: PlanOptions) -> tuple[float, float]:
    """(forward extra, backward-tail extra) bytes of classic attention score matrices."""
    if o.attention != "math":
        return 0.0, 0.0
    tokens = (o.width // 8) * (o.height // 8)
    (d1, h1, n1), (d2, h2, n2) = coefficients(o.family).attention_levels
    s1 = 6.0 * h1 * (tokens / d1) ** 2
    s_tot = n1 * s1 + n2 * 6.0 * h2 * (tokens / d2) ** 2
    # Backward of a top-level layer materialises its score gradients with or without checkpointing.
    tail = 1.5 * o.batch_size * s1
    if o.gradient_checkpointing:
        return 0.0, tail
    return o.batch_size * (s_tot + 1.3 * s1), tail


def hypernetwork_params(family: str) -> float:
    """Trainable parameters of a NovelAI hypernetwork: per width d, a pair of d→2d→d MLPs."""
    plan = coefficients(family)
    if not plan.hypernetwork_widths:
        raise ValueError(f"hypernetworks are not built for {family_label(family)}: the planner has no figures")
    return sum(2 * (4 * d * d + 3 * d) for d in plan.hypernetwork_widths)


def family_label(name: str) -> str:
    return family(name).label


def estimate_peak_vram(options: Any) -> Estimate:
    """Peak VRAM of one training step (bytes) with its breakdown; see the module docstring."""
    o = options if isinstance(options, PlanOptions) else PlanOptions.from_config(options)
    plan = coefficients(o.family)
    n = plan.unet_params
    s = o.width * o.height / plan.activation_side**2    # the U-Net's activations grow with the pixels
    s_vae = o.width * o.height / 512**2                 # the VAE's figures are per 512² image
    b = max(1, int(o.batch_size))
    gc = bool(o.gradient_checkpointing)
    half_bytes = 4 if o.mixed_precision == "no" else 2
    per_opt, foreach = _opt_bytes(o)
    parts: dict[str, float] = {}
    trained = _trained(o, n, per_opt, foreach, parts)

    te_act, te_train = _text_encoders(o, plan, per_opt, half_bytes, parts, trained)
    vae_bytes = 4 if o.vae_dtype == "fp32" else 2
    if o.cache_latents == "none" or o.sample:
        parts["VAE (frozen)"] = N_VAE * vae_bytes
    if o.cudnn_benchmark:
        parts["cuDNN autotune workspace"] = CUDNN_BENCHMARK_BYTES
    if o.fused_backward_pass and o.mode == "full":
        trained = _fused(o, trained, te_train)
    if o.processes > 1 and o.sharding != "none" and o.mode == "full":
        trained = _sharded(o, parts, trained)
    if o.processes > 1:
        parts.update(_ddp(o, trained.grads))

    attn_fwd, attn_tail = _classic_attention(o)
    a_fwd = plan.activations[(trained.act_kind, gc)] * b * s + trained.cast_cache + attn_fwd + te_act
    a_tail = plan.activation_tail[gc] * b * s + attn_tail
    persist = o.grads_persist if o.grads_persist is not None else o.gradient_accumulation_steps > 1
    if o.fused_backward_pass:
        persist = False
    others = {}
    if o.sample:
        others["sampling"] = _sampling_bytes(o, plan, s, s_vae, vae_bytes)
    if o.cache_latents == "none":
        # each batch is encoded before its forward pass, while no activation is held yet
        others["encoding latents"] = VAE_ENCODE_PER_SAMPLE * s_vae * b * vae_bytes / 4
    static = sum(parts.values())
    phase, peak_parts, dynamic = _peak_phase(trained.grads, a_fwd, a_tail, trained.step_temp, persist, others)
    parts.update(peak_parts)
    overhead = (o.frag - 1.0) * (static + dynamic)
    parts["allocator fragmentation"] = overhead
    parts["CUDA context"] = o.ctx_bytes
    total = o.ctx_bytes + o.frag * (static + dynamic)
    return Estimate(total_bytes=total, breakdown=parts, phase=phase)


def _text_encoders(o: PlanOptions, plan: PlanCoefficients, per_opt: float, half_bytes: int, parts: dict,
                   trained: "_Trained") -> tuple[float, bool]:
    """The text encoders' weights (into ``parts``; a trained one's gradients into ``trained``) and
    the trained ones' activations; whether any trains. A frozen encoder stays on the GPU in the
    compute dtype to encode captions each step, unless its outputs are cached (SDXL, kohya's
    cache_text_encoder_outputs: encoded once, then the encoders leave the GPU)."""
    chunks = max(1, o.max_token_length // 75)
    te_train = o.mode == "full" and bool(o.train_text_encoder)
    which = o.trained_text_encoders or (True,) * len(plan.text_params)
    te_act = 0.0
    for n_te, per_chunk, trains in zip(plan.text_params, plan.text_activation_per_chunk, which, strict=True):
        if te_train and trains:
            parts["text encoder (trained)"] = parts.get("text encoder (trained)", 0.0) + n_te * (4 + 4 + per_opt)
            trained.grads += n_te * 4
            te_act += max(1, int(o.batch_size)) * chunks * per_chunk
        elif o.text_encoder_on_gpu and (te_train or o.cache_text_encoder_outputs == "none"):
            parts["text encoder (frozen)"] = parts.get("text encoder (frozen)", 0.0) + n_te * half_bytes
    return te_act, te_train and any(which)


@dataclass
class _Trained:
    """What the trained weights add beyond the static parts: gradients at their peak, the optimizer
    step's temporaries, the activation kind and autocast's weight-cast cache."""
    grads: float
    step_temp: float
    act_kind: str
    cast_cache: float = 0.0


def _trained(o: PlanOptions, n: float, per_opt: float, foreach: bool, parts: dict) -> _Trained:
    """The trained weights' static parts (into ``parts``) and their dynamic figures."""
    half_bytes = 4 if o.mixed_precision == "no" else 2
    if o.mode == "hypernetwork":
        # Frozen U-Net in the compute dtype; only the fp32 hypernetwork trains.
        n_h = hypernetwork_params(o.family)
        parts["U-Net weights (frozen)"] = n * half_bytes
        parts["hypernetwork + optimizer"] = n_h * (4 + per_opt)
        return _Trained(n_h * 4, n_h * 4 if foreach else 0.0, "fp32" if o.mixed_precision == "no" else "half")
    kind = _precision_kind(o)
    b_w = 2 if o.full_half else 4
    rounded = o.full_half and o.stochastic_rounding
    parts["U-Net weights"] = n * b_w
    if o.full_half and not rounded and _states_in_param_dtype(o.optimizer):
        per_opt = per_opt / 2  # torch optimizers keep their states in the parameters' dtype
    parts["optimizer states"] = n * per_opt
    step_temp = n * b_w if foreach else 0.0
    if rounded:   # steps on fp32 copies, a piece at a time (foreach temporaries then per piece too)
        step_temp = ROUNDING_PIECE * (12 + (4 if foreach else 0))
    cast_cache = 0.0
    if kind == "amp":
        cast_cache = 0.22e9 if o.gradient_checkpointing else 2 * n  # autocast keeps an fp16 copy of each weight
    elif kind == "half" and o.gradient_checkpointing:
        cast_cache = 0.1e9
    if o.ema and not o.ema_cpu_offload:
        parts["EMA weights"] = 4 * n
    return _Trained(n * b_w, step_temp, kind, cast_cache)


def _fused(o: PlanOptions, trained: _Trained, te_train: bool) -> _Trained:
    """A fused backward pass: one weight's gradient is stepped while the next accumulates, so
    gradients take two of the largest tensors at most, and the step's temporaries one."""
    plan = coefficients(o.family)
    largest = max(plan.largest_param, plan.largest_text_param if te_train else 0.0)
    b_g = 2 if o.full_half else 4
    rounded = o.full_half and o.stochastic_rounding
    temp = largest * 12 if rounded else (largest * b_g if trained.step_temp else 0.0)
    return _Trained(2 * largest * b_g, temp, trained.act_kind, trained.cast_cache)


def _sharded(o: PlanOptions, parts: dict, trained: _Trained) -> _Trained:
    """memory.sharding: each GPU holds 1/P of the weights, gradients and optimizer states, plus the
    gathered weights of the unit at work and the next (full) or of the whole forward (grad_op)."""
    p = o.processes
    for key in ("U-Net weights", "optimizer states", "text encoder (trained)", "EMA weights"):
        if key in parts:
            parts[key] = parts[key] / p
    b_w = 2 if o.full_half else 4
    unit = coefficients(o.family).shard_unit_params
    if o.sharding == "grad_op":
        parts["gathered weights (forward to backward)"] = coefficients(o.family).unet_params * b_w
    else:
        parts["gathered weights (two units)"] = 2 * unit * b_w
    # a unit's whole gradient exists until it is reduce-scattered
    return _Trained(trained.grads / p + unit * b_w, trained.step_temp / p, trained.act_kind, trained.cast_cache)


def _ddp(o: PlanOptions, grads: float) -> dict[str, float]:
    """What several processes add on each GPU: DDP's averaging buckets, a second copy of every
    gradient unless the gradients are views into them (train.ddp_gradient_as_bucket_view, sdft's
    default), and NCCL's communicators and buffers (an allowance, calibrated by none yet)."""
    extra = {"NCCL communicators and buffers": NCCL_BYTES}
    if not o.ddp_bucket_view and o.sharding == "none":
        extra["DDP gradient buckets"] = grads
    return extra


def _sampling_bytes(o: PlanOptions, plan: PlanCoefficients, s: float, s_vae: float, vae_bytes: int) -> float:
    """The peak of sampling a preview at the largest bucket's size: the VAE decoder's activations,
    or the U-Net's without gradients (two images: classifier-free guidance), whichever is larger."""
    unet_bytes = 2 if o.mixed_precision != "no" or o.full_half else 4
    return max(VAE_DECODE_PER_SAMPLE * s_vae * vae_bytes / 4, plan.sampling_per_image * 2 * s * unet_bytes / 2)


def _peak_phase(grads: float, a_fwd: float, a_tail: float, step_temp: float, persist: bool,
                others: dict[str, float] | None = None) -> tuple[str, dict[str, float], float]:
    """Where in the step memory peaks, what is live then, and how much: the forward pass (all
    activations), the end of backward (every gradient plus the last activations), the optimizer
    step (gradients plus its temporaries), or a moment outside the step when no gradient or
    activation is held (``others``: sampling a preview, encoding a batch's latents)."""
    p_fb = grads + a_fwd if persist else max(a_fwd, grads + a_tail)
    p_opt = grads + step_temp
    other_phase, other = max((others or {}).items(), key=lambda kv: kv[1], default=("", 0.0))
    dynamic = max(p_fb, p_opt, other)
    if other > max(p_fb, p_opt):
        label = "sampling (VAE decode)" if other_phase == "sampling" else "VAE encoder activations"
        return other_phase, {label: other}, dynamic
    if p_opt > p_fb:
        return "optimizer step", {"gradients": grads, "optimizer step temporaries": step_temp}, dynamic
    if persist:
        return "backward", {"gradients": grads, "activations": a_fwd}, dynamic
    if a_fwd >= grads + a_tail:
        return "forward", {"activations": a_fwd}, dynamic
    return "backward", {"gradients": grads, "activations": a_tail}, dynamic


def fmt_gb(value: float) -> str:
    return f"{value / GB:.1f} GB"
