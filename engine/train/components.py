"""What a run trains with, built once: the model, its prompt encoder and the noise tables.

Small functions that each build one value; the Trainer calls them in order and keeps the
results in a :class:`Components`, which nothing changes afterwards (the modules' weights
change, of course, the references do not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.families import family_of
from engine.train import objective as obj

Say = Callable[..., None]   # say(text, level="info")


@dataclass(frozen=True)
class NoiseTables:
    """The diffusion schedule on the device (each step only indexes it) and the options of the
    objective, resolved for the model."""
    cumprod: torch.Tensor
    snr: torch.Tensor
    noise_options: obj.NoiseOptions
    loss_options: obj.LossOptions
    latent_scale: float
    v_prediction: bool
    zero_terminal_snr: bool = False   # the run's setting, or the model's mark (an SDXL v-pred fine-tune)


@dataclass(frozen=True)
class Components:
    model: Any                  # engine.models.load.LoadedModel: unet, text_encoder, vae, tokenizer
    prompt_encoder: Any         # engine.models.text_encoding.PromptEncoder
    noise: NoiseTables
    trained_text_encoders: tuple[str, ...]   # the text encoders that train, by their name on the model
    hypernetwork: Any = None    # train.mode = "hypernetwork": the only trained module
    attention: str = "sdpa"     # the attention kernel that runs (xformers may have fallen back)
    text_cache: Any = None      # cache.text_encoder_outputs: engine.train.text_cache.TextOutputCache

    @property
    def train_te(self) -> bool:
        """A text encoder trains too."""
        return bool(self.trained_text_encoders)

    @property
    def text_encoders(self) -> dict[str, Any]:
        """Every text encoder of the model by its name (SDXL: text_encoder and text_encoder_2)."""
        return {role: getattr(self.model, role) for role in family_of(self.model).text_encoder_roles}

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def default_side(self) -> int:
        return default_side(self.model, self.noise)


def default_side(model, noise: NoiseTables) -> int:
    """The model's native image side, as its family says (SD 2.x 768-v: 768)."""
    return family_of(model).native_side(noise.v_prediction)


def load_base_model(cfg, device: torch.device, say: Say):
    """The base model (fp32, CPU) and its noise tables; checks the options that need a
    v-prediction model."""
    from engine.families.sources import load_base

    m = cfg.model
    model = load_base(
        cfg.resolve(m.pretrained_model_name_or_path), v2=m.v2, v_parameterization=m.v_parameterization,
        vae=cfg.resolve(m.vae), tokenizer_dir=cfg.resolve(m.tokenizer_dir),
        allow_unsafe_pickle=m.allow_unsafe_pickle, use_ema=m.use_ema_weights,
    )
    for line in model.report:
        say(line)
    refused = family_of(model).refusals(cfg)   # --check says the same before a run starts
    if refused:
        raise ValueError("; ".join(f"{key}: {family_of(model).label}: {why} ({hint})" for key, why, hint in refused))
    return model, noise_tables(cfg.train, model, device, say)


def noise_tables(t, model, device: torch.device, say: Say) -> NoiseTables:
    v_prediction = bool(model.v_parameterization)
    if t.scale_v_pred_loss_like_noise_pred and not v_prediction:
        raise ValueError("train.scale_v_pred_loss_like_noise_pred only applies to v-prediction models")
    # An SDXL model may mark a zero-terminal-SNR schedule (engine/families/sdxl/detect.py): it trains on it.
    zero_terminal_snr = bool(t.zero_terminal_snr or getattr(model, "zero_terminal_snr", False))
    if zero_terminal_snr and not v_prediction:
        say("zero_terminal_snr without v-prediction cannot learn the last timestep", "warning")
    cumprod = obj.alphas_cumprod(zero_terminal_snr=zero_terminal_snr).float().to(device)
    noise_options = obj.NoiseOptions(
        t.noise_offset, t.noise_offset_random_strength, t.adaptive_noise_scale,
        t.multires_noise_iterations, t.multires_noise_discount,
        t.ip_noise_gamma, t.ip_noise_gamma_random_strength,
    )
    loss_options = obj.LossOptions(t.loss_type, t.huber_schedule, t.huber_c, t.huber_scale,
                                   t.min_snr_gamma, t.scale_v_pred_loss_like_noise_pred,
                                   t.debiased_estimation_loss)
    family = family_of(model)
    scaling = getattr(model.vae.config, "scaling_factor", family.vae_scale)
    if abs(scaling - family.vae_scale) > 1e-6:
        say(f"the VAE's scaling_factor is {scaling}, not {family.label}'s {family.vae_scale}: using the VAE's",
            "warning")
    return NoiseTables(cumprod, obj.snr_table(cumprod), noise_options, loss_options, scaling, v_prediction,
                       zero_terminal_snr)


def build_prompt_encoder(cfg, model, say: Say):
    m = cfg.model
    return family_of(model).prompt_encoder(model, max_token_length=m.max_token_length, clip_skip=m.clip_skip,
                                           weighted=cfg.train.weighted_captions,
                                           warn=lambda text: say(text, "warning"))


def trains_text_encoder(cfg, model) -> tuple[str, ...]:
    """The text encoders that train, by their name on the model (the family decides: SDXL, as
    kohya's sdxl_train.py, keeps one whose rate is 0 frozen)."""
    return family_of(model).trained_text_encoders(cfg)


def prepare_modules(components: Components, cfg, precision, device: torch.device, seed, say: Say) -> Components:
    """Attention kernels, what trains, dtypes and devices, gradient checkpointing; in
    hypernetwork mode, the hypernetwork (returned in the new Components)."""
    unet = components.model.unet
    trained = components.trained_text_encoders
    attention = set_attention(unet, cfg.memory.attention, device, say)
    full = cfg.train.mode == "full"
    unet.requires_grad_(full)
    unet.to(device, precision.trainable_dtype if full else precision.weight_dtype)
    unet.train(full)
    family = family_of(components.model)
    frozen = [role for role in family.text_encoder_roles if role not in trained]
    if cfg.train.train_text_encoder and full and frozen:   # as kohya's sdxl_train.py says it
        say(f"text encoders: {', '.join(trained) or 'none'} train; {', '.join(frozen)} frozen (a learning rate of 0)")
    rates = cfg.optimizer.block_lr
    if full and rates is not None:   # a block at rate 0 stays frozen (kohya leaves it out of the optimizer)
        for name, param in unet.named_parameters():
            if rates[family.unet_block_of(components.model, name)] == 0:
                param.requires_grad_(False)
    for role, te in components.text_encoders.items():
        trains = role in trained
        te.requires_grad_(trains)
        te.to(device, precision.trainable_dtype if trains else precision.weight_dtype)
        te.train(trains)
        if trains:
            for module in family.unused_text_modules(components.model, role):
                module.requires_grad_(False)
    hypernetwork = None
    if cfg.train.mode == "hypernetwork":
        hypernetwork = build_hypernetwork(cfg, unet, device, seed, say)
    if cfg.memory.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for role in trained:
            components.text_encoders[role].gradient_checkpointing_enable()
    if cfg.memory.channels_last:
        unet.to(memory_format=torch.channels_last)
    if cfg.memory.torch_compile:
        compile_unet(unet, cfg.memory.dynamo_backend, say)
    if not cfg.sample.prompts:
        # Cached latents need no VAE; live-encoded batches move it back when they come.
        components.model.vae.to("cpu")
    return Components(components.model, components.prompt_encoder, components.noise, trained, hypernetwork,
                      attention)


def cache_text_outputs(components: Components, cfg, data, accelerator, precision, say: Say) -> Components:
    """cache.text_encoder_outputs: every caption the data can draw encoded once by the frozen
    encoders (engine/train/text_cache.py); they then leave the device unless samples need them."""
    mode = cfg.cache.text_encoder_outputs
    if mode == "none":
        return components
    from dataclasses import replace

    from engine.train.text_cache import cache_folder, captions_to_cache, fill_text_cache

    captions = captions_to_cache(data)
    encoders = list(components.text_encoders.values())
    cache, encoded = fill_text_cache(mode, cache_folder(cfg) if mode == "disk" else None, captions,
                                     components.prompt_encoder, accelerator.device, precision.weight_dtype,
                                     accelerator.autocast, max_token_length=cfg.model.max_token_length,
                                     encoders=encoders)
    where = f"on disk ({cache_folder(cfg)})" if mode == "disk" else "in memory"
    say(f"text-encoder outputs cached {where}: {len(captions)} caption(s), {encoded} encoded now")
    if not cfg.sample.prompts:
        for module in encoders:
            module.to("cpu")
    return replace(components, text_cache=cache)


def build_hypernetwork(cfg, unet, device: torch.device, seed, say: Say):
    """Hypernetwork mode: an fp32 hypernetwork hooked into the frozen U-Net's attention (after
    the kernel choice, which it wraps). The U-Net's forward still runs with grad enabled, so
    gradients flow through it to the hypernetwork."""
    from engine.models.hypernetwork import hypernetwork_for_unet, install_hypernetwork

    weights = cfg.resolve(cfg.hypernetwork.weights)
    hypernetwork = hypernetwork_for_unet(unet, weights=weights, seed=seed, name=cfg.train.output_name,
                                         warn=lambda text: say(text, "warning"))
    hypernetwork.to(device, torch.float32).train()
    install_hypernetwork(unet, hypernetwork)
    source = f"loaded from {weights}" if weights else "new"
    say(f"hypernetwork ({source}): widths {list(hypernetwork.widths)}, "
        f"{sum(p.numel() for p in hypernetwork.parameters()):,} trainable parameters")
    return hypernetwork


def set_attention(unet, choice: str, device: torch.device, say: Say) -> str:
    """Install the attention kernel ``choice`` asks for and return the one that runs: xformers
    falls back to SDPA (with the reason said) on a CPU, or when its kernels fail a real call."""
    if choice == "xformers":
        if device.type != "cuda":
            say("xformers needs a CUDA GPU: using PyTorch SDPA attention instead", "warning")
            return "sdpa"
        try:
            prove_xformers(device)
            unet.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # noqa: BLE001 - any import/kernel failure falls back
            say(f"xformers is not usable here ({exc}): using PyTorch SDPA attention instead", "warning")
            return "sdpa"
        return "xformers"
    if choice == "math":
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    return choice


def prove_xformers(device: torch.device) -> None:
    """One forward and backward pass of xformers' attention on the GPU, in the 16-bit dtype
    training uses: an installed xformers built for another torch or CUDA imports fine and fails
    only here (diffusers' own check runs the forward alone)."""
    import xformers.ops

    dtype = torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    q = torch.randn(1, 64, 2, 40, device=device, dtype=dtype, requires_grad=True)
    xformers.ops.memory_efficient_attention(q, q, q).float().sum().backward()
    torch.cuda.synchronize(device)


RECOMPILE_LIMIT = 64    # bucket shapes of a run (about 30 at 768 px), with and without gradients


def compile_unet(unet, backend: str, say: Say) -> None:
    """torch.compile the U-Net in place (``nn.Module.compile``): the module, its parameters and
    its state-dict names stay the same, so the optimizer, EMA, saves and resume see no
    difference. Graphs are built on first use, once per bucket shape (and once more for sampling
    without gradients).

    Shapes are static (``dynamic=False``): torch would otherwise turn the second bucket into a
    graph with symbolic sizes, which inductor fails to build for this U-Net ("cannot determine
    truth value of Relational"). A graph per bucket needs more than torch's 8 recompiles."""
    import torch._dynamo.config as dynamo_config

    backend = backend.lower()
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    unet.compile(backend=backend, dynamic=False)
    say(f"the U-Net is compiled with torch.compile (backend {backend}): the first steps of each bucket "
        "shape take longer while it builds")


def cache_latents(data, vae, accelerator, precision, progress, agreement) -> None:
    """Encode the cacheable images once; ``progress(done, total)`` may raise StopTraining to stop.
    Several processes share the encoding of a disk cache (each every N-th image), agree on a stop
    (``agreement``, engine/train/distributed.py) so none waits for one that left, then each reads
    the whole cache. A memory cache is each process's own."""
    from engine.train.context import StopTraining

    vae.requires_grad_(False).eval()
    vae.to(accelerator.device, precision.vae_dtype)
    device, dtype, main = accelerator.device, precision.vae_dtype, accelerator.is_main_process
    if accelerator.num_processes == 1:
        data.prepare_latents(vae, device, dtype, progress=progress)
        return
    stopped = None
    try:
        if data.cache_mode == "disk":
            data.encode_share(vae, device, dtype, progress, accelerator.process_index, accelerator.num_processes)
        else:
            data.prepare_latents(vae, device, dtype, progress=progress, main=main)
    except StopTraining as exc:
        stopped = exc
    if agreement.stop_agreed(stopped is not None):
        raise stopped or StopTraining("another process was stopped while caching latents; the latents encoded "
                                      "so far are kept in the cache")
    if data.cache_mode == "disk":   # every share is written: each process reads them all
        data.prepare_latents(vae, device, dtype, progress=progress if main else None, main=main)
