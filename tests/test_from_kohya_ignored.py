"""What tools write and kohya ignores is left out with a note, so a converted file passes --check
unless the source had a real problem; no secret is ever written; the refusal and --check texts
name the real cause (ddp_*, the warm-up's schedule, DAdaptSGD at a warm-up's zero learning rate)."""

from __future__ import annotations

import shlex

import pytest

from engine.kohya.cli import from_kohya_command
from engine.kohya.convert import from_command, render, report_lines

# what the kohya_ss GUI writes for settings the user never touched
TOOL_WRITTEN = ("--dynamo_backend=no --sample_sampler=euler_a --multires_noise_discount=0 --huber_c=0.2 "
                "--learning_rate_te=1e-6 --bucket_reso_steps=1 --min_bucket_reso=128 --save_last_n_epochs=3 "
                "--noise_offset_random_strength --lr_scheduler=constant --lr_warmup_steps=0.1")


def _left_out(conversion) -> dict[str, str]:
    return {r.option: r.dropped for r in conversion.dropped}


def _check(tmp_path, tiny_sd1, conversion, source: str):
    """--check of a converted file on the tiny model and train_helpers' data."""
    import tomlkit
    from train_helpers import make_dataset

    from engine.preflight.checks import check_run_file

    make_dataset(tmp_path)
    doc = tomlkit.parse(render(conversion, source))
    doc.setdefault("model", {})["pretrained_model_name_or_path"] = str(tiny_sd1)
    if "datasets" not in doc and "dataset_config" not in doc:
        doc["datasets"] = [{"subsets": [{"metadata_file": "meta.json", "image_dir": "images"}]}]
    run = tmp_path / "run.toml"
    run.write_text(tomlkit.dumps(doc), encoding="utf-8")
    _config, problems = check_run_file(run)
    return [p for p in problems if p.severity == "error"]


def test_values_kohya_ignores_are_left_out_with_a_note_and_check_passes(tmp_path, tiny_sd1):
    conversion = from_command(shlex.split(TOOL_WRITTEN))
    left_out = _left_out(conversion)
    assert set(left_out) == {"dynamo_backend", "sample_sampler", "multires_noise_discount", "huber_c",
                             "learning_rate_te", "bucket_reso_steps", "min_bucket_reso", "save_last_n_epochs",
                             "noise_offset_random_strength", "lr_warmup_steps"}
    assert "without --enable_bucket" in left_out["bucket_reso_steps"]
    assert "the constant schedule has no warm-up" in left_out["lr_warmup_steps"]
    assert "without multi-resolution noise" in left_out["multires_noise_discount"]
    assert conversion.document == {"config_version": 1, "optimizer": {"lr_scheduler": "constant"}}
    text = render(conversion, TOOL_WRITTEN)
    assert "# Left out (kohya ignores them" in text and "#   --huber_c: kohya ignores it" in text
    assert _check(tmp_path, tiny_sd1, conversion, TOOL_WRITTEN) == []


def test_the_adafactor_schedules_warm_up_is_left_out_and_named(tmp_path, tiny_sd1):
    conversion = from_command(shlex.split("--optimizer_type=Adafactor --lr_warmup_steps=50 --lr_scheduler=cosine"))
    assert conversion.document["optimizer"]["lr_scheduler"] == "adafactor"
    assert "the adafactor schedule has no warm-up" in _left_out(conversion)["lr_warmup_steps"]
    assert _check(tmp_path, tiny_sd1, conversion, "adafactor") == []


def test_real_problems_stay_for_check_to_name(tmp_path, tiny_sd1):
    source = ("--adaptive_noise_scale=0.1 --enable_bucket --bucket_reso_steps=1 --lr_scheduler_type=StepLR "
              "--lr_scheduler_args step_size=10 --lr_warmup_steps=5")
    conversion = from_command(shlex.split(source))
    assert _left_out(conversion) == {}
    errors = {p.key: p for p in _check(tmp_path, tiny_sd1, conversion, source)}
    assert {"train.adaptive_noise_scale", "optimizer.lr_warmup_steps"} <= set(errors)
    assert "multiple of 8" in errors["general.bucket_reso_steps"].message
    assert errors["train.adaptive_noise_scale"].hint


def test_a_run_files_warm_up_message_names_its_schedule(tmp_path, tiny_sd1):
    from train_helpers import make_run

    from engine.preflight.checks import check_run_file

    run = make_run(tmp_path, tiny_sd1, optimizer_extra='type = "Adafactor"\nlr_scheduler = "adafactor"\n'
                                                      "lr_warmup_steps = 10\n")
    _config, problems = check_run_file(run)
    warm = next(p for p in problems if p.key == "optimizer.lr_warmup_steps")
    assert "the adafactor schedule has none" in warm.message and "constant" not in warm.message


def test_no_secret_is_written_anywhere(tmp_path, capsys):
    out = tmp_path / "run.toml"
    argv = ["-o", str(out), "--", "accelerate", "launch", "fine_tune.py", "--huggingface_token=hf_TOPSECRET1",
            "--wandb_api_key", "wk_TOPSECRET2", "--my_service_token", "tok_TOPSECRET3", "--learning_rate=1e-5"]
    assert from_kohya_command(argv) == 0
    written, printed = out.read_text(), capsys.readouterr()
    for secret in ("TOPSECRET1", "TOPSECRET2", "TOPSECRET3"):
        assert secret not in written and secret not in printed.out + printed.err
    assert "--huggingface_token=<redacted>" in written and "--wandb_api_key <redacted>" in written
    lines = {line[0]: line[2] for line in report_lines(from_command(argv[3:]))}
    assert lines["--huggingface_token"].endswith("its value is written nowhere, not even in the file's header")
    assert "written nowhere" in lines["--wandb_api_key"]


def test_the_gui_configs_secrets_are_not_written(tmp_path, capsys):
    gui = tmp_path / "gui.json"
    gui.write_text('{"optimizer": "AdamW", "huggingface_token": "hf_TOPSECRET4", "wandb_api_key": "", '
                   '"pretrained_model_name_or_path": "m"}')
    out = tmp_path / "run.toml"
    assert from_kohya_command(["-o", str(out), "--config-file", str(gui)]) == 0
    printed = capsys.readouterr()
    assert "TOPSECRET4" not in out.read_text() + printed.out + printed.err


@pytest.mark.parametrize("option, value", [("ddp_timeout", 30), ("ddp_gradient_as_bucket_view", True),
                                           ("ddp_static_graph", True)])
def test_the_ddp_options_map_to_sdfts_multi_gpu_keys(option, value):
    # kohya sets them in its own code, not in accelerate's config; sdft has run-file keys for them
    conversion = from_command([f"--{option}", "30"] if option == "ddp_timeout" else [f"--{option}"])
    assert not conversion.refused and conversion.document["train"] == {option: value}


def test_dadapt_sgd_at_a_warm_ups_zero_learning_rate_names_the_real_cause(tmp_path, tiny_sd1):
    pytest.importorskip("dadaptation")
    from train_helpers import make_run

    from engine.preflight.checks import check_run_file

    run = make_run(tmp_path, tiny_sd1, optimizer_extra='type = "DAdaptSGD"\nlr_scheduler = "cosine"\n'
                                                      "lr_warmup_steps = 2\n")
    run.write_text(run.read_text().replace("learning_rate = 1e-4", "learning_rate = 1.0"))
    _config, problems = check_run_file(run)
    errors = {p.key: p for p in problems if p.severity == "error"}
    assert set(errors) == {"optimizer.lr_warmup_steps"}, [str(p) for p in errors.values()]
    problem = errors["optimizer.lr_warmup_steps"]
    assert "DAdaptSGD fails when its learning rate is 0" in problem.message and "global_sk_sq" in problem.message
    assert "lr_warmup_steps = 0" in problem.hint and "DAdaptAdam" in problem.hint
    run.write_text(run.read_text().replace("lr_warmup_steps = 2", "lr_warmup_steps = 0"))
    _config, problems = check_run_file(run)
    assert not [p for p in problems if p.severity == "error"], "without the warm-up it runs"
