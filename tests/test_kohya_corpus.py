"""The kohya corpus (tests/data/kohya_corpus): inputs of every kind a kohya user brings, written for
this test in the shapes the tools write (kohya_ss GUI presets and saved configs, command lines of
fine_tune.py and train_db.py, flat and sectioned config TOMLs, folder and metadata dataset TOMLs),
each converted by `sdft from-kohya`, passing `sdft train --check` and training a step on the
tiny model. Inputs of kohya's other trainers are refused with the reason. `MODEL` in an input
stands for the tiny model's folder."""

from __future__ import annotations

import json
import shlex
import shutil
from collections import Counter
from pathlib import Path

import pytest
from data_helpers import make_image

from engine.kohya.convert import from_command, from_config_file, render
from engine.kohya.scripts import NotConvertible

CORPUS = Path(__file__).parent / "data" / "kohya_corpus"

# input file -> (kind, the script kohya would run, the dataset TOMLs it trains on)
CONVERTS = {
    "gui_finetune_preset_adafactor.json": ("GUI preset", "fine_tune.py", ()),
    "gui_finetune_preset_lion.json": ("GUI preset", "fine_tune.py", ()),
    "gui_finetune_saved.json": ("GUI saved config", "fine_tune.py", ()),
    "gui_dreambooth_saved.json": ("GUI saved config", "train_db.py", ()),
    "gui_dreambooth_dadapt.json": ("GUI saved config", "train_db.py", ()),
    "gui_dreambooth_toml.json": ("GUI saved config", "train_db.py", ("dataset_folder_plain.toml",)),
    "cmd_fine_tune.txt": ("command line", "fine_tune.py", ()),
    "cmd_train_db.txt": ("command line", "train_db.py", ()),
    "cmd_train_db_windows.txt": ("command line", "train_db.py", ("dataset_folder.toml",)),
    "config_flat.toml": ("config TOML", "fine_tune.py", ()),
    "config_sectioned.toml": ("config TOML", "fine_tune.py", ("dataset_metadata.toml",)),
    "cmd_sdxl_train.txt": ("command line", "sdxl_train.py", ("dataset_folder.toml",)),
}
REFUSED = {"cmd_train_network.txt": "LoRA", "gui_lora.json": "LoRA"}
DATASET_KINDS = {"dataset_folder.toml": "folder dataset TOML", "dataset_folder_plain.toml": "folder dataset TOML",
                 "dataset_metadata.toml": "metadata dataset TOML"}
SECRETS = ("hf_CorpusNotARealToken", "wb_CorpusNotARealKey")


def _images(folder: Path, count: int, caption: str | None = None, *, tags: bool = False, seed: int = 0) -> None:
    sizes = [(64, 64), (96, 64), (64, 96)]
    for i in range(count):
        image = make_image(folder / f"im{i}.png", sizes[i % 3], seed=seed + i)
        if caption is not None and i != 1:   # one image without a caption file
            image.with_suffix(".txt").write_text(f"{caption}, pose {i}\nan unused second line", encoding="utf-8")
        if tags:
            image.with_suffix(".caption").write_text(f"a photo, number {i}", encoding="utf-8")


def _data(root: Path) -> None:
    """The folders and metadata files the corpus names."""
    from engine.data.metadata import build_metadata, write_metadata_json

    _images(root / "db_img" / "10_sks dog", 3, "sks dog")
    _images(root / "db_img" / "2_sks cat", 2, "sks cat", seed=10)
    _images(root / "db_img" / "notes", 1, seed=20)
    _images(root / "db_reg" / "1_dog", 3, seed=30)
    _images(root / "ft_images", 4, "tag", tags=True, seed=40)
    _images(root / "ft_pictures", 3, "1girl, smile", seed=50)
    meta = build_metadata(root / "ft_images", caption_extension=".caption", tags_extension=".txt")
    for name in ("meta_cap.json", "meta_lat.json"):
        write_metadata_json(root / "ft_work" / name, meta)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_sd1) -> Path:
    from engine.families.sdxl.tiny import save_tiny_sdxl_model

    root = tmp_path_factory.mktemp("corpus")
    tiny_xl = save_tiny_sdxl_model(root / "tiny_xl")
    for source in CORPUS.iterdir():
        text = source.read_text(encoding="utf-8").replace("MODEL_XL", str(tiny_xl)).replace("MODEL", str(tiny_sd1))
        (root / source.name).write_text(text, encoding="utf-8")
    _data(root)
    return root


def _convert(root: Path, name: str):
    path = root / name
    if path.suffix == ".txt":
        tokens = shlex.split(path.read_text(encoding="utf-8"))
        return from_command(tokens), tokens
    return from_config_file(path), str(path)


def _one_step(text: str) -> str:
    """The converted file, trained for 1 step (what the file sets up is all built for it, and a
    completed run shows it trains): the test's only change."""
    import tomlkit

    doc = tomlkit.parse(text)
    train = doc.setdefault("train", tomlkit.table())
    train["max_train_steps"] = 1
    train.pop("max_train_epochs", None)
    return tomlkit.dumps(doc)


@pytest.mark.parametrize("name", sorted(CONVERTS))
def test_each_input_converts_passes_check_and_trains(corpus, monkeypatch, name):
    from engine.preflight.checks import check_run_file
    from engine.runner import run_training

    monkeypatch.chdir(corpus)
    kind, script, _datasets = CONVERTS[name]
    conversion, source = _convert(corpus, name)
    assert conversion.script == script
    written = render(conversion, source)
    assert not any(secret in written for secret in SECRETS)
    run = corpus / f"{Path(name).stem}.run.toml"
    run.write_text(written, encoding="utf-8")
    _config, problems = check_run_file(run)
    errors = [str(p) for p in problems if p.severity == "error"]
    assert errors == [], f"{kind} {name}: the converted file as written fails --check"
    run.write_text(_one_step(written), encoding="utf-8")
    result = run_training(run)
    assert result.status == "completed", f"{kind} {name}: {result.message}"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_trainers_are_refused_with_the_reason(corpus, monkeypatch, name):
    monkeypatch.chdir(corpus)
    with pytest.raises(NotConvertible, match=REFUSED[name]):
        _convert(corpus, name)


def test_the_corpus_covers_every_kind_and_the_counts_are_reported(corpus, monkeypatch):
    """Every input file is in a table above; the kinds the README names each have inputs."""
    monkeypatch.chdir(corpus)
    assert {p.name for p in CORPUS.iterdir()} == set(CONVERTS) | set(REFUSED) | set(DATASET_KINDS)
    kinds = Counter(kind for kind, _script, _datasets in CONVERTS.values())
    used = Counter(DATASET_KINDS[d] for _kind, _script, datasets in CONVERTS.values() for d in datasets)
    assert set(kinds) == {"GUI preset", "GUI saved config", "command line", "config TOML"}
    assert set(used) == set(DATASET_KINDS.values())
    for name in ("gui_dreambooth_saved.json", "cmd_train_db.txt"):
        conversion, _source = _convert(corpus, name)
        assert any(r.option == "huggingface_token" and "written nowhere" in r.refused for r in conversion.refused)
    shutil.rmtree(corpus / "out", ignore_errors=True)
    print("kohya corpus:", json.dumps({**kinds, **used, "refused": len(REFUSED)}))
