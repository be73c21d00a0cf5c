"""The step hooks of a run: metrics, sampling cadence and RunControl polling (checkpoints are
a hook too, in checkpoints.py). Each reads a StepContext; none receives the Trainer."""

from __future__ import annotations

from collections.abc import Callable

from engine.events import RunStarted, StatusChanged, StepMetrics, StepProgress
from engine.train.context import RunParts, StepContext, StepHook, StopTraining
from engine.train.metrics import device_memory
from engine.vocabulary import ControlStatus


class MetricsHook(StepHook):
    """A step line on logging steps (the loop collected the interval's figures), else progress
    with an ETA, so every display's ETA moves at every step without a device sync."""

    def __init__(self, parts: RunParts):
        self.parts = parts
        self.rate: float | None = None       # steps per second of the last logging interval
        self.first: tuple[int, float] | None = None   # this start's first step and its elapsed time

    def eta_s(self, ctx: StepContext) -> float | None:
        """Seconds left at the last interval's speed. Before one (a resume's first steps, or the
        steps after the run's first, whose interval is all warm-up: the first batch, kernels,
        caches), at the mean speed since this start's first step; on that step, at its own."""
        rate = self.rate
        if rate is None:
            step, elapsed = self.first
            steps, seconds = ctx.step - step, ctx.elapsed_s - elapsed
            if steps == 0:
                steps, seconds = 1, ctx.elapsed_s
            rate = steps / seconds if seconds > 0 else None
        return (ctx.total_steps - ctx.step) / rate if rate else None

    def on_step(self, ctx: StepContext) -> None:
        p, m = self.parts, ctx.figures
        first = self.first is None
        if first:
            self.first = (ctx.step, ctx.elapsed_s)
        if m is None:
            p.sink.emit(StepProgress(step=ctx.step, total_steps=ctx.total_steps, epoch=ctx.event_epoch,
                                     elapsed_s=ctx.elapsed_s, eta_s=self.eta_s(ctx)))
            return
        if m["it_per_s"] > 0 and not first:
            self.rate = m["it_per_s"]
        scheduler = p.bundle.lr_scheduler
        remaining = ctx.total_steps - ctx.step
        p.sink.emit(StepMetrics(
            step=ctx.step, total_steps=ctx.total_steps, epoch=ctx.event_epoch,
            loss=m["loss"], loss_avg=ctx.loss_avg, lr=scheduler.get_last_lr()[0],
            lrs=dict(zip(p.bundle.lr_group_names, scheduler.get_last_lr(), strict=False)),
            grad_norm=m["grad_norm"], it_per_s=m["it_per_s"],
            samples_per_s=m["samples_per_s"],   # global samples: every process counts its global batches
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
    """RunControl's requests at a step boundary, agreed by every process of the run (one small
    collective, engine/train/distributed.py): save, sample, pause, stop (raises StopTraining)."""

    def __init__(self, control, agreement, sink, checkpointer, sampler, on_resumed: Callable[[], None],
                 requests=None):
        self.control, self.agreement, self.sink = control, agreement, sink
        self.checkpointer, self.sampler = checkpointer, sampler
        self.on_resumed = on_resumed   # the loop restarts its speed clock after a pause
        self.requests = requests       # engine.control_file.ControlFileReader: sdft watch's requests (main process)

    def on_step(self, ctx: StepContext) -> None:
        self._take_requests()
        agreed = self.agreement.agree(self.control)
        if agreed.save:
            self.checkpointer.save_model(ctx, kind="manual")
        if agreed.sample:
            self.sampler.sample(ctx)
        stop = agreed.stop
        if agreed.pause and not stop:
            self.sink.emit(StatusChanged(status=ControlStatus.PAUSED))
            stop = self.agreement.hold_while_paused(self.control, on_poll=self._take_requests)
            if not stop:
                self.sink.emit(StatusChanged(status=ControlStatus.RUNNING))
                self.on_resumed()
        if stop:
            if not self.control.stop_requested:   # another process's stop: this one's record says so too
                self.control.request_stop("stopped by another process of the run")
            self.sink.emit(StatusChanged(status=ControlStatus.STOPPING))
            raise StopTraining(self.control.stop_reason)


    def _take_requests(self) -> None:
        if self.requests is not None:
            self.requests.apply(self.control)


def run_started(parts: RunParts, start_step: int) -> RunStarted:
    """The event that opens a run: its schedule, data and device."""
    s, cfg = parts.schedule, parts.cfg
    batch_sizes = [getattr(d, "batch_size", 1) for d in getattr(cfg.datasets, "datasets", [])]
    batch = max(batch_sizes) if batch_sizes else 1
    processes = parts.accelerator.num_processes
    return RunStarted(
        run_dir=str(parts.run_dir), total_steps=s.total_steps, total_epochs=s.total_epochs,
        steps_per_epoch=s.steps_per_epoch, num_images=parts.data.num_images,
        batch_size=batch, device=str(parts.device),
        start_step=start_step, model=parts.components.model.source, attention=parts.components.attention,
        processes=processes, global_batch=batch * processes * cfg.train.gradient_accumulation_steps,
    )
