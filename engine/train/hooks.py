"""The step hooks of a run: metrics, sampling cadence and RunControl polling (checkpoints are
a hook too, in checkpoints.py). Each reads a StepContext; none receives the Trainer."""

from __future__ import annotations

from collections.abc import Callable

from engine.events import RunStarted, StatusChanged, StepMetrics, StepProgress
from engine.train.context import RunParts, StepContext, StepHook, StopTraining
from engine.train.metrics import device_memory
from engine.vocabulary import ControlStatus


class MetricsHook(StepHook):
    """A step line on logging steps (the loop collected the interval's figures), else progress."""

    def __init__(self, parts: RunParts):
        self.parts = parts

    def on_step(self, ctx: StepContext) -> None:
        p, m = self.parts, ctx.figures
        if m is None:
            p.sink.emit(StepProgress(step=ctx.step, total_steps=ctx.total_steps, epoch=ctx.event_epoch,
                                     elapsed_s=ctx.elapsed_s))
            return
        scheduler = p.bundle.lr_scheduler
        remaining = ctx.total_steps - ctx.step
        p.sink.emit(StepMetrics(
            step=ctx.step, total_steps=ctx.total_steps, epoch=ctx.event_epoch,
            loss=m["loss"], loss_avg=ctx.loss_avg, lr=scheduler.get_last_lr()[0],
            lrs=dict(zip(p.bundle.lr_group_names, scheduler.get_last_lr())),
            grad_norm=m["grad_norm"], it_per_s=m["it_per_s"],
            samples_per_s=m["samples_per_s"] * p.accelerator.num_processes,
            eta_s=remaining / m["it_per_s"] if m["it_per_s"] > 0 else 0.0,
            elapsed_s=ctx.elapsed_s, **device_memory(p.device),
        ))


class SampleHook(StepHook):
    """Preview images every ``sample.every_n_steps`` steps and ``every_n_epochs`` epochs."""

    def __init__(self, sampler):
        self.sampler = sampler

    def on_step(self, ctx: StepContext) -> None:
        every = ctx.parts.cfg.sample.every_n_steps
        if every and ctx.step % every == 0:
            self.sampler.sample(ctx)

    def on_epoch(self, ctx: StepContext) -> None:
        every = ctx.parts.cfg.sample.every_n_epochs
        if every and ctx.epoch % every == 0:
            self.sampler.sample(ctx)


class ControlHook(StepHook):
    """RunControl's requests at a step boundary: save, sample, pause, stop (raises StopTraining)."""

    def __init__(self, control, sink, checkpointer, sampler, on_resumed: Callable[[], None]):
        self.control, self.sink = control, sink
        self.checkpointer, self.sampler = checkpointer, sampler
        self.on_resumed = on_resumed   # the loop restarts its speed clock after a pause

    def on_step(self, ctx: StepContext) -> None:
        control = self.control
        if control.take_save_request():
            self.checkpointer.save_model(ctx, kind="manual")
        if control.take_sample_request():
            self.sampler.sample(ctx)
        if control.paused:
            self.sink.emit(StatusChanged(status=ControlStatus.PAUSED))
            control.wait_while_paused()
            if not control.stop_requested:
                self.sink.emit(StatusChanged(status=ControlStatus.RUNNING))
                self.on_resumed()
        if control.stop_requested:
            self.sink.emit(StatusChanged(status=ControlStatus.STOPPING))
            raise StopTraining(control.stop_reason)


def run_started(parts: RunParts, start_step: int) -> RunStarted:
    """The event that opens a run: its schedule, data and device."""
    s, cfg = parts.schedule, parts.cfg
    batch_sizes = [getattr(d, "batch_size", 1) for d in getattr(cfg.datasets, "datasets", [])]
    return RunStarted(
        run_dir=str(parts.run_dir), total_steps=s.total_steps, total_epochs=s.total_epochs,
        steps_per_epoch=s.steps_per_epoch, num_images=parts.data.num_images,
        batch_size=max(batch_sizes) if batch_sizes else 1, device=str(parts.device),
        start_step=start_step, model=parts.components.model.source, attention=parts.components.attention,
    )
