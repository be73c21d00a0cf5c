"""The learning benchmark's parts, each on its own (engine/bench): the concept dataset, the
calibrated model, the evaluator's scores, loading another trainer's file, the run files, the
report and its chart, and the command line's errors. No training here (test_learning_bench.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.bench import concepts as cc
from engine.bench.model import FAMILIES, TEXT_GAIN, build_bench_model, calibrate_vae, family_named, load_pixels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return cc.write_concept_dataset(tmp_path_factory.mktemp("concepts"), cc.concepts_named(cc.CI_CONCEPT_NAMES),
                                    per_concept=3, held_out=1)


@pytest.fixture(scope="module")
def sd1_base(tmp_path_factory, dataset):
    folder = tmp_path_factory.mktemp("base") / "sd1"
    build_bench_model(family_named("sd1"), folder, [i.path for i in dataset.train], dataset.side)
    return folder


@pytest.fixture(scope="module")
def sd2_bases(tmp_path_factory, dataset):
    """The SD2 families' bench models, each built on first use and only read by the tests."""
    root, built = tmp_path_factory.mktemp("sd2-bases"), {}

    def base(name: str) -> Path:
        if name not in built:
            build_bench_model(family_named(name), root / name, [i.path for i in dataset.train[:4]], dataset.side)
            built[name] = root / name
        return built[name]

    return base


# ------------------------------------------------------------------ the concepts


def test_every_concept_has_training_and_held_out_images_with_its_caption(dataset):
    assert len(dataset.train) == 4 * 3 and len(dataset.held_out) == 4
    meta = json.loads(dataset.train_metadata.read_text())
    for image in dataset.train:
        assert image.path.is_file() and image.path.parent == dataset.train_dir
        assert meta[image.path.name] == {"caption": dataset.concepts[image.concept].caption, "image_size": [64, 64]}
    held = json.loads(dataset.held_out_metadata.read_text())
    assert {e["caption"] for e in held.values()} == {c.caption for c in dataset.concepts}
    assert not {i.path.name for i in dataset.train} & set(held) or dataset.train_dir != dataset.held_out_dir


def test_the_dataset_is_drawn_alike_each_time_and_held_out_images_are_new(dataset, tmp_path):
    again = cc.write_concept_dataset(tmp_path, dataset.concepts, per_concept=3, held_out=1)
    for a, b in zip(dataset.train, again.train, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()
    train_bytes = {i.path.read_bytes() for i in dataset.train}
    assert not any(i.path.read_bytes() in train_bytes for i in dataset.held_out)
    # Images of one concept differ from each other (jitter), so a concept is a cloud.
    first = [i.path.read_bytes() for i in dataset.train if i.concept == 0]
    assert len(set(first)) == len(first)


def test_a_drawn_dataset_reads_back_in_drawing_order(dataset):
    back = cc.read_concept_dataset(dataset.root)
    assert back == dataset


def test_concept_errors_say_what_to_use(tmp_path):
    with pytest.raises(ValueError, match="unknown concept green-moon: use red-circle"):
        cc.concepts_named(["green-moon"])
    with pytest.raises(ValueError, match="at least two concepts"):
        cc.write_concept_dataset(tmp_path, cc.CONCEPTS[:1])
    with pytest.raises(ValueError, match="run `sdft bench --learning`"):
        cc.read_concept_dataset(tmp_path / "nothing")


def test_the_full_benchmark_has_at_least_eight_concepts_with_distinct_captions():
    assert len(cc.CONCEPTS) >= 8
    assert len({c.caption for c in cc.CONCEPTS}) == len(cc.CONCEPTS)


# ------------------------------------------------------------------ the model


def test_calibration_gives_unit_spread_latents_a_point_posterior_and_the_same_decoder(dataset):
    from engine.models.tiny import TinySpec, build_tiny_components

    vae = build_tiny_components(TinySpec("sd1"))["vae"].eval()
    pixels = load_pixels([i.path for i in dataset.train], dataset.side)
    with torch.no_grad():
        before = vae.encode(pixels).latent_dist
        decoded_before = vae.decode(before.mean).sample
    assert (before.mean * 0.18215).std() < 0.1                   # what the issue measured: tiny latents
    assert before.std.mean() > 0.5                                # and a log-variance that swamps them
    figures = calibrate_vae(vae, pixels)
    with torch.no_grad():
        after = vae.encode(pixels).latent_dist
        decoded_after = vae.decode(after.mean).sample
    scaled = after.mean * 0.18215
    torch.testing.assert_close(scaled.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(scaled.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3, rtol=0)
    assert after.std.max() < 1e-6
    torch.testing.assert_close(decoded_after, decoded_before, atol=1e-4, rtol=1e-4)
    assert figures["scaled_latent_std_after"] == pytest.approx(1.0, abs=1e-3)


def test_the_bench_model_loads_as_its_family_and_every_transformers_reads_its_text_encoder(sd1_base):
    from safetensors import safe_open

    from engine.models.load import load_model
    from engine.models.text_encoding import final_layer_norm

    model = load_model(str(sd1_base))
    assert (model.v2, model.v_parameterization) == (False, False)
    assert model.vae.config.scaling_factor == pytest.approx(0.18215)      # nothing warns about the VAE
    assert model.unet.config.norm_num_groups == 32                        # kohya's U-Net class fixes 32
    assert torch.all(final_layer_norm(model.text_encoder).weight == TEXT_GAIN)
    with safe_open(str(sd1_base / "text_encoder" / "model.safetensors"), "pt") as weights:
        assert all(key.startswith("text_model.") for key in weights.keys())


@pytest.mark.parametrize("name", ["sd2", "sd2-v"])
def test_sd2_families_load_with_their_prediction_type(sd2_bases, name):
    from engine.models.load import load_model

    model = load_model(str(sd2_bases(name)))
    assert (model.v2, model.v_parameterization) == (True, name == "sd2-v")


def test_families_are_every_family_sdft_trains():
    assert [f.name for f in FAMILIES] == ["sd1", "sd2", "sd2-v", "sdxl"]
    with pytest.raises(ValueError, match="use sd1, sd2, sd2-v, sdxl"):
        family_named("sd3")


# ------------------------------------------------------------------ the evaluator


def test_each_sample_goes_to_the_concept_of_its_nearest_training_latent():
    from engine.bench.scoring import adherence, nearest_concepts, sample_distance

    train = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]]).view(4, 2, 1, 1)
    owners = torch.tensor([0, 0, 1, 1])
    samples = torch.tensor([[0.2, 0.4], [9.0, 0.5], [6.0, 0.0]]).view(3, 2, 1, 1)
    predicted = nearest_concepts(samples, train, owners, 2)
    assert predicted.tolist() == [0, 1, 1]
    scores = adherence(predicted, torch.tensor([0, 0, 1]), 2)
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["chance"] == 0.5
    assert scores["confusion"] == [[1, 1], [0, 1]]
    assert sample_distance(samples, train, samples) == pytest.approx(1.0)
    assert sample_distance(samples * 10, train, samples) > 5


def test_the_validation_loss_is_fixed_and_lower_for_a_better_prediction(sd1_base, dataset):
    from engine.bench.scoring import encode_latents, prompt_encoder_for, validation_loss
    from engine.bench.trained import load_trained

    model = load_trained(sd1_base)
    encoder = prompt_encoder_for(model, 2)
    latents = encode_latents(model, [i.path for i in dataset.held_out], dataset.side)
    captions = [i.caption for i in dataset.held_out]
    first = validation_loss(model, encoder, latents, captions)
    assert validation_loss(model, encoder, latents, captions) == first     # fixed timesteps and noise
    with torch.no_grad():
        for p in model.unet.conv_out.parameters():
            p.zero_()                          # predicts 0: the loss becomes the target's mean square
    assert validation_loss(model, encoder, latents, captions) == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------------ another trainer's file


def _single_file(model, path, shift: float):
    """``model`` saved as kohya saves: one original-layout file, no sdft metadata, U-Net moved."""
    from safetensors.torch import load_file, save_file

    from engine.models.save import save_model

    with torch.no_grad():
        model.unet.conv_in.bias += shift
    save_model(path, unet=model.unet, text_encoder=model.text_encoder, vae=model.vae, v2=model.v2,
               v_parameterization=model.v_parameterization, fmt="safetensors", precision="float")
    save_file(load_file(str(path)), str(path))      # drops the metadata, as kohya's file has none of ours
    return path


def test_another_trainers_file_is_read_onto_the_base_architecture(sd1_base, tmp_path):
    from engine.bench.trained import load_trained
    from engine.models.load import load_model

    path = _single_file(load_trained(sd1_base), tmp_path / "other.safetensors", shift=0.25)
    trained, base = load_trained(sd1_base, path), load_trained(sd1_base)
    torch.testing.assert_close(trained.unet.conv_in.bias, base.unet.conv_in.bias + 0.25)
    assert trained.text_encoder.config.num_attention_heads == 4
    # What reading the file alone gives: an architecture guessed from shapes (SD's conventions).
    assert load_model(str(path)).text_encoder.config.num_attention_heads != 4


def test_a_diffusers_folder_another_trainer_saved_is_read_too(sd1_base, tmp_path):
    from engine.bench.trained import load_trained
    from engine.models.save import save_model

    model = load_trained(sd1_base)
    with torch.no_grad():
        model.unet.conv_in.bias += 0.5
    save_model(tmp_path / "folder", unet=model.unet, text_encoder=model.text_encoder, vae=model.vae, v2=False,
               v_parameterization=False, fmt="diffusers_safetensors", precision="float")
    trained = load_trained(sd1_base, tmp_path / "folder")
    torch.testing.assert_close(trained.unet.conv_in.bias, model.unet.conv_in.bias)


def test_a_file_from_another_base_is_refused_with_both_names(sd1_base, tmp_path, sd2_bases):
    from engine.bench.trained import TrainedModelError, load_trained

    path = _single_file(load_trained(sd2_bases("sd2")), tmp_path / "sd2.safetensors", shift=0.0)
    with pytest.raises(TrainedModelError, match=r"sd2.safetensors does not fit the base model .*sd1 \(SD1\)"):
        load_trained(sd1_base, path)


# ------------------------------------------------------------------ run files, report, chart


def test_the_run_file_passes_sdft_check_and_validates_by_steps_only(tmp_path, dataset, sd1_base):
    from engine.bench.runs import Recipe, write_kohya_dataset, write_run_file
    from engine.config.dataset import load_dataset_file
    from engine.config.problems import ProblemList
    from engine.config.run_toml import load_run_file

    recipe = Recipe(steps=30, batch_size=4)
    config, _document, warnings = load_run_file(write_run_file(tmp_path, family_named("sd1"), sd1_base, dataset,
                                                               recipe))
    assert (config.train.max_train_steps, config.optimizer.learning_rate, config.model.clip_skip) == (30, 1e-3, 2)
    assert config.train.validate_every_n_epochs > 30 // (len(dataset.train) // 4)   # past the last epoch
    problems = ProblemList()
    blueprint = load_dataset_file(write_kohya_dataset(tmp_path / "kohya.toml", dataset, recipe), problems)
    assert not problems.has_errors
    assert [s.image_dir for d in blueprint.datasets for s in d.subsets] == [dataset.train_dir.resolve()]


def _report(families=("sd1",)) -> dict:
    adherent = {"accuracy": 0.75, "chance": 0.25, "confusion": [[2, 0], [1, 1]], "sample_distance": 2.5}
    scores = {"validation_loss": 0.3, "adherence_sdft": adherent, "adherence_diffusers": adherent,
              "score_seconds": 3.0}
    return {"date": "2026-12-07", "machine": "test machine", "seconds": 99.0,
            "settings": {"recipe": {"steps": 600, "batch_size": 8, "learning_rate": 1e-3, "seed": 0,
                                    "validate_every": 50},
                         "sampling": {"samples_per_concept": 2, "sampler": "euler", "steps": 20,
                                      "guidance_scale": 5.0}},
            "concepts": ["a red circle", "a blue square"], "images": {"train": 4, "held_out": 2, "side": 64},
            "families": [{"family": f, "label": family_named(f).label, "curve": [[50, 0.5], [100, 0.3]],
                          "train_seconds": 50.0, "untrained": {**scores, "validation_loss": 1.1},
                          "trained": scores, "findings": []} for f in families]}


def test_the_report_is_a_table_per_family_and_per_prompt(tmp_path):
    from engine.bench.learning_report import report_markdown, write_report

    text = report_markdown(_report(("sd1", "sd2-v")))
    assert "| SD1 (epsilon, CLIP skip 2) | 1.1000 -> **0.3000** | **75% (3/4)** | 75% (3/4) |" in text
    assert "| a blue square | 1/2 | 1/2 |" in text
    assert "chance is 1/2 = 50%" in text
    assert "Healthy: every family is within the limits" in text
    unhealthy = _report()
    unhealthy["families"][0]["findings"] = ["adherence through sdft's sampler is 20%, below 50% (chance 50%)"]
    assert "- SD1 (epsilon, CLIP skip 2): adherence through sdft's sampler is 20%" in report_markdown(unhealthy)
    md, js, png = write_report(tmp_path, _report())
    assert json.loads(js.read_text())["families"][0]["trained"]["validation_loss"] == 0.3
    assert md.read_text().startswith("# sdft learning benchmark")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_result_is_healthy_only_within_every_limit():
    from engine.bench.health import findings

    good = {"validation_loss": 0.3, "adherence_sdft": {"accuracy": 0.9, "chance": 0.125, "sample_distance": 2.5},
            "adherence_diffusers": {"accuracy": 0.8, "chance": 0.125, "sample_distance": 2.5}}
    assert findings(good, {"validation_loss": 1.1}) == []
    assert findings({**good, "validation_loss": 1.0}, {"validation_loss": 1.1}) == [
        "validation loss fell only to 91% of the untrained model's (at most 85%)"]
    assert findings({**good, "validation_loss": 1.0}) == []          # nothing to compare it with
    weak = {**good, "adherence_diffusers": {"accuracy": 0.25, "chance": 0.125, "sample_distance": 12.0}}
    assert findings(weak) == [
        "adherence through diffusers' pipeline is 25%, below 50% (chance 12.5%)",
        "samples through diffusers' pipeline lie 12.0x as far from the data as held-out images (at most 5): "
        "is the prediction type read right?"]


def test_round_ticks_cover_the_range():
    from engine.bench.plot import nice_ticks

    assert nice_ticks(0, 600) == [0, 200, 400, 600]
    assert nice_ticks(0.27, 0.81) == [0.2, 0.4, 0.6, 0.8, 1.0]          # the last tick is above the top
    assert nice_ticks(1.0, 1.0)[0] <= 1.0 <= nice_ticks(1.0, 1.0)[-1]


def test_the_chart_draws_each_series_in_its_colour():
    from engine.bench.plot import COLOURS, Series, draw_chart

    image = draw_chart([Series("a", ((0, 1.0), (100, 0.5))), Series("b", ((0, 0.8), (100, 0.2))), Series("c", ())],
                       title="t", x_label="step", y_label="loss")
    assert image.size == (1000, 520)
    colours = {colour for _count, colour in image.getcolors(1 << 16)}
    assert COLOURS[0] in colours and COLOURS[1] in colours


# ------------------------------------------------------------------ the command line


def test_score_without_a_bench_folder_says_what_to_run(tmp_path, capsys):
    from engine.cli import main

    assert main(["bench", "--score", str(tmp_path / "kohya.safetensors")]) == 2
    assert "needs --learning OUT_DIR" in capsys.readouterr().err
    assert main(["bench", "--learning", str(tmp_path), "--family", "sd1", "--score", str(tmp_path / "x")]) == 2
    assert "run `sdft bench --learning" in capsys.readouterr().err
