"""The smaller kohya options, each on its own: save_n_epoch_ratio, the DeepSpeed refusals, the
WD v3 tagger's category options and the quality-tag refusal."""

from __future__ import annotations

import pytest
from labeling_helpers import make_wd14_folder, solid_image

from engine.kohya.convert import from_command, render
from engine.train.schedule import Schedule, epochs_between_saves


class _Save:
    def __init__(self, every_n_epochs=None, n_epoch_ratio=None):
        self.every_n_epochs, self.n_epoch_ratio = every_n_epochs, n_epoch_ratio


@pytest.mark.parametrize("epochs, ratio, every", [(10, 3, 3), (10, 5, 2), (4, 3, 1), (3, 20, 1), (12, 12, 1)])
def test_the_ratio_is_kohyas_floor_of_epochs_over_n_and_at_least_one(epochs, ratio, every):
    schedule = Schedule(batches_per_epoch=5, steps_per_epoch=5, total_steps=5 * epochs, total_epochs=epochs)
    assert epochs_between_saves(_Save(every_n_epochs=7, n_epoch_ratio=ratio), schedule) == every
    assert epochs_between_saves(_Save(every_n_epochs=7), schedule) == 7


def test_a_run_with_a_ratio_saves_at_those_epochs(tmp_path, tiny_sd1):
    from train_helpers import make_run

    from engine.runner import run_training

    # 6 images in 3 buckets, batch 2: 3 steps an epoch; 4 epochs, ratio 3 -> every 4 // 3 = 1 epoch
    run = make_run(tmp_path, tiny_sd1, train_extra="max_train_epochs = 4", save_extra="n_epoch_ratio = 3")
    run.write_text(run.read_text().replace("max_train_steps = 4\n", ""))
    result = run_training(run)
    assert result.status == "completed", result.message
    saved = sorted(p.name for p in (tmp_path / "runs" / "t" / "checkpoints").glob("t*.safetensors"))
    assert saved == ["t-000001.safetensors", "t-000002.safetensors", "t-000003.safetensors", "t.safetensors"]


def test_from_kohya_keeps_the_ratio_without_max_train_epochs_and_check_accepts_it(tmp_path, tiny_sd1):
    from train_helpers import make_run

    from engine.preflight.checks import check_run_file

    conversion = from_command(["--save_n_epoch_ratio", "5", "--max_train_steps", "40"])
    assert not conversion.refused
    assert conversion.document["save"] == {"n_epoch_ratio": 5}
    _config, problems = check_run_file(make_run(tmp_path, tiny_sd1, save_extra="n_epoch_ratio = 5"))
    assert not [p for p in problems if p.severity == "error"], [str(p) for p in problems]
    both = make_run(tmp_path, tiny_sd1, save_extra="n_epoch_ratio = 5\nevery_n_epochs = 2", name="both.toml")
    _config, problems = check_run_file(both)
    refused = [p for p in problems if p.key == "save.every_n_epochs"]
    assert refused and "n_epoch_ratio" in refused[0].message and refused[0].severity == "error"


DEEPSPEED = ["--deepspeed", "--zero_stage", "2", "--offload_optimizer_device", "cpu",
             "--offload_optimizer_nvme_path", "/nvme", "--offload_param_device", "cpu",
             "--offload_param_nvme_path", "/nvme", "--zero3_init_flag", "--zero3_save_16bit_model",
             "--fp16_master_weights_and_gradients"]


def test_every_deepspeed_option_is_refused_with_what_to_use_instead():
    conversion = from_command(DEEPSPEED + ["--learning_rate=1e-5"])
    why = {r.option: r.refused for r in conversion.refused}
    names = {a.lstrip("-") for a in DEEPSPEED if a.startswith("--")}
    assert set(why) == names, sorted(names ^ set(why))
    for name, reason in why.items():
        assert "--gpus N" in reason and "accelerate config" not in reason, (name, reason)
    assert {k: v for k, v in conversion.document.items() if k != "config_version"} == {
        "optimizer": {"learning_rate": 1e-5}}
    assert "--deepspeed:" in render(conversion, "fine_tune.py ...")


# a WD v3 selected_tags.csv has the v1.4 layout: four ratings (9), general (0), character (4)
V3_ROWS = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
           ("1girl", 0), ("solo", 0), ("smile", 0), ("hatsune_miku", 4), ("kagamine_rin", 4)]
V3_SCORES = [0.2, 0.6, 0.1, 0.05, 0.95, 0.9, 0.4, 0.7, 0.5]


def _tag(tmp_path, *options: str) -> str:
    from engine.labeling.cli import tag_command

    model = tmp_path / "wd-vit-tagger-v3"
    if not model.exists():
        make_wd14_folder(model, V3_SCORES, rows=V3_ROWS)
    folder = tmp_path / "img"
    solid_image(folder / "a.png")
    assert tag_command([str(folder), "--model", str(model), "--overwrite", "--thresh", "0.35", *options]) == 0
    return (folder / "a.txt").read_text(encoding="utf-8").strip()


def test_wd_v3_category_options_through_sdft_tag(tmp_path):
    assert _tag(tmp_path) == "1girl, solo, smile, hatsune_miku, kagamine_rin"
    # a character threshold of its own: rin (0.5) falls out, general tags keep --thresh
    assert _tag(tmp_path, "--character-threshold", "0.6") == "1girl, solo, smile, hatsune_miku"
    assert _tag(tmp_path, "--general-threshold", "0.92", "--character-tags-first") == (
        "hatsune_miku, kagamine_rin, 1girl")
    assert _tag(tmp_path, "--use-rating-tags", "--character-threshold", "0.9") == "sensitive, 1girl, solo, smile"
    assert _tag(tmp_path, "--use-rating-tags-as-last-tag", "--general-threshold", "0.92",
                "--character-threshold", "0.9") == "1girl, sensitive"
    assert _tag(tmp_path, "--always-first-tags", "smile,kagamine_rin,absent") == (
        "smile, kagamine_rin, 1girl, solo, hatsune_miku")


@pytest.mark.parametrize("flag", ["--use-quality-tags", "--use-quality-tags-as-last-tag"])
def test_quality_tags_are_refused_with_the_reason(tmp_path, capsys, flag):
    from engine.labeling.cli import tag_command

    folder = tmp_path / "img"
    solid_image(folder / "a.png")
    assert tag_command([str(folder), flag]) == 2
    err = capsys.readouterr().err
    assert "Quality category" in err and "v3" in err
    assert not (folder / "a.txt").exists()
