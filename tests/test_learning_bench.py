"""The learning benchmark, CI-sized: a tiny SD1 model trained from scratch by the real engine on
four generated concepts learns what its captions say; and the same benchmark fails when the
objective, the conditioning or the sampler is broken on purpose (docs/learning-bench.md).

One normal training is cached for the module; the objective breakage needs a training of its
own, the sampler and conditioning breakages reuse the normal model (they break sampling only).
"""

from __future__ import annotations

import pytest

from engine.bench.concepts import CI_CONCEPT_NAMES
from engine.bench.health import findings
from engine.bench.learning import LearningSettings, prepare, score, train_family
from engine.bench.model import family_named
from engine.bench.runs import Recipe
from engine.bench.scoring import SamplingPlan

# One worker runs them all, so the module's one normal training is shared.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("learning-bench")]

CI = LearningSettings(concepts=CI_CONCEPT_NAMES, per_concept=4, held_out=1, families=("sd1",),
                      recipe=Recipe(steps=200, batch_size=6, learning_rate=1e-3, validate_every=100),
                      sampling=SamplingPlan(samples_per_concept=6, steps=12))
SD1 = family_named("sd1")        # epsilon prediction, CLIP skip 2: both breakable
CHANCE = 1 / len(CI_CONCEPT_NAMES)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("learning")
    dataset = prepare(out, CI)
    return out, dataset


@pytest.fixture(scope="module")
def normal(bench):
    out, dataset = bench
    row = train_family(out / "normal", dataset, SD1, CI, say=lambda _text: None)
    return row, score(_model_dir(row), row["model_path"], dataset, SD1, CI.sampling)


def _model_dir(row):
    from pathlib import Path

    return Path(row["model_dir"])


def _sdft_adherence(row, dataset) -> float:
    return score(_model_dir(row), row["model_path"], dataset, SD1, CI.sampling, samplers=("sdft",))[
        "adherence_sdft"]["accuracy"]


def test_a_model_trained_by_sdft_learns_its_captions(bench, normal):
    _out, dataset = bench
    row, trained = normal
    untrained = score(_model_dir(row), None, dataset, SD1, CI.sampling, samplers=("sdft",))
    assert trained["validation_loss"] < 0.5 * untrained["validation_loss"]
    # The run's own validation loss (every 100 steps) ends below the untrained model's.
    assert [step for step, _loss in row["curve"]] == [100, 200]
    assert row["curve"][-1][1] < untrained["validation_loss"]
    assert trained["adherence_sdft"]["accuracy"] >= 0.8 > CHANCE
    assert trained["adherence_diffusers"]["accuracy"] >= 2 * CHANCE   # the saved model, in diffusers' own pipeline
    assert untrained["adherence_sdft"]["accuracy"] < 0.5
    assert findings(trained, untrained) == []                       # healthy by the benchmark's own limits
    assert findings(untrained) != []


def test_a_swapped_target_trains_a_model_that_scores_worse(bench, normal, monkeypatch):
    """Training with the v target on an epsilon model (the mix-up a wrong prediction-type flag
    makes): the evaluator, which uses the right target, sees a worse validation loss, and the
    sampler, which reads the prediction as noise, draws latents far off the data."""
    from engine.train import objective

    out, dataset = bench
    right = objective.target_for
    monkeypatch.setattr(objective, "target_for", lambda x0, noise, t, cumprod, v_prediction:
                        right(x0, noise, t, cumprod, not v_prediction))
    row = train_family(out / "swapped-target", dataset, SD1, CI, say=lambda _text: None)
    monkeypatch.undo()
    broken = score(_model_dir(row), row["model_path"], dataset, SD1, CI.sampling, samplers=("sdft",))
    _row, trained = normal
    assert broken["validation_loss"] > 1.5 * trained["validation_loss"]
    # Its samples may still sit nearest the prompted concept, but far off every image.
    assert broken["adherence_sdft"]["sample_distance"] > 2 * trained["adherence_sdft"]["sample_distance"]
    assert any("is the prediction type read right?" in text for text in findings(broken))


def test_a_clip_layer_changed_at_sampling_only_scores_worse(bench, normal, monkeypatch):
    """Trained on CLIP's second-to-last layer, sampled from the last one."""
    from engine.models import text_encoding

    _out, dataset = bench
    row, trained = normal
    right = text_encoding.encode_prompts_for_sampling

    def last_layer(encoder, *args, **kwargs):
        assert encoder.clip_skip == SD1.clip_skip            # what training used
        encoder.clip_skip = 1
        try:
            return right(encoder, *args, **kwargs)
        finally:
            encoder.clip_skip = SD1.clip_skip

    monkeypatch.setattr(text_encoding, "encode_prompts_for_sampling", last_layer)
    assert _sdft_adherence(row, dataset) <= trained["adherence_sdft"]["accuracy"] - 0.25


def test_a_flipped_guidance_sign_scores_worse(bench, normal, monkeypatch):
    """Classifier-free guidance pushed away from the prompt: uncond - s * (cond - uncond)."""
    from diffusers import StableDiffusionPipeline

    _out, dataset = bench
    row, trained = normal
    monkeypatch.setattr(StableDiffusionPipeline, "guidance_scale", property(lambda pipe: -pipe._guidance_scale))
    broken = score(_model_dir(row), row["model_path"], dataset, SD1, CI.sampling, samplers=("sdft",))
    assert broken["adherence_sdft"]["accuracy"] <= trained["adherence_sdft"]["accuracy"] - 0.25
    assert any(text.startswith("adherence through sdft's sampler") for text in findings(broken))

