"""The preview-sampler table: every kohya name builds the scheduler kohya builds, and samples."""

from __future__ import annotations

import inspect

import pytest

from engine.registry.samplers import ACCEPTED_NAMES, SAMPLER_NAMES, canonical_name, sampler_entry

# kohya-ss/sd-scripts library/train_util.py: --sample_sampler's choices and get_my_scheduler's
# branches, as the test's data (name -> diffusers class, algorithm_type kohya passes).
KOHYA_CHOICES = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver",
                 "dpmsolver++", "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")
KOHYA_SCHEDULERS = {
    "ddim": ("DDIMScheduler", None), "ddpm": ("DDPMScheduler", None), "pndm": ("PNDMScheduler", None),
    "lms": ("LMSDiscreteScheduler", None), "k_lms": ("LMSDiscreteScheduler", None),
    "euler": ("EulerDiscreteScheduler", None), "k_euler": ("EulerDiscreteScheduler", None),
    "euler_a": ("EulerAncestralDiscreteScheduler", None), "k_euler_a": ("EulerAncestralDiscreteScheduler", None),
    "dpmsolver": ("DPMSolverMultistepScheduler", "dpmsolver"),
    "dpmsolver++": ("DPMSolverMultistepScheduler", "dpmsolver++"),
    "dpmsingle": ("DPMSolverSinglestepScheduler", None), "heun": ("HeunDiscreteScheduler", None),
    "dpm_2": ("KDPM2DiscreteScheduler", None), "k_dpm_2": ("KDPM2DiscreteScheduler", None),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", None), "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", None),
}


def test_every_kohya_name_is_accepted_and_nothing_else():
    assert set(ACCEPTED_NAMES) == set(KOHYA_CHOICES) | {"ddpm"}
    assert len(ACCEPTED_NAMES) == len(set(ACCEPTED_NAMES))
    assert set(SAMPLER_NAMES) == {n for n in ACCEPTED_NAMES if not n.startswith("k_")}
    assert canonical_name("K_Euler_A") == "euler_a" and canonical_name("DPMSolver++") == "dpmsolver++"
    assert canonical_name("dpm_fast") is None
    with pytest.raises(ValueError, match="unknown sampler 'dpm_fast'; use one of ddim, pndm"):
        sampler_entry("dpm_fast")


@pytest.mark.parametrize("v_prediction", [False, True])
@pytest.mark.parametrize("name", sorted(KOHYA_SCHEDULERS))
def test_each_name_builds_kohyas_scheduler_on_the_model_schedule(name, v_prediction):
    from diffusers import DDPMScheduler

    from engine.models.tiny import scheduler_config
    from engine.train.sampling import make_scheduler

    base = DDPMScheduler(**scheduler_config(v_prediction=v_prediction)).config
    scheduler = make_scheduler(name, base)
    cls, algorithm = KOHYA_SCHEDULERS[name]
    assert type(scheduler).__name__ == cls
    config = scheduler.config
    if algorithm is not None:
        assert config.algorithm_type == algorithm
    if "clip_sample" in inspect.signature(type(scheduler).__init__).parameters:
        assert config.clip_sample is True          # kohya turns clip_sample on wherever it exists
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule"):
        assert config[key] == base[key]            # the model's training schedule
    assert config.prediction_type == ("v_prediction" if v_prediction else "epsilon")


def test_the_check_and_from_kohya_take_every_name():
    from engine.config.schema import SampleConfig
    from engine.kohya.values import KohyaValueError, sampler_name

    choices = next(f for f in SampleConfig.__dataclass_fields__.values() if f.name == "sampler").metadata["choices"]
    assert tuple(choices) == ACCEPTED_NAMES
    assert {name: sampler_name(name.upper()) for name in KOHYA_CHOICES} == {
        name: canonical_name(name) for name in KOHYA_CHOICES}
    with pytest.raises(KohyaValueError, match="unknown sampler 'unipc'"):
        sampler_name("unipc")


def test_a_run_file_may_name_any_sampler(tmp_path):
    from train_helpers import make_run

    from engine.config.problems import ConfigError
    from engine.config.run_toml import load_run_file

    path = make_run(tmp_path, tmp_path / "model", steps=1)
    plain = path.read_text()
    for name in ("k_dpm_2_a", "dpmsingle", "heun"):
        path.write_text(plain + f'\n[sample]\nsampler = "{name}"\n')
        assert load_run_file(path)[0].sample.sampler == name
    path.write_text(plain + '\n[sample]\nsampler = "unipc"\n')
    with pytest.raises(ConfigError, match="sample.sampler"):
        load_run_file(path)


def test_every_sampler_makes_an_image_in_a_tiny_run(tmp_path, tiny_sd1):
    """One tiny run samples every spelling once (2 steps, pndm 4; 64x64): each gives a real image."""
    import numpy as np
    from PIL import Image
    from train_helpers import make_run

    from engine.events import ListSink, SampleSaved
    from engine.runner import run_training

    path = make_run(tmp_path, tiny_sd1, steps=1)
    lines = [f"p{i} --w 64 --h 64 --s {max(2, sampler_entry(name).min_steps)} --d {i} --ss {name}"
             for i, name in enumerate(ACCEPTED_NAMES)]
    path.write_text(path.read_text() + f"\n[sample]\nat_first = true\nprompts = {lines!r}\n".replace("'", '"'))
    sink = ListSink()
    result = run_training(path, sink=sink)
    assert result.status == "completed", result.message
    samples = sink.of(SampleSaved)
    assert [s.index for s in samples] == list(range(len(ACCEPTED_NAMES)))
    for sample in samples:
        pixels = np.asarray(Image.open(sample.path).convert("RGB"))
        assert pixels.shape == (64, 64, 3) and pixels.std() > 0, sample.path


@pytest.mark.parametrize("where", ["sample.sampler", "sample.prompts"])
def test_the_check_names_the_package_a_sampler_needs(tmp_path, tiny_sd1, monkeypatch, where):
    """lms imports scipy when it is built: --check says so before a run fails at its first sample."""
    from train_helpers import make_run

    from engine.preflight import checks as preflight

    path = make_run(tmp_path, tiny_sd1, steps=1)
    ss, sampler = (" --ss k_lms", "ddim") if where == "sample.prompts" else ("", "lms")
    path.write_text(path.read_text() + f'\n[sample]\nevery_n_steps = 1\nsampler = "{sampler}"\n'
                    f'prompts = ["a --w 64 --h 64{ss}", "b --ss euler"]\n')
    real_missing = preflight._missing
    monkeypatch.setattr(preflight, "_missing", lambda package: package[0] == "scipy" or real_missing(package))
    _config, problems = preflight.check_run_file(path)
    found = [p for p in problems if "scipy" in p.message]
    assert [(p.key, p.hint) for p in found] == [(where, "pip install scipy")]
    assert "lms sampler needs the package 'scipy'" in found[0].message
    monkeypatch.setattr(preflight, "_missing", real_missing)
    assert not [p for p in preflight.check_run_file(path)[1] if "scipy" in p.message]


def test_the_check_refuses_too_few_steps_for_pndm(tmp_path):
    from train_helpers import make_run

    from engine.preflight import checks as preflight

    path = make_run(tmp_path, tmp_path / "model", steps=1)
    plain = path.read_text()
    path.write_text(plain + '\n[sample]\nevery_n_steps = 1\nsteps = 3\nprompts = ["a --ss euler", "b --ss pndm"]\n')
    found = [p for p in preflight.check_run_file(path)[1] if "needs at least" in p.message]
    assert [(p.key, p.hint) for p in found] == [("sample.steps", "sample.steps = 4 or more, or another sampler")]
    assert "prompt 2 ('b') samples 3 steps with pndm" in found[0].message
    path.write_text(plain + '\n[sample]\nevery_n_steps = 1\nprompts = ["a --ss PNDM --s 3", "b --ss pndm --s 4"]\n')
    found = [p for p in preflight.check_run_file(path)[1] if "needs at least" in p.message]
    assert [(p.key, p.hint) for p in found] == [("sample.prompts", "--s 4 or more on that prompt, or another sampler")]
    path.write_text(plain + '\n[sample]\nevery_n_steps = 1\nprompts = ["a --ss pndm --s 4", "b --s 2"]\n')
    assert not [p for p in preflight.check_run_file(path)[1] if "needs at least" in p.message]


def test_the_run_file_docs_list_every_sampler_with_its_scheduler():
    from pathlib import Path

    from engine.registry.samplers import SAMPLERS

    text = (Path(__file__).resolve().parents[1] / "docs" / "run-file.md").read_text(encoding="utf-8")
    section = text.split("## Samplers", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in section.splitlines():
        if row.startswith("| `"):
            name, aliases, scheduler = (c.strip() for c in row.strip("|").split("|")[:3])
            table[name.split("`")[1]] = (tuple(a.strip(" `") for a in aliases.split(",") if a.strip()),
                                         scheduler.strip("`"))
    assert table == {e.name: (e.aliases, e.scheduler) for e in SAMPLERS}
