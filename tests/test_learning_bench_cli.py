"""`sdft bench --learning OUT_DIR` end to end on the command line, a few steps of one family: the
files it writes and what it prints (the benchmark's figures are tests/test_learning_bench.py's).

The command runs with a small plan (the CI test's four concepts, two images each, two samples of
four steps per concept): what is checked here is the command's wiring, not the figures, and the
full default plan samples 40 times as many U-Net steps."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture()
def small_plan(monkeypatch):
    """`sdft bench --learning` builds its settings from LearningSettings(): a smaller default."""
    import functools

    from engine.bench import learning
    from engine.bench.concepts import CI_CONCEPT_NAMES
    from engine.bench.scoring import SamplingPlan

    monkeypatch.setattr(learning, "LearningSettings", functools.partial(
        learning.LearningSettings, concepts=CI_CONCEPT_NAMES, per_concept=2, held_out=1,
        sampling=SamplingPlan(samples_per_concept=2, steps=4)))


def test_the_command_writes_the_report_the_data_and_the_models_another_trainer_needs(tmp_path, capsys, small_plan):
    from engine.cli import main

    out = tmp_path / "learning"
    # Three steps learn nothing: the command says how the result falls short and exits 1.
    assert main(["bench", "--learning", str(out), "--family", "sd2-v", "--steps", "3", "--json"]) == 1
    captured = capsys.readouterr()
    assert "warning: SD2 768-v (v-prediction): adherence through sdft's sampler is" in captured.err
    report = json.loads(captured.out)
    (row,) = report["families"]
    assert row["family"] == "sd2-v" and row["curve"] == [[3, pytest.approx(row["curve"][0][1])]]
    assert set(row["trained"]) >= {"validation_loss", "adherence_sdft", "adherence_diffusers"}
    assert "SD2 768-v (v-prediction): validation loss" in captured.err
    for name in ("learning.md", "learning.json", "learning.png", "kohya-dataset.toml", "data/concepts.json",
                 "models/sd2-v/model_index.json", "runs/sd2-v.toml"):
        assert (out / name).is_file(), name
    assert "| SD2 768-v (v-prediction) |" in (out / "learning.md").read_text()
    assert "**Not healthy**" in (out / "learning.md").read_text()

    model = row["model_path"]
    assert main(["bench", "--learning", str(out), "--family", "sd2-v", "--score", model, "--label", "again"]) == 1
    again = json.loads((out / "scores-again-sd2-v.json").read_text())
    # The same file scored twice by the same evaluator: the same figures.
    assert again["validation_loss"] == row["trained"]["validation_loss"]
    assert again["adherence_sdft"] == row["trained"]["adherence_sdft"]
