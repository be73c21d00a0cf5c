"""Whether a saved state still fits the run: what refuses a resume, and what only gets a note.

A state records its run's inputs (``inputs.json``: the base model as the file names it, and per
image its caption, size, bucket and file) beside its counters. A resume compares them with the
run as it is now (docs/run-folder.md, "Resume"):

* the seed, the training maths (objective, optimizer, precision) or the base model changed: the
  state is unusable or meaningless, and the resume is refused unless ``--allow-changed``;
* captions, tags or images changed, or images came or went: the run goes on with them and a note
  names what changed (changed images are encoded again), since the run is then no longer
  bit-identical to an uninterrupted one.

Training (engine/train/saves/resume.py) and ``--check --resume`` (engine/preflight/checks.py) both ask
:func:`compare`, so the check says exactly what training will. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

INPUTS_FILE = "inputs.json"


@dataclass
class Verdict:
    refusals: list[str] = field(default_factory=list)   # need --allow-changed
    notes: list[str] = field(default_factory=list)      # the run goes on; the user is told

    def refusal_message(self, folder: Path) -> str:
        return (f"cannot resume from {folder}: changed since it was saved: {', '.join(self.refusals)}. "
                "Undo the change, or pass --allow-changed to continue anyway")


def _digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()[:16]


def _file_identity(path: Path) -> list[int]:
    try:
        info = os.stat(path)
    except OSError:
        return [-1, -1]
    return [info.st_size, info.st_mtime_ns]


def describe_inputs(cfg, data) -> dict:
    """What a state records of its run's inputs (torch-free: ``data`` is a TrainingData)."""
    items = {}
    for it in data.items:
        items[f"{it.dataset}:{it.key}"] = {"caption": _digest(it.caption), "tags": _digest(it.tags),
                                           "size": list(it.size), "bucket": list(it.bucket),
                                           "file": _file_identity(it.path), "name": it.path.name}
    return {"base_model": cfg.model.pretrained_model_name_or_path, "dataset_fingerprint": data.fingerprint,
            "items": items}


def inputs_text(cfg, data) -> str:
    return json.dumps(describe_inputs(cfg, data), indent=0, sort_keys=True)


def read_inputs(folder: Path) -> dict | None:
    """The inputs a state recorded; None for a state of an older sdft (it has none)."""
    try:
        data = json.loads((Path(folder) / INPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def compare(counters, saved: dict | None, *, seed, math_hash: str | None, now: dict) -> Verdict:
    """The verdict on resuming a state (its ``counters`` and recorded inputs ``saved``) into the
    run described by ``now`` (:func:`describe_inputs`) with ``seed`` and the training-maths hash
    ``math_hash`` (None: not known here, so not compared)."""
    verdict = Verdict()
    if counters.seed != seed:   # only when the file sets a seed: else the runner reused the state's
        verdict.refusals.append(f"train.seed (the state was trained with {counters.seed}, the file says {seed})")
    if math_hash is not None and counters.config_hash != math_hash:
        verdict.refusals.append("training options (objective, optimizer, precision, prompts)")
    if saved is not None and saved.get("base_model") != now["base_model"]:
        verdict.refusals.append(f"the base model (the state trained {saved.get('base_model')!r}, the file says "
                                f"{now['base_model']!r})")
    changes = _data_changes(saved, now)
    if changes is None and counters.dataset_fingerprint != now["dataset_fingerprint"]:
        changes = ["images, captions or buckets"]   # a state of an older sdft records no inputs
    elif changes == [] and counters.dataset_fingerprint != now["dataset_fingerprint"]:
        changes = ["dataset settings (batch size, resolution or buckets)"]
    if changes:
        verdict.notes.append(f"the dataset changed since the state was saved: {'; '.join(changes)}; the run goes "
                             f"on from step {counters.global_step} with the data as it is now, so it is no longer "
                             "bit-identical to an uninterrupted run")
    return verdict


def _data_changes(saved: dict | None, now: dict) -> list[str] | None:
    """What changed per image since the state: edited captions or tags, changed image files
    (size or time), images added or removed; None when the state recorded no images."""
    if saved is None or not isinstance(saved.get("items"), dict):
        return None
    old, new = saved["items"], now["items"]
    parts = []
    captions = [new[k]["name"] for k in new if k in old and (old[k].get("caption"), old[k].get("tags"))
                != (new[k]["caption"], new[k]["tags"])]
    images = [new[k]["name"] for k in new if k in old and (old[k].get("file"), old[k].get("size"))
              != (new[k]["file"], new[k]["size"])]
    added = [new[k]["name"] for k in new if k not in old]
    removed = [old[k].get("name", k) for k in old if k not in new]
    for names, what in ((captions, "caption or tags edited"), (images, "image file changed (encoded again)"),
                        (added, "image added"), (removed, "image removed")):
        if names:
            parts.append(f"{len(names)} {what}: {_names(names)}")
    return parts


def _names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
