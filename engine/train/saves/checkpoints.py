"""When and where models and states are saved, with kohya's names.

``checkpoints/<name>-<epoch:06d>.<ext>``, ``<name>-step<step:08d>.<ext>`` and the final
``<name>.<ext>``; rotation per ``save.last_n_*``. Only the main process writes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import shutil
from pathlib import Path

from engine import __version__
from engine.events import ModelSaved
from engine.families import family_of
from engine.train.context import RunParts, StepContext, StepHook
from engine.train.divergence import checked
from engine.train.optimizer_bundle import shards
from engine.train.optimizers import with_evaluation_weights
from engine.train.saves.resume_check import INPUTS_FILE, inputs_text
from engine.train.saves.state import save_state
from engine.train.schedule import epochs_between_saves

EXTENSIONS = {"safetensors": ".safetensors", "ckpt": ".ckpt", "diffusers": "", "diffusers_safetensors": ""}


class Checkpointer(StepHook):
    """Saves models and states on the ``save.*`` cadence (a step hook) and on request."""

    def __init__(self, parts: RunParts):
        self.parts = parts
        self.cfg = parts.cfg
        self.folder = parts.run_dir / "checkpoints"
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.last_model_path: str | None = None
        self.last_state_path: str | None = None

    # ---- cadence
    def on_step(self, ctx: StepContext) -> None:
        s = self.cfg.save
        if s.every_n_steps and ctx.step % s.every_n_steps == 0 and ctx.step < ctx.total_steps:
            self.save_model(ctx, kind="step")
            if s.state:
                self.write_state(ctx)

    def on_epoch(self, ctx: StepContext) -> None:
        every = epochs_between_saves(self.cfg.save, self.parts.schedule)
        if every and ctx.epoch % every == 0 and ctx.epoch < self.parts.schedule.total_epochs:
            self.save_model(ctx, kind="epoch")
            if self.cfg.save.state:
                self.write_state(ctx)

    # ---- writing
    def file_name(self, ctx: StepContext, kind: str) -> str:
        name = self.cfg.train.output_name
        ext = EXTENSIONS[self.cfg.save.format]
        if self.parts.components.hypernetwork is not None:   # hypernetwork mode saves only the hypernetwork
            ext = "." + self.cfg.hypernetwork.save_format
        if kind == "epoch":
            return f"{name}-{ctx.epoch:06d}{ext}"
        if kind in ("step", "manual"):
            return f"{name}-step{ctx.step:08d}{ext}"
        return f"{name}{ext}"

    @checked    # never a model with NaN weights (engine/train/divergence.py)
    @with_evaluation_weights
    def save_model(self, ctx: StepContext, kind: str) -> str | None:
        """The model of this step (the main process writes; with sharding every process first
        takes part in gathering the weights)."""
        p = self.parts
        sharded = shards(self.cfg, p.accelerator)
        if not p.is_main and not sharded:
            return None
        path = self.folder / self.file_name(ctx, kind)
        c, b = p.components, p.bundle
        # the U-Net and the trained text encoders, unwrapped; the family takes the rest from the model
        trained = {"unet": b.unet, **b.text_encoders}
        trained = {role: p.accelerator.unwrap_model(module) for role, module in trained.items()}
        use_ema = b.ema is not None and self.cfg.save.use_ema
        if use_ema:
            b.ema.swap()
        try:
            if sharded:
                trained = {role: whole_module(module) for role, module in trained.items()}
            if not p.is_main:
                pass   # it took part in gathering; the main process writes
            elif c.hypernetwork is not None:
                self._save_hypernetwork(ctx, path)
            else:
                family_of(c.model).save(path, c.model, trained=trained,
                                        v_prediction=c.noise.v_prediction, fmt=self.cfg.save.format,
                                        precision=self.cfg.save.precision, metadata=self.metadata(ctx),
                                        epoch=ctx.epoch, global_step=ctx.step,
                                        scheduler_overrides=self._scheduler_overrides())
        finally:
            if use_ema:
                b.ema.swap()
        if not p.is_main:
            return None
        self.last_model_path = str(path)
        p.sink.emit(ModelSaved(path=str(path), what="model", step=ctx.step, epoch=ctx.event_epoch))
        self.rotate_models(kind, ctx.step)
        return str(path)

    def _scheduler_overrides(self) -> dict | None:
        return {"rescale_betas_zero_snr": True} if self.parts.components.noise.zero_terminal_snr else None

    @checked
    @with_evaluation_weights   # a schedule-free state holds its eval weights; resume turns train() back on
    def write_state(self, ctx: StepContext, stopped: bool = False) -> str | None:
        """A resumable state of this step (the main process writes it; with sharding every process
        first takes part in gathering it); rotates older ones."""
        p = self.parts
        b = p.bundle
        trainables, optimizer, ema = p.trainables(), b.optimizer, b.ema
        if shards(self.cfg, p.accelerator):
            trainables, optimizer, ema = whole_state(trainables, optimizer, ema)
        if not p.is_main:
            return None
        folder = p.run_dir / "state" / f"{self.cfg.train.output_name}-step{ctx.step:08d}-state"
        save_state(folder, trainables=trainables, optimizer=optimizer, scheduler=b.lr_scheduler,
                   scaler=p.accelerator.scaler, ema=ema, counters=ctx.counters(stopped),
                   config_text=p.config_text, texts={INPUTS_FILE: inputs_text(self.cfg, p.data)})
        self.last_state_path = str(folder)
        self.rotate_states(keep_also=folder)
        p.sink.emit(ModelSaved(path=str(folder), what="state", step=ctx.step, epoch=ctx.event_epoch))
        return str(folder)

    def _save_hypernetwork(self, ctx: StepContext, path: Path) -> None:
        """train.mode = "hypernetwork": the A1111 .pt / .safetensors file."""
        from engine.models.hypernetwork import save_hypernetwork

        c = self.parts.components
        save_hypernetwork(path, c.hypernetwork, fmt=self.cfg.hypernetwork.save_format,
                          name=self.cfg.train.output_name, step=ctx.step,
                          sd_checkpoint_name=c.model.base_name, metadata=self.metadata(ctx))

    def metadata(self, ctx: StepContext) -> dict[str, str]:
        """sdft.* training metadata (the models layer adds modelspec.*)."""
        p, cfg = self.parts, self.cfg
        model, data = p.components.model, p.data
        meta = {
            "sdft.version": __version__,
            "sdft.base_model": json.dumps({"name": model.base_name, "sha256": model.base_sha256}),
            "sdft.v2": str(bool(model.v2)).lower(),
            "sdft.v_parameterization": str(bool(p.components.noise.v_prediction)).lower(),
            "sdft.clip_skip": str(cfg.model.clip_skip),
            "sdft.max_token_length": str(cfg.model.max_token_length),
            "sdft.global_step": str(ctx.step),
            "sdft.epoch": str(ctx.epoch),
            "sdft.train_text_encoder": str(bool(p.components.train_te)).lower(),
            "sdft.zero_terminal_snr": str(bool(p.components.noise.zero_terminal_snr)).lower(),
            "sdft.optimizer": cfg.optimizer.type,
            "sdft.learning_rate": str(self._learning_rate()),
            "sdft.mixed_precision": p.precision.mixed_precision,
            "sdft.num_images": str(data.num_images),
            "sdft.dataset_fingerprint": data.fingerprint,
            "sdft.bucket_info": json.dumps(data.bucket_info),
            "sdft.tag_frequency": json.dumps(data.tag_frequency),
            **config_metadata(p.config_text),
            "sdft.started": self.started,
            "sdft.finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "sdft.resolution": json.dumps(self._resolution()),
        }
        for field, value in vars(cfg.save.metadata).items():
            if value is not None:
                meta[f"modelspec.{field}"] = str(value)
        meta.setdefault("modelspec.title", cfg.train.output_name)
        meta["modelspec.encoder_layer"] = str(cfg.model.clip_skip)
        resolution = self._resolution()
        if resolution:
            meta["modelspec.resolution"] = f"{resolution[0]}x{resolution[-1]}"
        if cfg.train.min_timestep or cfg.train.max_timestep != 1000:
            meta["modelspec.timestep_range"] = f"{cfg.train.min_timestep},{cfg.train.max_timestep}"
        return meta

    def _learning_rate(self) -> float:
        """The rate of what was trained: the hypernetwork's own in hypernetwork mode."""
        cfg = self.cfg
        if cfg.train.mode == "hypernetwork" and cfg.hypernetwork.learning_rate is not None:
            return cfg.hypernetwork.learning_rate
        return cfg.optimizer.learning_rate

    def _resolution(self):
        datasets = getattr(self.cfg.datasets, "datasets", None) or []
        for d in datasets:
            res = getattr(d, "resolution", None)
            if res:
                return [res, res] if isinstance(res, int) else list(res)
        return None

    # ---- rotation
    def rotate_models(self, kind: str, step: int) -> None:
        s = self.cfg.save
        name = re.escape(self.cfg.train.output_name)
        if kind == "epoch" and s.last_n_epochs:
            pattern = re.compile(rf"^{name}-(\d{{6}})(\.|$)")
            self._keep_newest(pattern, s.last_n_epochs)
        if kind == "step" and s.last_n_steps:
            pattern = re.compile(rf"^{name}-step(\d{{8}})(\.|$)")
            cutoff = step - s.last_n_steps
            for path, number in self._matches(pattern):
                if number <= cutoff:
                    _remove(path)

    def rotate_states(self, keep_also: Path | None = None) -> None:
        """Keep the newest ``save.last_n_states`` states, and always ``keep_also``: the state
        just written, which a stop names in its resume command even when older runs of the
        folder left states of higher steps."""
        keep = self.cfg.save.last_n_states
        if keep:
            pattern = re.compile(rf"^{re.escape(self.cfg.train.output_name)}-step(\d{{8}})-state$")
            folder = self.parts.run_dir / "state"
            self._keep_newest(pattern, keep, folder, spare=keep_also)

    def _matches(self, pattern, folder: Path | None = None):
        folder = folder or self.folder
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match:
                found.append((path, int(match.group(1))))
        return sorted(found, key=lambda item: item[1])

    def _keep_newest(self, pattern, keep: int, folder: Path | None = None, spare: Path | None = None) -> None:
        matches = self._matches(pattern, folder)
        for path, _number in matches[:-keep]:
            if path != spare:
                _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


CONFIG_METADATA_LIMIT = 64 * 1024


def config_metadata(config_text: str) -> dict[str, str]:
    """The run TOML in a saved model's metadata, up to 64 KiB; beyond that only its sha256
    (a huge commented file would otherwise be copied into every checkpoint)."""
    data = config_text.encode("utf-8")
    meta = {"sdft.config_sha256": hashlib.sha256(data).hexdigest()}
    if len(data) <= CONFIG_METADATA_LIMIT:
        meta["sdft.config"] = config_text
    else:
        meta["sdft.config_omitted"] = (f"{len(data)} bytes, over the {CONFIG_METADATA_LIMIT // 1024} KiB limit; "
                                       "the run folder's config.toml holds it (compare sdft.config_sha256)")
    return meta



class Snapshot:
    """A state dict already taken (gathered from shards), for save_state's ``state_dict()`` calls."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def whole_module(module):
    """A sharded module as a whole one on the main process (None elsewhere); others as they are."""
    from engine.train.sharding import full_state, is_sharded, whole_copy

    if module is None or not is_sharded(module):
        return module
    state = full_state(module)       # every process gathers; the main one gets the tensors
    return whole_copy(module, state) if state else None


def whole_state(trainables: dict, optimizer, ema):
    """A sharded run's state gathered whole (every process takes part): trained modules, the
    optimizer and the EMA, as save_state takes them."""
    from engine.train.sharding import full_optimizer_state, full_state

    modules = list(trainables.values())
    whole = {name: full_state(module) for name, module in trainables.items()}
    taken = Snapshot(full_optimizer_state(modules, optimizer))
    averaged = Snapshot(ema.state_dict()) if ema is not None else None
    return whole, taken, averaged
