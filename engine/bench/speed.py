"""`sdft bench`: how fast does a run train, and what does the engine add over a bare loop?

Two timings on the same model, data and device:
- engine: the Trainer's real step (batch loading, caption processing, objective, logging,
  control polling) as a run does it;
- bare: forward, MSE loss, backward and optimizer step on pre-loaded batches, nothing else.
The ratio is the engine's overhead. On CUDA it also reports peak memory and the model FLOP
utilisation (FLOPs per sample counted by torch's FLOP counter over one training step).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from engine.control import RunControl
from engine.events import ListSink
from engine.families import family_of
from engine.train import forward
from engine.train.context import RunParts, StepContext, StepHook


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_tflops(device: torch.device, memory) -> float | None:
    from engine.bench.gpu_peaks import compute_dtype, peak_tflops

    if device.type != "cuda":
        return None
    dtype = compute_dtype(memory.mixed_precision, memory.full_bf16, memory.allow_tf32)
    return peak_tflops(torch.cuda.get_device_name(device), dtype)[0]


def _cycled_plan(data, count: int) -> list:
    plan = []
    epoch = 1
    while len(plan) < count:
        plan.extend(data.epoch_plan(epoch))
        epoch += 1
    return plan[:count]


class BenchTimer(StepHook):
    """A step hook: the clock starts after ``warmup`` steps; counts the samples trained since,
    and the optimizer steps the fp16 gradient scaler skipped (an overflow: no update was made),
    as the learning-rate schedule counted them (engine/train/lr_steps.py)."""

    def __init__(self, warmup: int, schedule=None):
        self.warmup = warmup
        self.schedule = schedule
        self.start: float | None = None
        self.seconds = 0.0
        self.samples = 0
        self.steps = 0
        self.skipped_steps = 0

    def _skipped_so_far(self) -> int:
        if self.schedule is None:
            return 0
        self.schedule.settle()
        return self.schedule.skipped

    def begin(self) -> None:
        self.skipped_steps = -self._skipped_so_far()
        self.start = time.perf_counter()

    def on_step(self, ctx: StepContext) -> None:
        if self.start is not None:
            self.samples += ctx.samples
            self.steps += 1
        if ctx.step == self.warmup:
            _sync(ctx.parts.device)
            self.begin()

    def end(self, device: torch.device) -> None:
        _sync(device)
        self.seconds = time.perf_counter() - self.start
        self.skipped_steps += self._skipped_so_far()


def run_timed(trainer, warmup: int) -> BenchTimer:
    """The real training loop (batch prefetching, caption processing, logging, control polling)
    to the schedule's end, timed after ``warmup`` untimed steps."""
    timer = BenchTimer(warmup, trainer.parts.bundle.lr_scheduler)
    if warmup == 0:
        timer.begin()
    trainer.loop(trainer.standard_hooks() + [timer])
    timer.end(trainer.parts.device)
    return timer


def time_engine(trainer, warmup: int) -> tuple[float, int]:
    """Seconds and samples of the real training loop after ``warmup`` untimed steps."""
    timer = run_timed(trainer, warmup)
    return timer.seconds, timer.samples


def time_bare(parts: RunParts, steps: int, warmup: int) -> tuple[float, int]:
    """The same maths with nothing around it: pre-loaded latents and captions."""
    plan = _cycled_plan(parts.data, steps + warmup)
    batches = [parts.data.load_batch(ref, epoch=1, global_step=0, position=i) for i, ref in enumerate(plan)]
    unet, optimizer = parts.bundle.unet, parts.bundle.optimizer
    cumprod, device = parts.components.noise.cumprod, parts.device
    dtype = forward.unet_dtype(parts)
    family = family_of(parts.components.model)
    samples = 0
    start = None
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
            samples = 0
        x0 = forward.latents_of(parts, batch)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        a = cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with parts.accelerator.autocast():
            with torch.no_grad():
                text = parts.components.prompt_encoder(batch.captions, device)
            context, extra = family.unet_inputs(parts.components.model, batch, text, dtype)
            pred = unet(noisy.to(dtype), t, context, **extra).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        parts.accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += x0.shape[0]
    _sync(device)
    return time.perf_counter() - start, samples


def flops_per_sample(parts: RunParts) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    ref = parts.data.epoch_plan(1)[0]
    batch = parts.data.load_batch(ref, epoch=1, global_step=0, position=0)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = forward.compute_loss(parts, batch, torch.Generator().manual_seed(0))
        parts.accelerator.backward(loss)
    parts.bundle.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch.captions)


def for_timing(config, steps: int, warmup: int):
    """A run config set up to be timed: ``warmup + steps`` steps, nothing saved or sampled."""
    config.train.seed = config.train.seed or 0
    config.sample.prompts = None          # no sampling inside the timed loop
    config.save.every_n_steps = config.save.every_n_epochs = None
    config.train.max_train_steps, config.train.max_train_epochs = warmup + steps, None
    return config


def run_bench(config_path: str | Path, steps: int = 20, warmup: int = 3, progress=None) -> dict:
    from engine.config.run_toml import load_run_file
    from engine.train.trainer import Trainer

    say = progress or (lambda _text: None)
    config, document, _ = load_run_file(config_path)
    config = for_timing(config, steps, warmup)
    say(f"sdft bench: loading {config.model.pretrained_model_name_or_path} and the data of {config_path}")
    trainer = Trainer(config, config_text="", sink=ListSink(), control=RunControl())
    trainer.setup()
    device = trainer.parts.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    say(f"sdft bench: timing the engine's loop on {device.type}: {warmup} warm-up + {steps} timed steps")
    engine_s, engine_samples = time_engine(trainer, warmup)
    say(f"sdft bench: engine {steps / engine_s:.3f} steps/s; timing the bare loop ({warmup} + {steps} steps)")
    bare_s, bare_samples = time_bare(trainer.parts, steps, warmup)
    say(f"sdft bench: bare loop {steps / bare_s:.3f} steps/s")
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "steps": steps,
        "engine_steps_per_s": steps / engine_s,
        "engine_samples_per_s": engine_samples / engine_s,
        "bare_steps_per_s": steps / bare_s,
        "bare_samples_per_s": bare_samples / bare_s,
        "engine_overhead": (engine_s / engine_samples) / (bare_s / bare_samples) - 1.0,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "mixed_precision": trainer.parts.precision.mixed_precision,
        "attention": trainer.parts.components.attention,
    }
    if device.type == "cuda":
        say("sdft bench: counting the FLOPs of one training step")
        flops = flops_per_sample(trainer.parts)
        peak = _peak_tflops(device, config.memory)
        result["flops_per_sample"] = flops
        result["mfu"] = flops * result["engine_samples_per_s"] / (peak * 1e12) if (flops and peak) else None
    return result

