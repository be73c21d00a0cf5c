"""Resumable training states.

A state folder is written atomically (``<name>.tmp/`` then renamed) at an optimizer-step
boundary and holds everything needed to continue at the same step: trainable weights,
optimizer / scheduler / scaler / EMA states, RNG states, counters, the resolved config,
a hash of the options that affect training maths, and the dataset fingerprint.
``manifest.json`` lists each file's sha256 and is checked before a resume.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engine import atomic
from engine.hashcache import file_sha256
from engine.train.distributed import is_main_process
from engine.train.sharding import is_sharded, load_full_optimizer_state, load_full_state

STATE_VERSION = 1


class StateError(RuntimeError):
    pass


@dataclass
class Counters:
    global_step: int
    epoch: int                 # 0-based epoch in progress
    batches_done: int          # micro-batches of that epoch already consumed
    seed: int
    config_hash: str
    dataset_fingerprint: str
    loss_avg: float | None = None
    stopped: bool = False


def rng_states() -> dict:
    """The global generators' states. sdft's own randomness comes from generators seeded per step
    and per sample, so these matter only to code that draws from the global generators (an
    optimizer class a run names, ``module.Class``): a resume then continues their stream too. The
    CUDA state is the current device's alone, so a state resumes on any number of GPUs."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
    }


def _rng_to_json(states: dict) -> dict:
    version, internal, gauss = states["python"]
    kind, keys, pos, has_gauss, cached = states["numpy"]
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _restore_rng(meta: dict, tensors: dict) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available() and tensors.get("cuda"):
        # the first saved state (older sdft saved one per visible GPU) onto this process's device
        torch.cuda.set_rng_state(tensors["cuda"][0])


def save_state(folder: Path, *, trainables: dict[str, torch.nn.Module | dict], optimizer, scheduler,
               scaler=None, ema=None, counters: Counters, config_text: str,
               texts: dict[str, str] | None = None) -> Path:
    """Write a complete state folder atomically; returns its final path. A failed write
    names its file (``atomic.writing``), so a full disk says which part did not fit.
    ``texts``: more files by name (the run's inputs, engine/train/saves/resume_check.py)."""
    with atomic.atomic_dir(folder) as tmp:
        def put(name: str, write) -> None:
            with atomic.writing(tmp / name):
                write(tmp / name)

        for name, module in trainables.items():
            tensors = module if isinstance(module, dict) else module.state_dict()
            put(f"{name}.safetensors", lambda path, tensors=tensors: save_file(
                {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path)))
        put("optimizer.pt", lambda path: torch.save(optimizer.state_dict(), path))
        put("scheduler.pt", lambda path: torch.save(scheduler.state_dict(), path))
        if scaler is not None:
            put("scaler.pt", lambda path: torch.save(scaler.state_dict(), path))
        if ema is not None:
            put("ema.safetensors", lambda path: save_file(
                {k: v.contiguous().cpu() for k, v in ema.state_dict().items()}, str(path)))
        rng = rng_states()
        put("rng.pt", lambda path: torch.save({"torch": rng["torch"], "cuda": rng["cuda"]}, path))
        put("rng.json", lambda path: path.write_text(json.dumps(_rng_to_json(rng))))
        put("counters.json", lambda path: path.write_text(
            json.dumps({"version": STATE_VERSION, **asdict(counters)}, indent=2)))
        put("config.toml", lambda path: path.write_text(config_text, encoding="utf-8"))
        for name, text in (texts or {}).items():
            put(name, lambda path, text=text: path.write_text(text, encoding="utf-8"))
        manifest = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        put("manifest.json", lambda path: path.write_text(json.dumps(manifest, indent=2)))
    return folder


_VERIFIED: dict[tuple[str, int], bool] = {}   # (folder, manifest mtime) -> checked in this process


def verify_state(folder: Path) -> None:
    """Every file of the state is there and matches its checksum, else StateError. A state
    checked once in this process is not hashed again (a full model's state is gigabytes)."""
    manifest_path = folder / "manifest.json"
    if not is_main_process():
        return   # one hash of every file is enough: the other processes take the main one's folder (resume.py)
    if not manifest_path.is_file():
        raise StateError(f"{folder} is not a complete sdft state (no manifest.json); pick another state folder")
    seen = (str(folder.resolve()), manifest_path.stat().st_mtime_ns)
    if seen in _VERIFIED:
        return
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(f"{folder}: manifest.json is unreadable ({exc})") from None
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file():
            raise StateError(f"{folder}: {name} is missing; the state is incomplete")
        if file_sha256(path) != digest:
            raise StateError(f"{folder}: {name} does not match its checksum (damaged or edited)")
    _VERIFIED[seen] = True


def read_counters(folder: Path) -> Counters:
    data = json.loads((folder / "counters.json").read_text())
    data.pop("version", None)
    return Counters(**data)


def load_state(folder: Path, *, trainables: dict, optimizer, scheduler, scaler=None, ema=None,
               notes: list[str] | None = None) -> Counters:
    """Restore everything written by :func:`save_state` (after :func:`verify_state`); what the
    user should know about an older state goes to ``notes``."""
    verify_state(folder)
    for name, module in trainables.items():
        tensors = load_file(str(folder / f"{name}.safetensors"))
        if isinstance(module, dict):
            for key, value in tensors.items():
                module[key].data.copy_(value)
        else:
            load_module_state(module, tensors)
    saved = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    modules = [m for m in trainables.values() if not isinstance(m, dict)]
    if modules and (by_name(saved) or is_sharded(modules[0])):
        load_full_optimizer_state(modules, optimizer, saved if by_name(saved) else named(saved, modules))
    else:
        load_optimizer_state(optimizer, saved)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if scaler is not None and (folder / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=True))
    if ema is not None and (folder / "ema.safetensors").exists():
        note = ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
        if note and notes is not None:
            notes.append(note)
    rng_tensors = torch.load(folder / "rng.pt", weights_only=True)
    _restore_rng(json.loads((folder / "rng.json").read_text()), rng_tensors)
    return read_counters(folder)


def load_module_state(module, tensors: dict) -> None:
    if is_sharded(module):   # a sharded run: each process keeps its shards (engine/train/sharding.py)
        load_full_state(module, tensors)
    else:
        module.load_state_dict(tensors)


def by_name(saved: dict) -> bool:
    """An optimizer state keyed by parameter name (a sharded run's) rather than by position."""
    return any(isinstance(key, str) for key in saved.get("state", {}))


def named(saved: dict, modules: list) -> dict:
    """A state keyed by position (an unsharded run's), keyed by parameter name instead, so a
    sharded run can take it: positions follow the trained parameters in module order."""
    from engine.train.sharding import joined_names

    names = joined_names(modules)
    return {"state": {names[index]: value for index, value in saved["state"].items()},
            "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                             for group in saved["param_groups"]]}


def load_optimizer_state(optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict``, keeping each state tensor in the dtype it was saved in: torch
    casts floating states to their parameter's dtype, but bf16 weights keep fp32 states (they are
    stepped on fp32 copies, engine/train/weight_update.py) and a bf16 copy would not resume exactly."""
    optimizer.load_state_dict(saved)
    inner = getattr(optimizer, "optimizer", optimizer)
    params = [p for group in inner.param_groups for p in group["params"]]
    for index, state in saved.get("state", {}).items():
        live = inner.state.get(params[index]) if isinstance(index, int) and index < len(params) else None
        if not live:
            continue
        for key, value in state.items():
            current = live.get(key)
            if (torch.is_tensor(value) and torch.is_tensor(current) and value.is_floating_point()
                    and current.dtype != value.dtype):
                live[key] = value.to(device=current.device, dtype=value.dtype)


def find_latest_state(state_root: Path, skipped: list[str] | None = None) -> Path | None:
    """The newest state under a run's ``state/`` folder that verifies, by global step. Each
    newer one that does not (damaged, incomplete) is passed over and named in ``skipped``."""
    if not state_root.is_dir():
        return None
    candidates = []
    for folder in state_root.iterdir():
        if not folder.is_dir() or folder.name.endswith((".tmp", ".old")) or not (folder / "manifest.json").exists():
            continue
        try:
            candidates.append((read_counters(folder).global_step, folder.name, folder))
        except (OSError, ValueError, TypeError) as exc:
            if skipped is not None:
                skipped.append(f"{folder}: counters.json is unreadable ({exc})")
    for _step, _name, folder in sorted(candidates, reverse=True):
        try:
            verify_state(folder)
            return folder
        except StateError as exc:
            if skipped is not None:
                skipped.append(str(exc))
    return None


def find_state_folder(value: str, run_dir: Path, base_dir: Path | str | None,
                      skipped: list[str] | None = None) -> Path | None:
    """The state folder a ``--resume`` / ``train.resume`` value names: ``"latest"`` is the newest
    under ``<run_dir>/state`` that verifies (None when there is none; the damaged newer ones go
    to ``skipped``); a relative path is tried as given, then next to the run file."""
    if value == "latest":
        return find_latest_state(Path(run_dir) / "state", skipped)
    path = Path(value)
    if not path.is_absolute() and not path.exists() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_dir():
        what = "is not a state folder" if path.exists() else "does not exist"
        raise ValueError(f"train.resume: {value} {what}; {_states_of(Path(run_dir))}")
    return path


def _states_of(run_dir: Path) -> str:
    """The states a --resume may name, for a message about a wrong one (newest last)."""
    found = sorted(p for p in (run_dir / "state").glob("*-state") if p.is_dir())
    if not found:
        return f"{run_dir} has no saved state yet"
    return f"the run's states: {', '.join(str(p) for p in found)} (or \"latest\", the newest)"


def training_math_hash(sections: dict) -> str:
    """Hash of every option that changes the maths of a step (resume refuses a change)."""
    blob = json.dumps(sections, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
