"""sdft from-kohya maps every --optimizer_type kohya's fine_tune.py accepts, its optimizer_args
list, and kohya's Adafactor and schedule-free rules."""

from __future__ import annotations

import pytest

from engine.kohya.convert import from_command
from engine.registry.optimizers import NAMES, find


def _optimizer(*argv: str) -> tuple[dict, dict]:
    conversion = from_command(list(argv))
    return conversion.document.get("optimizer", {}), {r.option: r.refused for r in conversion.refused}


@pytest.mark.parametrize("name", NAMES + ("DAdaptAdamPreprint",))
def test_every_kohya_name_maps_in_any_case_to_sdfts_spelling(name):
    doc, refused = _optimizer("--optimizer_type", name.lower())
    assert refused == {} and doc["type"] == find(name).name


def test_other_names_are_classes_as_kohya_looks_them_up():
    assert _optimizer("--optimizer_type", "RAdam")[0]["type"] == "torch.optim.RAdam"   # kohya: torch.optim
    assert _optimizer("--optimizer_type", "came_pytorch.CAME")[0]["type"] == "came_pytorch.CAME"


def test_optimizer_args_in_kohyas_list_form():
    doc, _ = _optimizer("--optimizer_type", "AdamW", "--optimizer_args", "weight_decay=0.01", "betas=0.9,0.999",
                        "eps=1e-8", "foreach=False")
    assert doc["args"] == {"weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "foreach": False}


def test_adafactor_gets_kohyas_defaults_and_its_schedule():
    doc, _ = _optimizer("--optimizer_type", "adafactor", "--lr_scheduler", "cosine")
    # kohya: relative_step on unless given; transformers' scale_parameter default; the adafactor schedule
    assert doc["args"] == {"scale_parameter": True, "relative_step": True, "warmup_init": False}
    assert doc["type"] == "Adafactor" and doc["lr_scheduler"] == "adafactor"
    doc, _ = _optimizer("--optimizer_type", "Adafactor", "--optimizer_args", "scale_parameter=False",
                        "relative_step=False", "warmup_init=False", "--lr_scheduler", "constant_with_warmup")
    assert doc["args"] == {"scale_parameter": False, "relative_step": False, "warmup_init": False}
    assert doc["lr_scheduler"] == "constant_with_warmup", "a fixed step size keeps the schedule asked for"


def test_a_schedule_beside_a_schedule_free_optimizer_is_refused_as_kohya_ignores_it():
    doc, refused = _optimizer("--optimizer_type", "AdamWScheduleFree", "--lr_scheduler", "cosine")
    assert doc == {"type": "AdamWScheduleFree"}
    assert "schedule-free" in refused["lr_scheduler"] and "warmup_steps" in refused["lr_scheduler"]
