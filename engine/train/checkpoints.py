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

EXTENSIONS = {"safetensors": ".safetensors", "ckpt": ".ckpt", "diffusers": "", "diffusers_safetensors": ""}


class Checkpointer:
    def __init__(self, trainer):
        self.trainer = trainer
        self.cfg = trainer.cfg
        self.folder = trainer.run_dir / "checkpoints"
        self.started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    # ---- cadence
    def on_step_end(self, step: int) -> None:
        s = self.cfg.save
        if s.every_n_steps and step % s.every_n_steps == 0 and step < self.trainer.schedule.total_steps:
            self.save_model(kind="step")
            if s.state:
                self.trainer.write_state()

    def on_epoch_end(self, epoch: int) -> None:
        s = self.cfg.save
        if s.every_n_epochs and epoch % s.every_n_epochs == 0 and epoch < self.trainer.schedule.total_epochs:
            self.save_model(kind="epoch")
            if s.state:
                self.trainer.write_state()

    # ---- writing
    def file_name(self, kind: str) -> str:
        t = self.trainer
        name = self.cfg.train.output_name
        ext = EXTENSIONS[self.cfg.save.format]
        if t.hypernetwork is not None:   # hypernetwork mode saves only the hypernetwork
            ext = "." + self.cfg.hypernetwork.save_format
        if kind == "epoch":
            return f"{name}-{t.epoch:06d}{ext}"
        if kind in ("step", "manual"):
            return f"{name}-step{t.global_step:08d}{ext}"
        return f"{name}{ext}"

    def save_model(self, kind: str) -> str | None:
        t = self.trainer
        if not t.is_main:
            return None
        from engine.models.save import save_model

        path = self.folder / self.file_name(kind)
        unet = t.accelerator.unwrap_model(t.unet)
        text_encoder = t.accelerator.unwrap_model(t.text_encoder)
        use_ema = t.ema is not None and self.cfg.save.use_ema
        if use_ema:
            t.ema.swap()
        try:
            if t.hypernetwork is not None:
                self._save_hypernetwork(path)
            else:
                save_model(path, unet=unet, text_encoder=text_encoder, vae=t.model.vae, v2=t.model.v2,
                           v_parameterization=t.v_prediction, fmt=self.cfg.save.format,
                           precision=self.cfg.save.precision, metadata=self.metadata(),
                           epoch=t.epoch, global_step=t.global_step,
                           text_extras=getattr(t.model, "text_extras", None),
                           scheduler_config=getattr(t.model, "scheduler_config", None),
                           tokenizer=getattr(t.model, "tokenizer", None),
                           scheduler_overrides={"rescale_betas_zero_snr": True} if self.cfg.train.zero_terminal_snr else None)
        finally:
            if use_ema:
                t.ema.swap()
        t.last_model_path = str(path)
        t.sink.emit(ModelSaved(path=str(path), what="model", step=t.global_step, epoch=t.event_epoch))
        self.rotate_models(kind)
        return str(path)

    def _save_hypernetwork(self, path: Path) -> None:
        """train.mode = "hypernetwork": the A1111 .pt / .safetensors file."""
        from engine.models.hypernetwork import save_hypernetwork

        t = self.trainer
        save_hypernetwork(path, t.hypernetwork, fmt=self.cfg.hypernetwork.save_format,
                          name=self.cfg.train.output_name, step=t.global_step,
                          sd_checkpoint_name=t.model.base_name, metadata=self.metadata())

    def metadata(self) -> dict[str, str]:
        """sdft.* training metadata (the models layer adds modelspec.*)."""
        t, cfg = self.trainer, self.cfg
        meta = {
            "sdft.version": __version__,
            "sdft.base_model": json.dumps({"name": t.model.base_name, "sha256": t.model.base_sha256}),
            "sdft.v2": str(bool(t.model.v2)).lower(),
            "sdft.v_parameterization": str(bool(t.v_prediction)).lower(),
            "sdft.clip_skip": str(cfg.model.clip_skip),
            "sdft.max_token_length": str(cfg.model.max_token_length),
            "sdft.global_step": str(t.global_step),
            "sdft.epoch": str(t.epoch),
            "sdft.train_text_encoder": str(bool(t.train_te)).lower(),
            "sdft.zero_terminal_snr": str(bool(cfg.train.zero_terminal_snr)).lower(),
            "sdft.optimizer": cfg.optimizer.type,
            "sdft.learning_rate": str(self._learning_rate()),
            "sdft.mixed_precision": t.precision.mixed_precision,
            "sdft.num_images": str(t.data.num_images),
            "sdft.dataset_fingerprint": t.data.fingerprint,
            "sdft.bucket_info": json.dumps(t.data.bucket_info),
            "sdft.tag_frequency": json.dumps(t.data.tag_frequency),
            **config_metadata(t.config_text),
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
    def rotate_models(self, kind: str) -> None:
        s = self.cfg.save
        name = re.escape(self.cfg.train.output_name)
        if kind == "epoch" and s.last_n_epochs:
            pattern = re.compile(rf"^{name}-(\d{{6}})(\.|$)")
            self._keep_newest(pattern, s.last_n_epochs)
        if kind == "step" and s.last_n_steps:
            pattern = re.compile(rf"^{name}-step(\d{{8}})(\.|$)")
            cutoff = self.trainer.global_step - s.last_n_steps
            for path, number in self._matches(pattern):
                if number <= cutoff:
                    _remove(path)

    def rotate_states(self) -> None:
        keep = self.cfg.save.last_n_states
        if keep:
            pattern = re.compile(rf"^{re.escape(self.cfg.train.output_name)}-step(\d{{8}})-state$")
            folder = self.trainer.run_dir / "state"
            self._keep_newest(pattern, keep, folder)

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

    def _keep_newest(self, pattern, keep: int, folder: Path | None = None) -> None:
        matches = self._matches(pattern, folder)
        for path, _number in matches[:-keep]:
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

