"""The fine-tuning loop: setup, loop, teardown.

Read top to bottom: :meth:`Trainer.setup` loads everything once, :meth:`Trainer.loop`
runs optimizer steps, :meth:`Trainer.finish` saves. The objective itself lives in
``objective.py`` as pure functions. The loop talks to the outside world only through an
event sink and a :class:`~engine.control.RunControl`.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext

import torch

from engine.config.schema import RunConfig
from engine.control import RunControl
from engine.events import (
    Message,
    ModelSaved,
    PhaseProgress,
    RunStarted,
    StatusChanged,
    StepMetrics,
    StepProgress,
)
from engine.train import objective as obj
from engine.train.ema import EMA
from engine.train.optimizers import build_optimizer, build_scheduler
from engine.train.precision import Precision, choose_device, decide_precision
from engine.train.metrics import IntervalMeter, device_memory
from engine.train.prefetch import Prefetcher
from engine.train.schedule import resolve_schedule
from engine.train.seeds import resolve_seed
from engine.train.state import (
    Counters,
    StateError,
    find_state_folder,
    load_state,
    read_counters,
    save_state,
    training_math_hash,
)

SMOOTHING = 0.98   # per-step decay of the smoothed loss shown in logs and the dashboard


class StopTraining(Exception):
    """Raised inside the loop when RunControl asks for a stop."""


def step_seed(seed: int, step: int, micro: int, rank: int = 0) -> int:
    """Seed of the generator for one micro-batch of one process: a pure function, so resume is
    exact, and distinct per process, so GPUs draw independent noise and timesteps."""
    digest = hashlib.blake2b(f"{seed}/{step}/{micro}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2 ** 63)


class Trainer:
    def __init__(self, config: RunConfig, *, config_text: str, sink, control: RunControl | None = None,
                 resume: str | None = None, allow_changed: bool = False):
        self.cfg = config
        self.config_text = config_text
        self.sink = sink
        self.control = control or RunControl()
        self.resume = resume if resume is not None else config.train.resume
        self.allow_changed = allow_changed
        self.run_dir = config.run_dir()
        self.global_step = 0
        self.epoch = 0
        self.batches_done = 0
        self.loss_avg: float | None = None
        self.last_model_path: str | None = None
        self.last_state_path: str | None = None
        self.consistent = True   # False only while an optimizer step is being applied
        self.hypernetwork = None     # train.mode = "hypernetwork": the only trained module

    # ================================================================ setup

    def say(self, text: str, level: str = "info") -> None:
        self.sink.emit(Message(level=level, text=text))

    def setup(self) -> None:
        from accelerate import Accelerator

        cfg = self.cfg
        device = choose_device(cfg.memory.device)
        self.precision: Precision = decide_precision(cfg.memory, device)
        for note in self.precision.notes:
            self.say(note, "warning")
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs

        # accelerate keeps one global state per process; a second run in the same process
        # (the wizard, the dashboard, tests) may use another precision, so start afresh.
        AcceleratorState._reset_state(reset_partial_state=False)

        # With clip skip, a trained text encoder's last layers get no gradient: DDP must know.
        skips_layers = cfg.train.train_text_encoder and cfg.model.clip_skip > 1
        self.accelerator = Accelerator(
            mixed_precision=self.precision.mixed_precision,
            cpu=device.type == "cpu",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=skips_layers)],
        )
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        if device.type == "cuda" and cfg.memory.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.seed = cfg.train.seed
        self._load_model()
        self._load_data()
        self._build_text_encoder()
        self._cache_latents()
        self._configure_memory()
        self._build_optimizer()
        self._restore()

    def _phase(self, name: str, done: int, total: int) -> None:
        self.sink.emit(PhaseProgress(name=name, done=done, total=total))

    def _load_model(self) -> None:
        from engine.models.load import load_model

        m = self.cfg.model
        self._phase("loading model", 0, 1)
        self.model = load_model(
            self.cfg.resolve(m.pretrained_model_name_or_path),
            v2=m.v2,
            v_parameterization=m.v_parameterization,
            vae=self.cfg.resolve(m.vae),
            tokenizer_dir=self.cfg.resolve(m.tokenizer_dir),
            allow_unsafe_pickle=m.allow_unsafe_pickle,
            use_ema=m.use_ema_weights,
        )
        for line in self.model.report:
            self.say(line)
        self.v_prediction = bool(self.model.v_parameterization)
        t = self.cfg.train
        if t.scale_v_pred_loss_like_noise_pred and not self.v_prediction:
            raise ValueError("train.scale_v_pred_loss_like_noise_pred only applies to v-prediction models")
        if t.zero_terminal_snr and not self.v_prediction:
            self.say("zero_terminal_snr without v-prediction cannot learn the last timestep", "warning")
        # Schedule tables live on the device, so each step only indexes them.
        self.cumprod = obj.alphas_cumprod(zero_terminal_snr=t.zero_terminal_snr).float().to(self.device)
        self.snr = obj.snr_table(self.cumprod)
        self.noise_options = obj.NoiseOptions(
            t.noise_offset, t.noise_offset_random_strength, t.adaptive_noise_scale,
            t.multires_noise_iterations, t.multires_noise_discount,
            t.ip_noise_gamma, t.ip_noise_gamma_random_strength,
        )
        self.loss_options = obj.LossOptions(t.loss_type, t.huber_schedule, t.huber_c, t.huber_scale,
                                            t.min_snr_gamma, t.scale_v_pred_loss_like_noise_pred,
                                            t.debiased_estimation_loss)
        scaling = getattr(self.model.vae.config, "scaling_factor", obj.LATENT_SCALE)
        if abs(scaling - obj.LATENT_SCALE) > 1e-6:
            self.say(f"the VAE's scaling_factor is {scaling}, not SD's 0.18215: using the VAE's", "warning")
        self.latent_scale = scaling
        self._phase("loading model", 1, 1)

    def _load_data(self) -> None:
        from engine.data.pipeline import TrainingData

        side = 768 if (self.model.v2 and self.v_prediction) else 512
        self.data = TrainingData.from_config(self.cfg, default_resolution=(side, side),
                                             log=lambda text: self.say(text))
        self.schedule = resolve_schedule(self.cfg.train, self.data.batches_per_epoch(),
                                         self.accelerator.num_processes)
        self.data.use_schedule(self.schedule.total_steps)

    def _build_text_encoder(self) -> None:
        from engine.models.text_encoding import PromptEncoder

        m = self.cfg.model
        self.train_te = self.cfg.train.train_text_encoder and self.cfg.train.mode == "full"
        self.prompt_encoder = PromptEncoder(
            self.model.tokenizer,
            self.model.text_encoder,
            max_token_length=m.max_token_length,
            clip_skip=m.clip_skip,
            v2=self.model.v2,
            weighted=self.cfg.train.weighted_captions,
            warn=lambda text: self.say(text, "warning"),
        )

    def _cache_latents(self) -> None:
        vae = self.model.vae
        vae.requires_grad_(False).eval()
        vae.to(self.device, self.precision.vae_dtype)

        def progress(done: int, total: int) -> None:
            self._phase("caching latents", done, total)
            if self.control.stop_requested:
                # Latents written so far stay in the cache; the next run reuses them.
                raise StopTraining(self.control.stop_reason)

        if self.is_main:
            self.data.prepare_latents(vae, self.device, self.precision.vae_dtype, progress=progress)
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            self.data.prepare_latents(vae, self.device, self.precision.vae_dtype, progress=None)

    def _configure_memory(self) -> None:
        cfg, p = self.cfg, self.precision
        unet, te = self.model.unet, self.model.text_encoder
        self._set_attention(unet)
        full = cfg.train.mode == "full"
        unet.requires_grad_(full)
        unet.to(self.device, p.trainable_dtype if full else p.weight_dtype)
        unet.train(full)
        te.requires_grad_(self.train_te)
        te.to(self.device, p.trainable_dtype if self.train_te else p.weight_dtype)
        te.train(self.train_te)
        if cfg.train.mode == "hypernetwork":
            self._setup_hypernetwork(unet)
        if cfg.memory.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            if self.train_te:
                te.gradient_checkpointing_enable()
        if not cfg.sample.prompts:
            # Cached latents need no VAE; live-encoded batches move it back when they come.
            self.model.vae.to("cpu")

    def _setup_hypernetwork(self, unet) -> None:
        """Hypernetwork mode: an fp32 hypernetwork hooked into the frozen U-Net's
        attention (after the kernel choice, which it wraps). The U-Net's forward still runs
        with grad enabled, so gradients flow through it to the hypernetwork."""
        from engine.models.hypernetwork import hypernetwork_for_unet, install_hypernetwork

        weights = self.cfg.resolve(self.cfg.hypernetwork.weights)
        self.hypernetwork = hypernetwork_for_unet(unet, weights=weights, seed=self.seed,
                                                  name=self.cfg.train.output_name,
                                                  warn=lambda text: self.say(text, "warning"))
        self.hypernetwork.to(self.device, torch.float32).train()
        install_hypernetwork(unet, self.hypernetwork)
        source = f"loaded from {weights}" if weights else "new"
        self.say(f"hypernetwork ({source}): widths {list(self.hypernetwork.widths)}, "
                 f"{sum(p.numel() for p in self.hypernetwork.parameters()):,} trainable parameters")

    def _set_attention(self, unet) -> None:
        choice = self.cfg.memory.attention
        if choice == "xformers":
            if self.device.type != "cuda":
                self.say("xformers needs a CUDA GPU: using PyTorch SDPA attention instead", "warning")
                return
            try:
                unet.enable_xformers_memory_efficient_attention()
            except Exception as exc:  # noqa: BLE001 - any import/kernel failure falls back
                self.say(f"xformers is not usable here ({exc}): using PyTorch SDPA attention instead", "warning")
        elif choice == "math":
            from diffusers.models.attention_processor import AttnProcessor

            unet.set_attn_processor(AttnProcessor())

    def trainable_parameters(self) -> list[dict]:
        """Parameter groups: U-Net (learning_rate) and text encoder (learning_rate_te), each
        with its parameters' names (the EMA is keyed by them)."""
        o = self.cfg.optimizer
        groups = []

        def group(name: str, module, lr: float) -> dict:
            named = [(f"{name}.{key}", p) for key, p in module.named_parameters() if p.requires_grad]
            return {"params": [p for _key, p in named], "named": named, "lr": lr, "name": name}

        if self.cfg.train.mode == "full":
            groups.append(group("unet", self.model.unet, o.learning_rate))
        if self.train_te:
            lr_te = o.learning_rate_te if o.learning_rate_te is not None else o.learning_rate
            groups.append(group("text_encoder", self.model.text_encoder, lr_te))
        if self.hypernetwork is not None:
            lr_h = self.cfg.hypernetwork.learning_rate
            groups.append(group("hypernetwork", self.hypernetwork, lr_h if lr_h is not None else o.learning_rate))
        return groups

    def _build_optimizer(self) -> None:
        o, t = self.cfg.optimizer, self.cfg.train
        groups = self.trainable_parameters()
        if not groups:
            raise ValueError("nothing to train: check train.mode and train.train_text_encoder")
        self.trained_params = [p for g in groups for p in g["params"]]
        self.lr_group_names = [g["name"] for g in groups]   # for the per-group learning rates logged
        optimizer = build_optimizer(o.type, [{"params": g["params"], "lr": g["lr"]} for g in groups],
                                    o.learning_rate, o.args, self.device.type)
        self.lr_scheduler = build_scheduler(
            o.lr_scheduler, optimizer, total_steps=self.schedule.total_steps, warmup=o.lr_warmup_steps,
            num_cycles=o.lr_scheduler_num_cycles, power=o.lr_scheduler_power, args=o.lr_scheduler_args,
        )
        if self.hypernetwork is not None:
            # Nothing trainable for DDP to wrap; train_step averages the hypernetwork's grads.
            self.unet, self.text_encoder = self.model.unet, self.model.text_encoder
            self.optimizer = self.accelerator.prepare(optimizer)
        else:
            modules = [self.model.unet] + ([self.model.text_encoder] if self.train_te else [])
            prepared = self.accelerator.prepare(*modules, optimizer)
            self.unet = prepared[0]
            self.text_encoder = prepared[1] if self.train_te else self.model.text_encoder
            self.optimizer = prepared[-1]
        self.prompt_encoder.text_encoder = self.text_encoder
        self.ema = None
        if t.ema:
            named = [pair for g in groups for pair in g["named"]]
            self.ema = EMA(named, t.ema_decay, t.ema_update_every, t.ema_cpu_offload)

    # ================================================================ resume

    def math_hash(self, seed: int | None = None) -> str:
        """Hash of the options that change a step's maths; ``seed`` replaces the run's seed (to
        tell a changed seed apart from other changes)."""
        cfg = self.cfg
        train = {k: v for k, v in vars(cfg.train).items()
                 if k not in ("output_dir", "output_name", "resume", "max_train_steps", "max_train_epochs")}
        if seed is not None:
            train["seed"] = seed
        relevant = {
            "train": train,
            "optimizer": {k: v for k, v in vars(cfg.optimizer).items()},
            "model": {k: getattr(cfg.model, k) for k in ("clip_skip", "max_token_length")},
            "v_prediction": self.v_prediction,
            "mixed_precision": self.precision.mixed_precision,
        }
        if cfg.train.mode == "hypernetwork":
            relevant["hypernetwork_lr"] = cfg.hypernetwork.learning_rate
        return training_math_hash(relevant)

    def _trainables(self) -> dict:
        out = {}
        if self.cfg.train.mode == "full":
            out["unet"] = self.accelerator.unwrap_model(self.unet)
        if self.train_te:
            out["text_encoder"] = self.accelerator.unwrap_model(self.text_encoder)
        if self.hypernetwork is not None:
            out["hypernetwork"] = self.hypernetwork
        return out

    def _restore(self) -> None:
        if not self.resume:
            return
        skipped: list[str] = []
        folder = find_state_folder(self.resume, self.run_dir, self.cfg.base_dir, skipped)
        for reason in skipped:
            self.say(f"skipped a newer state that does not verify: {reason}", "warning")
        if folder is None and skipped:
            raise StateError(f"no saved state of {self.run_dir} verifies ({len(skipped)} damaged); "
                             "resume from a state folder you trust with --resume STATE_DIR, or delete them to start over")
        if folder is None:
            self.say("train.resume = \"latest\" but no saved state was found: starting from step 0", "warning")
            return
        saved = read_counters(folder)
        changes = []
        if saved.seed != self.seed:   # only when the file sets a seed: else the runner reused the state's
            changes.append(f"train.seed (the state was trained with {saved.seed}, the file says {self.seed})")
        if saved.config_hash != self.math_hash(seed=saved.seed):
            changes.append("training options (objective, optimizer, precision, prompts)")
        if saved.dataset_fingerprint != self.data.fingerprint:
            changes.append("the dataset (images, captions or buckets)")
        if changes and not self.allow_changed:
            raise ValueError(
                f"cannot resume from {folder}: changed since it was saved: {', '.join(changes)}. "
                "Undo the change, or pass --allow-changed to continue anyway"
            )
        notes: list[str] = []
        counters = load_state(folder, trainables=self._trainables(), optimizer=self.optimizer,
                              scheduler=self.lr_scheduler, scaler=self.accelerator.scaler, ema=self.ema,
                              notes=notes)
        for note in notes:
            self.say(note, "warning")
        self.seed = counters.seed
        self.global_step = counters.global_step
        self.epoch = counters.epoch
        self.batches_done = counters.batches_done
        self.loss_avg = counters.loss_avg
        if self.lr_scheduler.last_epoch != self.global_step:
            self.say("max_train_steps changed: the learning-rate schedule was rebuilt at the restored step", "warning")
        self.say(f"resumed from {folder} at step {self.global_step} (epoch {self.epoch + 1})")

    # ================================================================ the loop

    def run(self) -> str:
        """Train to the end or to a stop; returns "completed" or "stopped"."""
        s = self.schedule
        self.sink.emit(RunStarted(
            run_dir=str(self.run_dir), total_steps=s.total_steps, total_epochs=s.total_epochs,
            steps_per_epoch=s.steps_per_epoch, num_images=self.data.num_images,
            batch_size=self._batch_size(), device=str(self.device), start_step=self.global_step,
            model=self.model.source,
        ))
        self.sink.emit(StatusChanged(status="running"))
        from engine.train.checkpoints import Checkpointer
        from engine.train.sampling import Sampler

        self.checkpointer = Checkpointer(self)
        self.sampler = Sampler(self)
        if self.cfg.sample.at_first and self.global_step == 0:
            self.sampler.sample()
        try:
            self.loop()
        except StopTraining:
            self.finish_stopped()
            return "stopped"
        self.finish_completed()
        return "completed"

    @property
    def event_epoch(self) -> int:
        """The 1-based epoch of the last completed step, as the step lines number it: every
        event (step, saved, run_finished) reports this. ``self.epoch`` counts finished epochs,
        so mid-epoch it is one less than the epoch being trained."""
        if self.batches_done == 0 and self.epoch > 0:
            return self.epoch   # just after an epoch's end: its last step belongs to it
        return self.epoch + 1

    def _batch_size(self) -> int:
        sizes = [getattr(d, "batch_size", 1) for d in getattr(self.cfg.datasets, "datasets", [])]
        return max(sizes) if sizes else 1

    def loop(self) -> None:
        s, accum = self.schedule, self.cfg.train.gradient_accumulation_steps
        self.meter = IntervalMeter(self.global_step)
        with Prefetcher(self.load_group, self.cfg.data.num_workers) as prefetch:
            while self.global_step < s.total_steps:
                epoch = self.epoch + 1  # data epochs are 1-based
                plan = self._process_share(self.data.epoch_plan(epoch))
                position = self.batches_done
                while position < len(plan) and self.global_step < s.total_steps:
                    group = plan[position:position + accum]
                    batches = prefetch.get((epoch, position), group, epoch, self.global_step, position)
                    following = position + len(group)
                    if following < len(plan):   # the next step's batches load while this one trains
                        prefetch.request((epoch, following), plan[following:following + accum], epoch,
                                         self.global_step + 1, following)
                    self.train_step(batches)
                    position = following
                    self.batches_done = position
                    self.after_step()
                self._end_epoch()

    def load_group(self, group: list, epoch: int, step: int, position: int) -> list:
        """The micro-batches of one optimizer step (a pure function: safe to run early)."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        # Per-sample randomness is seeded by the batch's place in the whole epoch's plan, so
        # each process draws its own flips, crops and caption shuffles (see _process_share).
        return [self.data.load_batch(ref, epoch=epoch, global_step=step, position=(position + i) * world + rank)
                for i, ref in enumerate(group)]

    def _process_share(self, plan: list) -> list:
        """This process's batches: every world-th batch, padded so all ranks step together."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        if world == 1:
            return plan
        per_rank = math.ceil(len(plan) / world)
        padded = plan + plan[: per_rank * world - len(plan)]
        return padded[rank::world]

    def _end_epoch(self) -> None:
        if self.global_step >= self.schedule.total_steps and self.batches_done < self.schedule.batches_per_epoch:
            return  # the run ended inside this epoch
        self.epoch += 1
        self.batches_done = 0
        self.checkpointer.on_epoch_end(self.epoch)
        if self.cfg.sample.every_n_epochs and self.epoch % self.cfg.sample.every_n_epochs == 0:
            self.sampler.sample()

    def train_step(self, batches: list) -> None:
        """One optimizer step over loaded micro-batches (gradient accumulation)."""
        accum = self.cfg.train.gradient_accumulation_steps
        for micro, batch in enumerate(batches):
            generator = torch.Generator().manual_seed(
                step_seed(self.seed, self.global_step, micro, self.accelerator.process_index))
            last = micro == len(batches) - 1
            sync = nullcontext() if last else self.accelerator.no_sync(self.unet)
            with sync:
                loss = self.compute_loss(batch, generator)
                self.accelerator.backward(loss / accum)
            self.meter.add_micro(loss.detach(), len(batch.captions))
        if self.hypernetwork is not None and self.accelerator.num_processes > 1:
            for p in self.trained_params:   # no DDP wrapper in hypernetwork mode: average by hand
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        grad_norm = None
        if self.cfg.optimizer.max_grad_norm > 0:
            grad_norm = self.accelerator.clip_grad_norm_(self.trained_params, self.cfg.optimizer.max_grad_norm)
        # From here to the end of the step the weights, optimizer and counters change together:
        # a failure inside leaves no consistent state to save (see save_after_failure).
        self.consistent = False
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.meter.end_step(grad_norm)
        if self.ema is not None:
            self.ema.update(self.global_step)
        self._maybe_stop_text_encoder()
        self.consistent = True

    def latents_of(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents: from the cache, or encoded now (live subsets) with the posterior
        sample drawn from the step's generator, so live runs resume exactly too."""
        if batch.latents is not None:
            z = batch.latents.to(self.device, torch.float32)
        else:
            vae = self.model.vae
            if next(vae.parameters()).device != self.device:
                vae.to(self.device)
            with torch.no_grad():
                pixels = batch.pixels.to(self.device, self.precision.vae_dtype)
                posterior = vae.encode(pixels).latent_dist
                mean, std = posterior.mean.float(), posterior.std.float()
            xi = torch.randn(mean.shape, generator=generator) if generator is not None else torch.randn(mean.shape)
            z = mean + std * xi.to(mean.device)
        return z * self.latent_scale

    def compute_loss(self, batch, generator: torch.Generator) -> torch.Tensor:
        """The training objective for one micro-batch."""
        t_cfg = self.cfg.train
        x0 = self.latents_of(batch, generator)
        noise_opts, loss_opts = self.noise_options, self.loss_options
        noise = obj.make_noise(x0, noise_opts, generator)
        timesteps = obj.sample_timesteps(x0.shape[0], t_cfg.min_timestep, t_cfg.max_timestep, generator).to(self.device)
        noisy = obj.add_noise(x0, obj.perturb_input_noise(noise, noise_opts, generator), timesteps, self.cumprod)
        with self.accelerator.autocast():
            grad_ctx = nullcontext() if self.train_te else torch.no_grad()
            with grad_ctx:
                context = self.prompt_encoder(batch.captions, self.device, self.precision.weight_dtype
                                              if not self.train_te else None)
            pred = self.unet(noisy.to(self.unet_dtype), timesteps, context.to(self.unet_dtype)).sample
        target = obj.target_for(x0, noise, timesteps, self.cumprod, self.v_prediction)
        elements = obj.element_loss(pred, target, timesteps, loss_opts, self.cumprod)
        weights = obj.loss_weights(timesteps, self.snr, loss_opts, self.v_prediction)
        return obj.reduce_loss(elements, weights)

    @property
    def unet_dtype(self) -> torch.dtype:
        return next(self.model.unet.parameters()).dtype

    def _maybe_stop_text_encoder(self) -> None:
        stop_at = self.cfg.train.stop_text_encoder_training
        if self.train_te and stop_at and self.global_step == stop_at:
            self.model.text_encoder.requires_grad_(False)
            self.model.text_encoder.eval()
            self.say(f"text encoder frozen after step {stop_at} (train.stop_text_encoder_training)")

    def after_step(self) -> None:
        """Logging, saving, sampling and the RunControl checks, at a step boundary."""
        every = self.cfg.logging.every_n_steps
        if self.global_step % every == 0 or self.global_step == self.schedule.total_steps:
            self.emit_metrics()
        else:
            self.sink.emit(StepProgress(step=self.global_step, total_steps=self.schedule.total_steps,
                                        epoch=self.event_epoch, elapsed_s=self.meter.elapsed()))
        self.checkpointer.on_step_end(self.global_step)
        sample_every = self.cfg.sample.every_n_steps
        if sample_every and self.global_step % sample_every == 0:
            self.sampler.sample()
        self.poll_control()

    def poll_control(self) -> None:
        control = self.control
        if control.take_save_request():
            self.checkpointer.save_model(kind="manual")
        if control.take_sample_request():
            self.sampler.sample()
        if control.paused:
            self.sink.emit(StatusChanged(status="paused"))
            control.wait_while_paused()
            if not control.stop_requested:
                self.sink.emit(StatusChanged(status="running"))
                self.meter.restart_clock()
        if control.stop_requested:
            self.sink.emit(StatusChanged(status="stopping"))
            raise StopTraining(control.stop_reason)

    def emit_metrics(self) -> None:
        m = self.meter.collect()
        if m is None:
            return
        # The interval's one GPU->CPU sync; with several processes, the mean over all of them.
        m["loss"] = self.accelerator.reduce(m["loss"].detach().float(), reduction="mean").item()
        decay = SMOOTHING ** m["steps"]
        self.loss_avg = m["loss"] if self.loss_avg is None else decay * self.loss_avg + (1 - decay) * m["loss"]
        remaining = self.schedule.total_steps - self.global_step
        vram = device_memory(self.device)
        self.sink.emit(StepMetrics(
            step=self.global_step, total_steps=self.schedule.total_steps, epoch=self.event_epoch,
            loss=m["loss"], loss_avg=self.loss_avg, lr=self.lr_scheduler.get_last_lr()[0],
            lrs=dict(zip(self.lr_group_names, self.lr_scheduler.get_last_lr())),
            grad_norm=m["grad_norm"], it_per_s=m["it_per_s"],
            samples_per_s=m["samples_per_s"] * self.accelerator.num_processes,
            eta_s=remaining / m["it_per_s"] if m["it_per_s"] > 0 else 0.0,
            elapsed_s=self.meter.elapsed(), **vram,
        ))

    # ================================================================ teardown

    def counters(self, stopped: bool = False) -> Counters:
        return Counters(self.global_step, self.epoch, self.batches_done, self.seed, self.math_hash(),
                        self.data.fingerprint, self.loss_avg, stopped)

    def write_state(self, stopped: bool = False) -> str | None:
        if not self.is_main:
            return None
        name = f"{self.cfg.train.output_name}-step{self.global_step:08d}-state"
        folder = self.run_dir / "state" / name
        save_state(folder, trainables=self._trainables(), optimizer=self.optimizer, scheduler=self.lr_scheduler,
                   scaler=self.accelerator.scaler, ema=self.ema, counters=self.counters(stopped),
                   config_text=self.config_text)
        self.last_state_path = str(folder)
        self.checkpointer.rotate_states()
        self.sink.emit(ModelSaved(path=str(folder), what="state", step=self.global_step, epoch=self.event_epoch))
        return str(folder)

    def finish_completed(self) -> None:
        self.accelerator.wait_for_everyone()
        self.checkpointer.save_model(kind="final")
        if self.cfg.save.state_on_train_end:
            self.write_state()

    def save_after_failure(self) -> str | None:
        """After a crash, keep the last completed step as a resumable state when that is safe:
        a failure in loading, forward or backward leaves weights and optimizer as they were
        after the previous step; one inside the optimizer step does not, so nothing is written."""
        if not self.consistent or self.global_step == 0 or not hasattr(self, "optimizer"):
            return None
        if self.global_step == self.schedule.total_steps:
            return None  # training had finished: the failure came after it (e.g. the final save)
        try:
            return self.write_state(stopped=True)
        except Exception:  # noqa: BLE001 - the original failure is what the user must see
            return None

    def finish_stopped(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.control.save_state_on_stop and self.cfg.save.state_on_stop:
            path = self.write_state(stopped=True)
            config = self.cfg.source_path or "RUN.toml"
            self.say(f"stopped at step {self.global_step}; resume with: sdft train {config} --resume {path}")


__all__ = ["Trainer", "StopTraining", "resolve_seed", "step_seed"]
