"""`sdft from-kohya`: every option of kohya's fine_tune.py is mapped or refused with a reason,
kohya's own documented command converts to a run TOML that --check accepts, and kohya's config
files (flat or sectioned as the kohya_ss GUI writes them) convert the same way."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import tomlkit

from engine.kohya.convert import from_command, from_config_file, render
from engine.kohya.options import FLAG, LIST, OPTIONS, VALUE

KOHYA = json.loads((Path(__file__).parent / "data" / "kohya_fine_tune_options.json").read_text())["options"]
KIND = {"_StoreTrueAction": FLAG, "_StoreAction": VALUE}

# kohya's fine-tune documentation (docs/fine_tune_README_ja.md), with this test's paths
DOC_COMMAND = """accelerate launch --num_cpu_threads_per_process 1 fine_tune.py
    --pretrained_model_name_or_path={model}
    --output_dir={out} --output_name=fine
    --dataset_config={dataset}
    --save_model_as=safetensors
    --learning_rate=5e-6 --max_train_steps=10000
    --use_8bit_adam --xformers --gradient_checkpointing
    --mixed_precision=fp16"""


def test_every_option_of_kohyas_parser_is_mapped_or_refused_with_a_reason():
    names = {o["option"].lstrip("-") for o in KOHYA}
    assert len(names) == 167
    assert names == set(OPTIONS), (sorted(names - set(OPTIONS)), sorted(set(OPTIONS) - names))
    for option in KOHYA:
        name = option["option"].lstrip("-")
        opt = OPTIONS[name]
        expected = LIST if option["nargs"] == "*" else KIND.get(option["action"], VALUE)
        assert opt.kind == expected, name
        if opt.kind != FLAG and option["default"] not in (None, "None") and not opt.refused:
            assert opt.default == option["default"], (name, opt.default, option["default"])
        assert opt.to is not None or opt.refused or name == "config_file", name
        if opt.refused:
            assert len(opt.refused) > 20, name   # a reason, not a word


def test_the_readme_counts_what_maps_and_what_is_refused():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    found = re.search(r"(\d+) map to a run-file key \(`config_file` is read\), (\d+) are refused", " ".join(readme.split()))
    assert found, "README's Coming from kohya names the counts"
    mapped = sum(1 for o in OPTIONS.values() if not o.refused)    # config_file among them: it is read
    assert (int(found.group(1)), int(found.group(2))) == (mapped, len(OPTIONS) - mapped)


def test_kohyas_documented_command_converts_to_a_file_check_accepts(tmp_path, tiny_sd1):
    pytest.importorskip("bitsandbytes", reason="--use_8bit_adam needs bitsandbytes (in the dev extra)")
    from preflight_helpers import make_fixture

    from engine.preflight.checks import check_run_file

    make_fixture(tmp_path, tiny_sd1)
    dataset = tmp_path / "dataset.toml"
    dataset.write_text('[general]\nresolution = 64\nenable_bucket = true\nmin_bucket_reso = 64\n'
                       'max_bucket_reso = 128\n[[datasets]]\n  [[datasets.subsets]]\n  metadata_file = "meta.json"\n')
    command = DOC_COMMAND.format(model=tiny_sd1, out=tmp_path / "out", dataset=dataset)
    conversion = from_command(shlex.split(command))
    assert not conversion.refused, [(r.option, r.refused) for r in conversion.refused]
    run = tmp_path / "run.toml"
    run.write_text(render(conversion, command), encoding="utf-8")
    doc = tomlkit.parse(run.read_text())
    assert doc["optimizer"]["type"] == "AdamW8bit" and doc["memory"]["attention"] == "xformers"
    assert doc["memory"]["mixed_precision"] == "fp16" and doc["memory"]["gradient_checkpointing"] is True
    assert doc["save"]["format"] == "safetensors" and doc["optimizer"]["learning_rate"] == 5e-6
    _config, problems = check_run_file(run)
    assert not [p for p in problems if p.severity == "error"], [str(p) for p in problems]


def test_the_metadata_form_builds_kohyas_dataset_tables(tmp_path):
    conversion = from_command(shlex.split(
        "python fine_tune.py --pretrained_model_name_or_path=model.ckpt --in_json meta_lat.json "
        "--train_data_dir=train_data --shuffle_caption --train_batch_size=2 --resolution=512,768 "
        "--dataset_repeats 3 --caption_prefix 123 --optimizer_args weight_decay=0.01 betas=0.9,0.999 "
        "--lr_scheduler_args power=2 --use_lion_optimizer --mem_eff_attn --sample_sampler k_euler_a "
        "--sample_prompts prompts.txt --sample_every_n_steps 100"))
    doc = conversion.document
    assert doc["datasets"] == [{"subsets": [{"metadata_file": "meta_lat.json", "image_dir": "train_data"}]}]
    assert doc["general"] == {"shuffle_caption": True, "batch_size": 2, "resolution": [512, 768],
                              "num_repeats": 3, "caption_prefix": "123"}   # a prefix stays text
    assert doc["optimizer"]["args"] == {"weight_decay": 0.01, "betas": [0.9, 0.999]}
    assert doc["optimizer"]["lr_scheduler_args"] == {"power": 2}
    assert doc["optimizer"]["type"] == "Lion" and doc["sample"]["sampler"] == "euler_a"
    row = next(r for r in conversion.rows if r.option == "mem_eff_attn")
    assert row.went == ['memory.attention = "sdpa"'] and "SDPA" in row.note


def test_the_ddp_options_map_to_the_multi_gpu_keys():
    conversion = from_command(["--ddp_timeout", "90", "--ddp_gradient_as_bucket_view", "--ddp_static_graph"])
    assert not conversion.refused
    assert conversion.document["train"] == {"ddp_timeout": 90, "ddp_gradient_as_bucket_view": True,
                                            "ddp_static_graph": True}
    why = {r.option: r.refused for r in from_command(["--deepspeed"]).refused}
    assert "--gpus N" in why["deepspeed"] and "accelerate config" not in why["deepspeed"]


def test_the_fused_backward_pass_maps_to_the_memory_option():
    conversion = from_command(["--fused_backward_pass", "--optimizer_type", "AdaFactor", "--full_bf16",
                               "--mixed_precision", "bf16"])
    assert not conversion.refused
    assert conversion.document["memory"]["fused_backward_pass"] is True


def test_refusals_say_why_and_unknown_options_are_named():
    conversion = from_command(["--resume", "state-dir", "--optimizer_type", "Adam-8bit",
                               "--huggingface_repo_id", "me/x", "--bogus", "3", "--learning_rate=1e-5"])
    why = {r.option: r.refused for r in conversion.refused}
    assert "another layout" in why["resume"]
    assert "Adam-8bit" in why["optimizer_type"] and "module.Class" in why["optimizer_type"]
    assert "hub" in why["huggingface_repo_id"] and why["bogus"] == "not an option of kohya's fine_tune.py"
    assert "3" not in why, "an unknown option's value is not read as another option"
    assert conversion.document["optimizer"] == {"learning_rate": 1e-5}
    text = render(conversion, "fine_tune.py ...")
    assert "# Refused (not in this file):" in text and "--resume:" in text


def test_a_sectioned_config_file_skips_kohyas_defaults(tmp_path):
    config = tmp_path / "kohya.toml"
    config.write_text('[model_arguments]\npretrained_model_name_or_path = "m.safetensors"\nv2 = false\n'
                      'v_parameterization = false\n[dataset_arguments]\nresolution = "512"\ndataset_config = "d.toml"\n'
                      '[training_arguments]\nmax_train_steps = 1600\nhuber_c = 0.1\nloss_type = "l2"\n'
                      'learning_rate = 1e-5\nddp_timeout = 0\nxformers = true\nseed = 42\n'
                      '[optimizer_arguments]\noptimizer_type = "AdamW"\noptimizer_args = ["weight_decay=0.1"]\n'
                      'lr_scheduler = "cosine"\nlr_warmup_steps = 100\n', encoding="utf-8")
    conversion = from_config_file(config)
    doc = conversion.document
    assert doc["model"] == {"pretrained_model_name_or_path": "m.safetensors"}
    assert "train" in doc and doc["train"] == {"seed": 42}, "kohya's defaults (max_train_steps 1600) are skipped"
    assert doc["optimizer"] == {"learning_rate": 1e-5, "type": "AdamW", "args": {"weight_decay": 0.1},
                                "lr_scheduler": "cosine", "lr_warmup_steps": 100}
    assert doc["dataset_config"] == "d.toml"
    left_out = {r.option: r.dropped for r in conversion.dropped}
    assert "dataset TOML" in left_out["resolution"], "kohya ignores dataset options beside --dataset_config"
    why = {r.option: r.refused for r in conversion.refused}
    assert "ddp_timeout" not in why and "ddp_timeout" not in doc.get("train", {}), "0 is kohya's default wait"


def test_the_command_writes_the_file_and_prints_the_table(tmp_path, capsys):
    from engine.kohya.cli import from_kohya_command

    out = tmp_path / "run.toml"
    assert from_kohya_command(["-o", str(out), "--", "fine_tune.py", "--v2", "--xformers", "--lowram"]) == 0
    printed = capsys.readouterr().out
    assert "--lowram" in printed and "refused" in printed and "memory.attention" in printed
    assert tomlkit.parse(out.read_text())["model"]["v2"] is True
    assert from_kohya_command(["-o", str(out), "--", "fine_tune.py", "--v2"]) == 2, "an existing file is kept"


def test_the_table_cuts_nothing_at_80_columns(tmp_path, capsys, monkeypatch):
    from engine.kohya.cli import from_kohya_command

    monkeypatch.setenv("COLUMNS", "80")
    out = tmp_path / "run.toml"
    model = "--pretrained_model_name_or_path=/models/a/long/path/to/v1-5-pruned-emaonly.safetensors"
    assert from_kohya_command(["-o", str(out), "--", "train_db.py", model, "--train_data_dir=/data/train"]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if not line.startswith("wrote ")]   # that one soft-wraps
    assert max(len(line) for line in table) <= 80
    assert "…" not in printed   # train_db.py's note names --stop_text_encoder_training whole, wrapped if need be
    assert "stop_text_encoder_training" in "".join(line.strip() for line in printed.splitlines())
