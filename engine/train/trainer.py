"""The fine-tuning loop: setup, loop, teardown.

Read top to bottom: :meth:`Trainer.setup` builds the run's parts once (components.py,
optimizer_bundle.py, schedule.py) and restores a state (resume.py); :meth:`Trainer.loop` runs
optimizer steps and calls the step hooks (hooks.py, checkpoints.py) with a read-only
:class:`~engine.train.context.StepContext`; :meth:`Trainer.run` ends with the final save. The
objective lives in ``objective.py`` and ``forward.py``. The loop talks to the outside world only
through an event sink and a :class:`~engine.control.RunControl`.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack, nullcontext

import torch

from engine.config.schema import RunConfig
from engine.control import RunControl
from engine.control_file import ControlFileReader
from engine.data.parts import rank_part
from engine.events import PhaseProgress, StatusChanged
from engine.families import family_of
from engine.prefetch import Prefetcher
from engine.train import forward
from engine.train.components import (
    Components,
    build_prompt_encoder,
    cache_latents,
    cache_text_outputs,
    default_side,
    load_base_model,
    prepare_modules,
    trains_text_encoder,
)
from engine.train.context import (
    RunParts,
    StepContext,
    StepHook,
    StopTraining,
    TrainingThreadSay,
    event_epoch,
)
from engine.train.distributed import ControlAgreement, ddp_timeout_minutes
from engine.train.divergence import DivergenceWatch
from engine.train.hooks import ControlHook, MetricsHook, SampleHook, run_started
from engine.train.metrics import IntervalMeter, interval_figures
from engine.train.optimizer_bundle import build_bundle, lr_scale, shards, trained_modules
from engine.train.precision import start_accelerator
from engine.train.saves.checkpoints import Checkpointer
from engine.train.saves.resume import parts_math_hash, restore
from engine.train.schedule import resolve_schedule
from engine.train.seeds import resolve_seed, seed_global_generators
from engine.train.transfer import pin_batch
from engine.train.validation import ValidationHook
from engine.vocabulary import ControlStatus, Phase, RunStatus


def step_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the generator for one micro-batch: a pure function, so resume is exact, and the same
    in every process of a run, which draw for the whole global batch (engine/data/parts.py). (The
    "/0" is where a process number once was: single-process runs draw as they always did.)"""
    digest = hashlib.blake2b(f"{seed}/{step}/{micro}/0".encode(), digest_size=8).digest()
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
        self.seed = config.train.seed
        self.global_step = self.epoch = self.batches_done = 0
        self.loss_avg: float | None = None
        self.consistent = True   # False only while an optimizer step is being applied
        self.parts: RunParts | None = None
        self.checkpointer: Checkpointer | None = None
        self.meter = IntervalMeter(0)
        self.say = TrainingThreadSay(sink)
        self.agreement = ControlAgreement()   # one process until setup knows better

    # ================================================================ setup

    def _phase(self, name: str, done: int, total: int) -> None:
        self.sink.emit(PhaseProgress(name=name, done=done, total=total))

    def setup(self) -> None:
        from engine.data.pipeline import TrainingData

        cfg = self.cfg
        self.say.bind()   # setup and the loop run on the training thread
        if self.seed is not None:
            seed_global_generators(self.seed)
        accelerator, precision = start_accelerator(cfg, self.say)
        self._phase(Phase.LOADING_MODEL, 0, 1)
        model, noise = self.load_base(accelerator.device)
        self._phase(Phase.LOADING_MODEL, 1, 1)
        side = default_side(model, noise)
        data = TrainingData.from_config(cfg, default_resolution=(side, side), family=family_of(model),
                                        log=lambda text: self.say(text))
        data.use_processes(accelerator.num_processes)   # plan at the global batch (engine/data/parts.py)
        schedule = resolve_schedule(cfg.train, data.batches_per_epoch())
        data.use_schedule(schedule.total_steps)   # a fractional token_warmup_step is a ratio of it
        components = Components(model, build_prompt_encoder(cfg, model, self.say), noise,
                                trains_text_encoder(cfg, model))
        self.agreement = ControlAgreement(accelerator.num_processes, ddp_timeout_minutes(cfg.train))
        cache_latents(data, model.vae, accelerator, precision, self._latents_progress, self.agreement)
        components = prepare_modules(components, cfg, precision, accelerator.device, self.seed, self.say)
        components = cache_text_outputs(components, cfg, data, accelerator, precision, self.say)
        bundle = build_bundle(cfg, components, accelerator, schedule.total_steps)
        scale = lr_scale(cfg, accelerator.num_processes)
        if scale != 1.0:
            self.say(f"learning rates x{scale:g} for the global batch (optimizer.scale_lr = {cfg.optimizer.scale_lr!r})")
        watch = DivergenceWatch(cfg, precision.mixed_precision, bundle, accelerator.device, accelerator.scaler)
        self.parts = RunParts(cfg, self.config_text, self.run_dir, self.sink, accelerator, precision,
                              components, bundle, data, schedule, watch)
        self.checkpointer = Checkpointer(self.parts)
        if self.resume:
            counters = restore(self.parts, self.resume, self.seed, self.allow_changed, self.agreement)
            if counters is not None:
                self.seed, self.global_step, self.epoch = counters.seed, counters.global_step, counters.epoch
                self.batches_done, self.loss_avg = counters.batches_done, counters.loss_avg
        self.math_hash = parts_math_hash(self.parts, cfg.train.seed)

    def load_base(self, device: torch.device):
        """The base model and its noise tables (``sdft bench`` overrides it to reuse one built model)."""
        return load_base_model(self.cfg, device, self.say)

    def _latents_progress(self, done: int, total: int) -> None:
        self._phase(Phase.CACHING_LATENTS, done, total)
        if self.control.stop_requested:   # at the next entry: what was encoded stays for the next run
            raise StopTraining(f"{self.control.stop_reason} while caching latents, before training started: the "
                               f"{done} of {total} latents encoded so far are kept in the cache, and the next "
                               "run reuses them")

    # ================================================================ the loop

    def standard_hooks(self) -> list[StepHook]:
        """Metrics, the validation loss, checkpoints, sampling and control polling, in the order they act."""
        from engine.train.sampling import Sampler

        self.sampler = Sampler(self.parts, should_stop=lambda: self.control.stop_requested)
        requests = ControlFileReader(self.run_dir) if self.parts.is_main else None
        control = ControlHook(self.control, self.agreement, self.sink, self.checkpointer, self.sampler,
                              on_resumed=lambda: self.meter.restart_clock(), requests=requests)
        validation = ValidationHook(self.parts, self.seed)
        return [MetricsHook(self.parts), validation, self.checkpointer, SampleHook(self.sampler), control]

    def run(self) -> str:
        """Train to the end or to a stop; returns "completed" or "stopped"."""
        from engine.start_up_gc import resume_collector

        p = self.parts
        resume_collector()   # start-up is over (engine/start_up_gc.py)
        self.sink.emit(run_started(p, self.global_step))
        self.sink.emit(StatusChanged(status=ControlStatus.RUNNING))
        hooks = self.standard_hooks()
        if self.cfg.sample.at_first and self.global_step == 0:
            self.sampler.sample(self.context())
        try:
            self.loop(hooks)
        except StopTraining:
            self.finish_stopped()
            return RunStatus.STOPPED
        p.accelerator.wait_for_everyone()
        self.checkpointer.save_model(self.context(), kind="final")
        if self.cfg.save.state_on_train_end:
            self.checkpointer.write_state(self.context())
        return RunStatus.COMPLETED

    @property
    def event_epoch(self) -> int:
        return event_epoch(self.epoch, self.batches_done)

    @property
    def last_model_path(self) -> str | None:
        return self.checkpointer.last_model_path if self.checkpointer else None

    @property
    def last_state_path(self) -> str | None:
        return self.checkpointer.last_state_path if self.checkpointer else None

    def context(self, samples: int = 0, figures: dict | None = None) -> StepContext:
        """A read-only snapshot of where the run is, for the hooks."""
        return StepContext(self.parts, self.global_step, self.epoch, self.batches_done, self.seed,
                           self.loss_avg, self.math_hash, samples, figures, self.meter.elapsed())

    def loop(self, hooks: list[StepHook]) -> None:
        s, accum = self.parts.schedule, self.cfg.train.gradient_accumulation_steps
        self.meter = IntervalMeter(self.global_step)
        with Prefetcher(self.load_group, self.cfg.data.num_workers) as prefetch:
            while self.global_step < s.total_steps:
                epoch = self.epoch + 1  # data epochs are 1-based
                plan = self.parts.data.epoch_plan(epoch)   # global batches: every process takes a part
                position = self.batches_done
                while position < len(plan) and self.global_step < s.total_steps:
                    group = plan[position:position + accum]
                    batches = prefetch.get((epoch, position), group, epoch, self.global_step, position)
                    self.say.flush()
                    following = position + len(group)
                    if following < len(plan):   # the next step's batches load while this one trains
                        prefetch.request((epoch, following), plan[following:following + accum], epoch,
                                         self.global_step + 1, following)
                    self.train_step(batches)
                    position = following
                    self.batches_done = position
                    ctx = self.context(sum(b.part[2] for b in batches), self._figures_if_due())
                    for hook in hooks:
                        hook.on_step(ctx)
                if self.global_step >= s.total_steps and self.batches_done < s.batches_per_epoch:
                    return  # the run ended inside this epoch
                self.epoch, self.batches_done = self.epoch + 1, 0
                ctx = self.context()
                for hook in hooks:
                    hook.on_epoch(ctx)

    def load_group(self, group: list, epoch: int, step: int, position: int) -> list:
        """The micro-batches of one optimizer step (a pure function: safe to run early)."""
        p = self.parts
        world, rank = p.accelerator.num_processes, p.accelerator.process_index
        # Each process loads its part of every global batch; per-sample randomness is keyed by the
        # batch's place in the epoch's plan and the sample's in the batch (engine/data/parts.py).
        batches = [p.data.load_batch(ref, epoch=epoch, global_step=step, position=position + i,
                                     part=rank_part(len(ref.items), world, rank) if world > 1 else None)
                   for i, ref in enumerate(group)]
        cache = p.components.text_cache
        for batch in batches:   # tokenized (or the cached outputs read) here too, so the training thread only encodes
            if cache is not None:
                batch.text = cache.lookup(batch.captions)
            else:
                batch.tokens = p.components.prompt_encoder.tokenize(batch.captions)
            if p.device.type == "cuda":
                pin_batch(batch)    # so the training thread's copies do not wait (transfer.py)
        return batches

    def train_step(self, batches: list) -> None:
        """One optimizer step over loaded micro-batches (gradient accumulation)."""
        accelerator, b = self.parts.accelerator, self.parts.bundle
        accum = self.cfg.train.gradient_accumulation_steps
        b.update.begin(self.global_step, self.seed)
        # A fused backward pass changes the weights during backward (weight_update.py).
        self.consistent = not b.update.steps_in_backward
        step_loss = 0.0
        for micro, batch in enumerate(batches):
            with self._no_sync_unless(micro == len(batches) - 1):
                loss = self.compute_loss(batch, self.step_generator(micro))
                accelerator.backward(loss / accum)
            # the loss is weighted by this process's share: the mean over processes is the global batch's
            self.meter.add_micro(loss.detach(), batch.part[2])
            step_loss = step_loss + loss.detach()
        if self.parts.components.hypernetwork is not None and accelerator.num_processes > 1:
            for param in b.trained_params:   # no DDP wrapper in hypernetwork mode: average by hand
                if param.grad is not None:
                    param.grad = accelerator.reduce(param.grad, reduction="mean")
        b.lr_scheduler.settle()   # earlier fp16 steps' skip flags, before this step uses the rate
        # From here to the end of the step the weights, optimizer and counters change together:
        # a failure inside leaves no consistent state to save (see save_after_failure).
        self.consistent = False
        outcome = b.update.finish()
        b.lr_scheduler.step_after(outcome)
        b.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.parts.watch.note(self.global_step, step_loss, outcome.grad_norm)   # read at the next check
        self.meter.end_step(outcome.grad_norm)
        if b.ema is not None:
            b.ema.update(self.global_step)
        self._maybe_stop_text_encoder()
        self.consistent = True

    def _no_sync_unless(self, last: bool):
        """Gradients are averaged across processes once per optimizer step, on the last micro-batch:
        the U-Net's and a trained text encoder's alike (sharded ones reduce theirs the same way)."""
        if self.parts.accelerator.num_processes == 1:
            return nullcontext()
        if shards(self.cfg, self.parts.accelerator):
            from engine.train.sharding import requires_sync

            for module in trained_modules(self.parts.components):
                requires_sync(module, last)
            return nullcontext()
        if last:
            return nullcontext()
        stack = ExitStack()
        b = self.parts.bundle
        stack.enter_context(self.parts.accelerator.no_sync(b.unet))
        for text_encoder in b.text_encoders.values():
            stack.enter_context(self.parts.accelerator.no_sync(text_encoder))
        return stack

    def step_generator(self, micro: int) -> torch.Generator:
        """The micro-batch's generator, on the training device: noise and timesteps are drawn
        where they are used (no copy, no wait), from a seed that is a pure function of the step and
        the same in every process (each draws for the whole global batch and keeps its rows)."""
        return torch.Generator(device=self.parts.device).manual_seed(step_seed(self.seed, self.global_step, micro))

    def compute_loss(self, batch, generator: torch.Generator) -> torch.Tensor:
        return forward.compute_loss(self.parts, batch, generator)

    def _maybe_stop_text_encoder(self) -> None:
        stop_at = self.cfg.train.stop_text_encoder_training
        c = self.parts.components
        if c.train_te and stop_at and self.global_step == stop_at:
            for role in c.trained_text_encoders:
                c.text_encoders[role].requires_grad_(False)
                c.text_encoders[role].eval()
            what = "text encoder" if len(c.trained_text_encoders) == 1 else "text encoders"
            self.say(f"{what} frozen after step {stop_at} (train.stop_text_encoder_training)")

    @property
    def is_logging_step(self) -> bool:
        """Every ``logging.every_n_steps`` steps, the last step, and the run's first step, so the
        loss, speed and memory show from the start. Step 1 only, not a resume's first step: a
        resumed run logs the same intervals as one that never stopped."""
        every, total = self.cfg.logging.every_n_steps, self.parts.schedule.total_steps
        return self.global_step % every == 0 or self.global_step in (1, total)

    def _figures_if_due(self) -> dict | None:
        """The logging interval's figures on a logging step (the smoothed loss updated), else None."""
        if not self.is_logging_step:
            return None
        self.parts.watch.check(self.global_step)   # a diverged run stops before it logs NaN figures
        figures, self.loss_avg = interval_figures(self.meter, self.parts.accelerator, self.loss_avg)
        return figures

    # ================================================================ teardown

    def save_after_failure(self) -> str | None:
        """After a crash, keep the last completed step as a resumable state when that is safe:
        a failure in loading, forward or backward leaves weights and optimizer as they were
        after the previous step; one inside the optimizer step does not, so nothing is written."""
        if not self.consistent or self.global_step == 0 or self.parts is None:
            return None
        if self.global_step == self.parts.schedule.total_steps:
            return None  # training had finished: the failure came after it (e.g. the final save)
        try:
            return self.checkpointer.write_state(self.context(), stopped=True)
        except Exception:  # noqa: BLE001 - the original failure is what the user must see
            return None

    def close(self) -> None:
        """Take out what the run installed on the model (the fused backward pass's hooks), so the
        modules can be reused (sdft bench runs many cells on one model)."""
        if self.parts is not None:
            self.parts.bundle.update.close()

    def finish_stopped(self) -> None:
        """Every process stopped at this step (the agreement); the main one writes the state while
        the others wait, so none leaves while it is being written."""
        if self.control.save_state_on_stop and self.cfg.save.state_on_stop:
            path = self.checkpointer.write_state(self.context(), stopped=True)
            config = self.cfg.source_path or "RUN.toml"
            if path:
                self.say(f"stopped at step {self.global_step}; resume with: sdft train {config} --resume {path}")
        self.agreement.barrier()


__all__ = ["StopTraining", "Trainer", "resolve_seed", "step_seed"]
