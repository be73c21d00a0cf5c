"""`sdft bench --learning OUT_DIR`: does a model trained by sdft learn what its captions say?

For each model family (SD1, SD2-base, SD2 768-v): a tiny model with random weights
(engine/bench/model.py) is trained from scratch by the real engine (``run_training`` on a run
TOML) on generated concepts (concepts.py), with the validation loss on held-out images every
few steps; then the untrained and the trained model are scored by the same evaluator
(scoring.py). OUT_DIR gets learning.md, learning.json and learning.png (the curves), and keeps
the data, the models and the run folders, so another trainer can train the same models on the
same images and be scored alike (``score_trained_file``; docs/learning-bench.md).
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.bench.concepts import CONCEPTS, concepts_named, write_concept_dataset
from engine.bench.health import findings
from engine.bench.model import FAMILIES, build_bench_model, family_named
from engine.bench.runs import Recipe, write_kohya_dataset, write_run_file
from engine.bench.scoring import SamplingPlan


class LearningBenchError(RuntimeError):
    """A training the benchmark started did not complete (bad input raises ValueError instead)."""


@dataclass(frozen=True)
class LearningSettings:
    concepts: tuple[str, ...] = tuple(c.name for c in CONCEPTS)
    per_concept: int = 6            # training images per concept
    held_out: int = 2               # held-out images per concept
    families: tuple[str, ...] = tuple(f.name for f in FAMILIES)
    recipe: Recipe = field(default_factory=Recipe)
    sampling: SamplingPlan = field(default_factory=SamplingPlan)


class _Progress:
    """An event sink that says each validation figure and each problem as the run goes."""

    def __init__(self, family: str, say):
        self.family, self.say = family, say

    def emit(self, event) -> None:
        if event.kind == "validation":
            self.say(f"  {self.family}: step {event.step}: validation loss {event.figures['loss']:.4f}")
        elif event.kind == "message" and event.level != "info":
            self.say(f"  {self.family}: {event.level}: {event.text}")


def prepare(out_dir: Path, settings: LearningSettings):
    """The dataset under OUT_DIR/data (drawn again each time: it is cheap and seeded)."""
    return write_concept_dataset(out_dir / "data", concepts_named(settings.concepts),
                                 per_concept=settings.per_concept, held_out=settings.held_out,
                                 seed=settings.recipe.seed)


def validation_curve(events_path: Path) -> list[tuple[int, float]]:
    from engine.events import read_events

    return [(e.step, e.figures["loss"]) for e in read_events(events_path) if e.kind == "validation"]


def train_family(out_dir: Path, dataset, family, settings: LearningSettings, say) -> dict:
    """Build the family's model, train it with sdft; the run's figures (no scores yet)."""
    from engine.runner import run_training
    from engine.vocabulary import RunStatus

    model_dir = out_dir / "models" / family.name
    started = time.perf_counter()
    calibration = build_bench_model(family, model_dir, [i.path for i in dataset.train], dataset.side,
                                    seed=settings.recipe.seed)
    run_file = write_run_file(out_dir / "runs", family, model_dir, dataset, settings.recipe)
    say(f"sdft bench --learning: {family.label}: training {settings.recipe.steps} steps ({run_file})")
    result = run_training(run_file, sink=_Progress(family.name, say))
    if result.status != RunStatus.COMPLETED or not result.model_path:
        raise LearningBenchError(f"{family.name}: training {result.status}: {result.message} (log: {result.log_path})")
    return {"family": family.name, "label": family.label, "model_dir": str(model_dir), "run_file": str(run_file),
            "model_path": result.model_path, "vae_calibration": calibration,
            "curve": validation_curve(Path(result.run_dir) / "events.jsonl"),
            "train_seconds": time.perf_counter() - started}


def score(model_dir: Path, trained, dataset, family, sampling: SamplingPlan, samplers=("sdft", "diffusers")) -> dict:
    from engine.bench.scoring import score_model
    from engine.bench.trained import load_trained

    started = time.perf_counter()
    scores = score_model(load_trained(model_dir, trained), dataset, family.clip_skip, sampling, samplers=samplers)
    return {**scores, "score_seconds": time.perf_counter() - started}


def run_learning_bench(out_dir: str | Path, settings: LearningSettings = LearningSettings(), say=print) -> dict:
    """The whole benchmark; writes OUT_DIR/learning.{md,json,png} and returns the report."""
    from engine.bench.learning_report import write_report

    started = time.perf_counter()
    out = Path(out_dir)
    dataset = prepare(out, settings)
    write_kohya_dataset(out / "kohya-dataset.toml", dataset, settings.recipe)
    rows = []
    for family in (family_named(name) for name in settings.families):
        row = train_family(out, dataset, family, settings, say)
        say(f"sdft bench --learning: {family.label}: scoring the untrained and the trained model")
        row["untrained"] = score(Path(row["model_dir"]), None, dataset, family, settings.sampling, samplers=("sdft",))
        row["trained"] = score(Path(row["model_dir"]), row["model_path"], dataset, family, settings.sampling)
        row["findings"] = findings(row["trained"], row["untrained"])
        rows.append(row)
        write_report(out, _report(settings, dataset, rows, started))   # a stopped bench keeps what it measured
    report = _report(settings, dataset, rows, started)
    paths = write_report(out, report)
    say(f"sdft bench --learning: wrote {', '.join(str(p) for p in paths)}")
    return report


def _report(settings: LearningSettings, dataset, rows: list[dict], started: float) -> dict:
    import torch

    return {"report": "sdft bench --learning", "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {_cpu_count()} CPUs, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() != 1 else ''}",
            "settings": asdict(settings), "concepts": [c.caption for c in dataset.concepts],
            "images": {"train": len(dataset.train), "held_out": len(dataset.held_out), "side": dataset.side},
            "families": rows, "seconds": time.perf_counter() - started}


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def score_trained_file(out_dir: str | Path, trained: str | Path, family_name: str, label: str) -> dict:
    """Score a model another trainer saved from OUT_DIR/models/<family> on OUT_DIR's concepts with
    the evaluator (and sampling plan) sdft's runs got; writes OUT_DIR/scores-<label>-<family>.json."""
    import json

    from engine.bench.concepts import read_concept_dataset
    from engine.bench.learning_report import write_json

    out, family = Path(out_dir), family_named(family_name)
    model_dir = out / "models" / family.name
    if not (model_dir / "model_index.json").is_file():
        raise ValueError(f"{model_dir} is missing: run `sdft bench --learning {out} --family {family.name}` first "
                         "(it builds the model and the images the other trainer must use)")
    if not Path(trained).exists():
        raise ValueError(f"--score {trained}: no such file or folder (the model the other trainer saved)")
    try:
        sampling = SamplingPlan(**json.loads((out / "learning.json").read_text(encoding="utf-8"))["settings"]["sampling"])
    except (OSError, ValueError, KeyError, TypeError):
        sampling = SamplingPlan()   # the bench's own report is gone: its default plan
    dataset = read_concept_dataset(out / "data")
    scores = score(model_dir, trained, dataset, family, sampling)
    result = {"label": label, "family": family.name, "file": str(trained), "sampling": asdict(sampling), **scores,
              "findings": findings(scores)}
    write_json(result, out / f"scores-{label}-{family.name}.json")
    return result
