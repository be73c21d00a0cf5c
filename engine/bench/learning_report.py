"""What `sdft bench --learning` writes: learning.md (tables a person reads), learning.json (every
figure, for scripts) and learning.png (the validation-loss curves)."""

from __future__ import annotations

from pathlib import Path

from engine.bench.speed_report import write_json

__all__ = ["report_markdown", "write_json", "write_report"]


def _percent(adherence: dict) -> str:
    total = sum(sum(row) for row in adherence["confusion"])
    hits = sum(row[k] for k, row in enumerate(adherence["confusion"]))
    return f"{adherence['accuracy'] * 100:.0f}% ({hits}/{total})"


def _family_row(row: dict) -> str:
    before, after = row["untrained"], row["trained"]
    return (f"| {row['label']} | {before['validation_loss']:.4f} -> **{after['validation_loss']:.4f}** | "
            f"**{_percent(after['adherence_sdft'])}** | {_percent(after['adherence_diffusers'])} | "
            f"{_percent(before['adherence_sdft'])} | {after['adherence_sdft']['sample_distance']:.1f} | "
            f"{row['train_seconds']:.0f} s + {after['score_seconds']:.0f} s |")


def _per_concept(report: dict) -> list[str]:
    rows = report["families"]
    lines = ["| prompt | " + " | ".join(r["label"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for k, caption in enumerate(report["concepts"]):
        cells = []
        for r in rows:
            counts = r["trained"]["adherence_sdft"]["confusion"][k]
            cells.append(f"{counts[k]}/{sum(counts)}")
        lines.append(f"| {caption} | " + " | ".join(cells) + " |")
    return lines


def _verdict(rows: list[dict]) -> list[str]:
    """Healthy, or each way it is not (engine/bench/health.py; docs/learning-bench.md)."""
    problems = [f"- {row['label']}: {text}" for row in rows for text in row.get("findings", [])]
    if not problems:
        return ["Healthy: every family is within the limits of docs/learning-bench.md.", ""]
    return ["**Not healthy** (the limits are in docs/learning-bench.md):", "", *problems, ""]


def report_markdown(report: dict) -> str:
    s = report["settings"]
    recipe, sampling = s["recipe"], s["sampling"]
    count = len(report["concepts"])
    images = report["images"]
    lines = [
        "# sdft learning benchmark", "",
        f"- measured {report['date']} on {report['machine']}: `sdft bench --learning`, "
        f"{report['seconds']:.0f} s after start-up",
        f"- data: {count} concepts, {images['train']} training and {images['held_out']} held-out images of "
        f"{images['side']}x{images['side']} px (`data/`)",
        f"- recipe, the same for every family: a random-weight tiny model trained from scratch, "
        f"{recipe['steps']} steps of batch {recipe['batch_size']}, AdamW at {recipe['learning_rate']:g} "
        f"(constant), fp32, seed {recipe['seed']}; validation loss every {recipe['validate_every']} steps",
        "- validation loss (the evaluator's): the held-out images at timesteps 200/400/600/800, fixed noise; "
        "lower is better",
        f"- adherence: {sampling['samples_per_concept']} samples per prompt ({sampling['sampler']}, "
        f"{sampling['steps']} steps, guidance {sampling['guidance_scale']:g}), each given to the concept of "
        f"the nearest training latent; chance is 1/{count} = {100 / count:.3g}%",
        "- sample distance: the samples' mean distance to the nearest training latent over the held-out "
        "images' (about 1: as close as unseen images of the concepts; guidance pushes it above)", "",
        "| model family | validation loss, untrained -> trained | adherence, sdft's sampler | "
        "adherence, diffusers' pipeline | adherence untrained | sample distance | train + score time |",
        "|---|---|---|---|---|---|---|",
        *(_family_row(row) for row in report["families"]), "",
        *_verdict(report["families"]),
        "Samples that landed on their prompt's concept, per prompt (trained model, sdft's sampler):", "",
        *_per_concept(report), "",
        "learning.png draws each run's own validation loss as it trained (sdft's `validate_every_n_steps`, "
        "noise seeded by the run); the table's comes from the evaluator, which scores any trainer's saved "
        "model alike (`sdft bench --learning OUT_DIR --score FILE --family F`). What a healthy result looks "
        "like: docs/learning-bench.md.", "",
    ]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> tuple[Path, Path, Path]:
    from engine import atomic
    from engine.bench.plot import Series, save_chart

    md_path = out / "learning.md"
    atomic.write_text(md_path, report_markdown(report))
    json_path = write_json(report, out / "learning.json")
    curves = [Series(row["label"], tuple((float(s), float(v)) for s, v in row["curve"])) for row in report["families"]]
    png_path = save_chart(out / "learning.png", curves, title="Validation loss on held-out images (sdft)",
                          x_label="training step", y_label="validation loss")
    return md_path, json_path, png_path
