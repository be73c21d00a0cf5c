"""Is a learning benchmark's result healthy? The limits a trained model must meet, in one place
(docs/learning-bench.md, "A healthy result", gives the figures they were set from)."""

from __future__ import annotations

MIN_ADHERENCE = 0.5         # half the samples on their prompt's concept: 4x chance with 8 concepts
MAX_LOSS_RATIO = 0.85       # trained validation loss over the untrained model's (v-prediction: 0.56-0.74)
MAX_SAMPLE_DISTANCE = 5.0   # healthy samples: 2-3; a sampler misreading the prediction: above 10

SAMPLERS = {"sdft": "sdft's sampler", "diffusers": "diffusers' pipeline"}


def findings(trained: dict, untrained: dict | None = None) -> list[str]:
    """What is wrong with a scored model, in words; empty when it is healthy. Without the
    untrained model's scores the validation loss is not judged (it has nothing to compare with)."""
    out = []
    for key, name in SAMPLERS.items():
        adherence = trained.get(f"adherence_{key}")
        if adherence is None:
            continue
        if adherence["accuracy"] < MIN_ADHERENCE:
            out.append(f"adherence through {name} is {adherence['accuracy'] * 100:.0f}%, below "
                       f"{MIN_ADHERENCE * 100:.0f}% (chance {adherence['chance'] * 100:.3g}%)")
        if adherence["sample_distance"] > MAX_SAMPLE_DISTANCE:
            out.append(f"samples through {name} lie {adherence['sample_distance']:.1f}x as far from the data as "
                       f"held-out images (at most {MAX_SAMPLE_DISTANCE:g}): is the prediction type read right?")
    if untrained is not None:
        ratio = trained["validation_loss"] / untrained["validation_loss"]
        if ratio > MAX_LOSS_RATIO:
            out.append(f"validation loss fell only to {ratio * 100:.0f}% of the untrained model's "
                       f"(at most {MAX_LOSS_RATIO * 100:.0f}%)")
    return out
