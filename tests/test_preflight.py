"""engine.preflight.checks: what `sdft train --check` resolves beyond the schema, short of loading weights."""

from __future__ import annotations

import json

import pytest
from fresh_process import snippet
from train_helpers import make_run

from engine.events import PhaseProgress
from engine.preflight.checks import check_run_file


def _errors(path, key=None):
    _config, problems = check_run_file(path)
    return [p for p in problems if p.severity == "error" and (key is None or p.key == key)]


def _find(problems, key, severity):
    return [p for p in problems if p.key == key and p.severity == severity]


def test_a_good_file_passes_and_says_what_the_model_is(tmp_path, tiny_sd1):
    config, problems = check_run_file(make_run(tmp_path, tiny_sd1))
    assert config is not None and not [p for p in problems if p.severity == "error"]
    notes = " ".join(p.message for p in _find(problems, "model.pretrained_model_name_or_path", "note"))
    assert "SD 1.x" in notes and "epsilon" in notes


def test_a_single_file_model_is_probed_from_its_header(tmp_path):
    from models_helpers import save_tiny_single

    model = save_tiny_single(tmp_path / "sd2.safetensors", "sd2")
    _config, problems = check_run_file(make_run(tmp_path, model))
    notes = " ".join(p.message for p in _find(problems, "model.pretrained_model_name_or_path", "note"))
    assert "SD 2.x" in notes and "v-prediction" in notes and "OpenCLIP" in notes
    lora = tmp_path / "lora.safetensors"
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_down.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    [error] = _errors(make_run(tmp_path, lora), "model.pretrained_model_name_or_path")
    assert "LoRA" in error.message


@pytest.mark.parametrize("model, says", [
    ("no-such-model.safetensors", "no such file or folder"),
    ("someone/some-model", "offline"),
])
def test_a_model_that_cannot_be_found_is_an_error(tmp_path, model, says):
    [error] = _errors(make_run(tmp_path, tmp_path / model if model.endswith("s") else model),
                      "model.pretrained_model_name_or_path")
    assert says in error.message and error.line == 4


def test_every_image_must_resolve(tmp_path, tiny_sd1):
    path = make_run(tmp_path, tiny_sd1)
    (tmp_path / "rel.json").write_text(json.dumps({"im0": {"caption": "a"}}))
    path.write_text(path.read_text().replace('  image_dir = "images"\n', "").replace("meta.json", "rel.json"))
    errors = _errors(path)
    assert errors and all(e.key.startswith("datasets") for e in errors)
    assert "image_dir" in " ".join(e.message + e.hint for e in errors) or "im0" in " ".join(e.message for e in errors)


def test_bucket_limits_below_the_models_resolution_are_a_finding_not_a_crash(tmp_path, tiny_sd1):
    """No dataset resolution: the model's side is used, and a max_bucket_reso under it has no
    bucket list. --check (and training) report it; they once raised BucketError from deep inside."""
    path = make_run(tmp_path, tiny_sd1)
    path.write_text(path.read_text().replace("resolution = 64\n", "").replace("max_bucket_reso = 128", "max_bucket_reso = 64"))
    errors = _errors(path)
    assert any("max_bucket_reso 64 is smaller than the resolution" in e.message for e in errors), errors


def test_resume_state_must_exist_and_verify(tmp_path, tiny_sd1):
    path = make_run(tmp_path, tiny_sd1, train_extra='resume = "no-such-state"')
    [error] = _errors(path, "train.resume")
    assert "no-such-state does not exist" in error.message and "has no saved state yet" in error.message
    state = tmp_path / "fake-state"
    state.mkdir()
    path.write_text(path.read_text().replace("no-such-state", str(state)))
    [error] = _errors(path, "train.resume")
    assert "manifest.json" in error.message
    path.write_text(path.read_text().replace(str(state), "latest"))
    _config, problems = check_run_file(path)
    assert _find(problems, "train.resume", "note") and not _errors(path)


def test_sample_prompts_parse_in_kohyas_forms(tmp_path, tiny_sd1):
    (tmp_path / "p.toml").write_text('[prompt]\nwidth = 64\n[[prompt.subset]]\nprompt = "a cat"\n')
    path = make_run(tmp_path, tiny_sd1, save_extra='\n[sample]\nevery_n_steps = 10\nprompts = "p.toml"\n')
    assert not _errors(path)
    (tmp_path / "p.toml").write_text('[prompt]\nwidth = 64\n[[prompt.subset]]\nprompt = "a cat"\n'
                                     'sample_sampler = "dpm_fancy"\n')
    [error] = _errors(path, "sample.prompts")
    assert "unknown sampler 'dpm_fancy'" in error.message and error.file.endswith("p.toml") and error.line == 3


@pytest.mark.parametrize("extra, key, says", [
    ("args = { bogus = 1 }", "optimizer.args.bogus", "bogus"),   # the argument at fault is named
    ('lr_scheduler = "cosine"\nlr_scheduler_args = { lr_end = 0.1 }', "optimizer.lr_scheduler_args", "no option 'lr_end'"),
    ("lr_scheduler_args = { last_epoch = 4 }", "optimizer.lr_scheduler_args", "initial_lr"),
    ('type = "Prodigy"', "optimizer.type", "pip install prodigyopt"),
])
def test_optimizer_and_schedule_are_built_with_the_files_args(tmp_path, tiny_sd1, extra, key, says):
    pytest.importorskip("torch")
    if "Prodigy" in extra and __import__("importlib").util.find_spec("prodigyopt"):
        pytest.skip("prodigyopt is installed here")
    [error] = _errors(make_run(tmp_path, tiny_sd1, optimizer_extra=extra), key)
    assert says in error.message + error.hint


def test_valid_scheduler_args_pass(tmp_path, tiny_sd1):
    path = make_run(tmp_path, tiny_sd1, optimizer_extra='lr_scheduler = "polynomial"\nlr_scheduler_args = { lr_end = 1e-7 }')
    assert not _errors(path)


def test_cuda_only_choices_on_a_cpu_say_what_happens_instead(tmp_path, tiny_sd1):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = make_run(tmp_path, tiny_sd1)
    text = path.read_text().replace("[cache]", '[memory]\nmixed_precision = "fp16"\nattention = "xformers"\n\n[cache]')
    path.write_text(text)
    _config, problems = check_run_file(path)
    assert not [p for p in problems if p.severity == "error"]
    assert "using bf16 instead" in _find(problems, "memory.mixed_precision", "warning")[0].message
    assert "using PyTorch SDPA attention instead" in _find(problems, "memory.attention", "warning")[0].message
    path.write_text(text.replace('attention = "xformers"', 'device = "cuda"'))
    assert _errors(path, "memory.device")


def test_training_refuses_what_check_refuses_before_caching(tmp_path, tiny_sd1):
    """AdamW8bit without bitsandbytes fails in a second, not after latent caching."""
    import importlib.util

    from engine.config.problems import ConfigError
    from engine.runner import run_training

    if importlib.util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes is installed here")
    events = []

    class Sink:
        def emit(self, event):
            events.append(event)

    path = make_run(tmp_path, tiny_sd1, optimizer_extra='type = "AdamW8bit"')
    with pytest.raises(ConfigError) as info:
        run_training(path, sink=Sink())
    assert any("pip install bitsandbytes" in p.hint for p in info.value.problems)
    assert not [e for e in events if isinstance(e, PhaseProgress)]
    assert not (tmp_path / "runs" / "t" / "events.jsonl").exists()


def test_check_cli_lists_preflight_errors_and_exits_2(tmp_path, tiny_sd1, capsys):
    from engine.cli import main  # `sdft train RUN.toml --check`, in this process

    path = make_run(tmp_path, tiny_sd1, optimizer_extra="args = { bogus = 1 }")
    code = main(["train", str(path), "--check"])
    err = capsys.readouterr().err
    assert code == 2 and "optimizer.args" in err and "bogus" in err


PREFLIGHT_IMPORTS = snippet("the preflight", "import sys, engine.preflight.checks, engine.preflight.model; "
                                                   "print('torch' in sys.modules)")


def test_importing_preflight_loads_no_torch(in_fresh_process):
    out = in_fresh_process(PREFLIGHT_IMPORTS)
    assert out.stdout.strip() == "False", out.stderr
