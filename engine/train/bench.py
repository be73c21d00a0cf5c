"""`sdft bench`: how fast does a run train, and what does the engine add over a bare loop?

Two timings on the same model, data and device:
- engine: the Trainer's real step (batch loading, caption processing, objective, logging,
  control polling) as a run does it;
- bare: forward, MSE loss, backward and optimizer step on pre-loaded batches, nothing else.
The ratio is the engine's overhead. On CUDA it also reports peak memory and the model FLOP
utilisation (FLOPs per sample counted by torch's FLOP counter over one training step).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from engine.control import RunControl
from engine.events import ListSink

# Dense bf16/fp16 tensor-core peaks (vendor datasheets), for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0, "3090": 71.0,
               "A10": 125.0, "T4": 65.0, "V100": 125.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def _cycled_plan(trainer, count: int) -> list:
    plan = []
    epoch = 1
    while len(plan) < count:
        plan.extend(trainer.data.epoch_plan(epoch))
        epoch += 1
    return plan[:count]


def time_engine(trainer, steps: int, warmup: int) -> tuple[float, int]:
    """Seconds and samples for ``steps`` steps of the real training loop (batch prefetching,
    caption processing, logging, control polling), after ``warmup`` untimed steps."""
    counted = {"samples": 0, "start": None}
    train_step, after_step = trainer.train_step, trainer.after_step

    def counting_step(batches):
        train_step(batches)
        if counted["start"] is not None:
            counted["samples"] += sum(len(b.captions) for b in batches)

    def timed_after_step():
        after_step()
        if trainer.global_step == warmup:
            _sync(trainer.device)
            counted["start"] = time.perf_counter()

    trainer.train_step, trainer.after_step = counting_step, timed_after_step
    try:
        trainer.loop()
    finally:
        trainer.train_step, trainer.after_step = train_step, after_step
    _sync(trainer.device)
    return time.perf_counter() - counted["start"], counted["samples"]


def time_bare(trainer, steps: int, warmup: int) -> tuple[float, int]:
    """The same maths with nothing around it: pre-loaded latents and captions."""
    plan = _cycled_plan(trainer, steps + warmup)
    batches = [trainer.data.load_batch(ref, epoch=1, global_step=0, position=i) for i, ref in enumerate(plan)]
    unet, optimizer = trainer.unet, trainer.optimizer
    cumprod = trainer.cumprod
    samples = 0
    start = None
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(trainer.device)
            start = time.perf_counter()
            samples = 0
        x0 = trainer.latents_of(batch)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=trainer.device)
        a = cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with trainer.accelerator.autocast():
            with torch.no_grad():
                context = trainer.prompt_encoder(batch.captions, trainer.device)
            pred = unet(noisy.to(trainer.unet_dtype), t, context.to(trainer.unet_dtype)).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        trainer.accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += x0.shape[0]
    _sync(trainer.device)
    return time.perf_counter() - start, samples


def flops_per_sample(trainer) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    ref = trainer.data.epoch_plan(1)[0]
    batch = trainer.data.load_batch(ref, epoch=1, global_step=0, position=0)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = trainer.compute_loss(batch, torch.Generator().manual_seed(0))
        trainer.accelerator.backward(loss)
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch.captions)


def run_bench(config_path: str | Path, steps: int = 20, warmup: int = 3) -> dict:
    from engine.config.run_toml import load_run_file
    from engine.train.checkpoints import Checkpointer
    from engine.train.sampling import Sampler
    from engine.train.trainer import Trainer

    config, document, _ = load_run_file(config_path)
    config.train.seed = config.train.seed or 0
    config.sample.prompts = None          # no sampling inside the timed loop
    config.save.every_n_steps = config.save.every_n_epochs = None
    config.train.max_train_steps, config.train.max_train_epochs = warmup + steps, None
    trainer = Trainer(config, config_text="", sink=ListSink(), control=RunControl())
    trainer.setup()
    trainer.checkpointer, trainer.sampler = Checkpointer(trainer), Sampler(trainer)
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    engine_s, engine_samples = time_engine(trainer, steps, warmup)
    bare_s, bare_samples = time_bare(trainer, steps, warmup)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "steps": steps,
        "engine_steps_per_s": steps / engine_s,
        "engine_samples_per_s": engine_samples / engine_s,
        "bare_steps_per_s": steps / bare_s,
        "bare_samples_per_s": bare_samples / bare_s,
        "engine_overhead": (engine_s / engine_samples) / (bare_s / bare_samples) - 1.0,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "mixed_precision": trainer.precision.mixed_precision,
    }
    if device.type == "cuda":
        flops = flops_per_sample(trainer)
        peak = _peak_tflops(device)
        result["flops_per_sample"] = flops
        result["mfu"] = flops * result["engine_samples_per_s"] / (peak * 1e12) if (flops and peak) else None
    return result


def bench_command(args) -> int:
    from rich.console import Console
    from rich.table import Table

    config = args.config
    if config is None:
        from engine.demo import prepare_demo

        config = prepare_demo("sdft-demo")
    result = run_bench(config, steps=args.steps, warmup=args.warmup)
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"sdft bench: {config} on {result['device']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("engine steps/s", f"{result['engine_steps_per_s']:.3f}")
    table.add_row("engine samples/s", f"{result['engine_samples_per_s']:.3f}")
    table.add_row("bare loop samples/s", f"{result['bare_samples_per_s']:.3f}")
    table.add_row("engine overhead", f"{result['engine_overhead'] * 100:+.1f}%")
    if result.get("peak_memory_bytes"):
        table.add_row("peak memory", f"{result['peak_memory_bytes'] / 2**30:.2f} GiB")
    if result.get("mfu") is not None:
        table.add_row("model FLOP utilisation", f"{result['mfu'] * 100:.1f}%")
    Console().print(table)
    return 0
