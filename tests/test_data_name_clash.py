"""Images sharing one name (foo.jpg beside foo.png, one foo.txt for both): kept everywhere.

One rule (engine.data.scan.NameClash): every such image trains, all read the same sidecars,
their metadata keys keep the extension, and a kohya foo.npz is not imported for them.
"""

import json

import numpy as np
import pytest
from data_helpers import make_dataset, make_image, run_config, write_meta

from engine.data.cli import buckets_command, prepare_command
from engine.data.health import check_images
from engine.data.metadata import build_metadata, read_metadata, write_metadata_json
from engine.data.scan import find_images, name_clashes

TOML = """
[general]
resolution = 64
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32
batch_size = 1

[[datasets]]
  [[datasets.subsets]]
  metadata_file = "meta.json"
  image_dir = "imgs"
"""


@pytest.fixture()
def clash(tmp_path):
    """imgs/: img000.png, img001.png (own sidecars) and foo.jpg + foo.png sharing foo.txt."""
    imgs = tmp_path / "imgs"
    make_dataset(imgs, [(64, 64), (96, 64)])
    make_image(imgs / "foo.jpg", (64, 64), seed=7, fmt="JPEG")
    make_image(imgs / "foo.png", (64, 96), seed=8)
    (imgs / "foo.txt").write_text("shared tags", encoding="utf-8")
    return tmp_path


def test_scan_lists_both_and_names_the_clash(clash):
    imgs = clash / "imgs"
    names = [p.name for p in find_images(imgs)]
    assert "foo.jpg" in names and "foo.png" in names
    (found,) = name_clashes(find_images(imgs))
    assert found.images == (imgs / "foo.jpg", imgs / "foo.png")
    assert "foo.png" in found.finding(imgs / "foo.jpg") and "foo.txt" in found.finding(imgs / "foo.jpg")
    assert name_clashes([imgs / "a" / "foo.png", imgs / "foo.jpg"]) == []   # other folder: no clash


def test_health_reports_a_named_finding(clash):
    imgs = clash / "imgs"
    report = check_images(find_images(imgs))
    clashes = report.by_kind()["name_clash"]
    assert sorted(i.path for i in clashes) == [str(imgs / "foo.jpg"), str(imgs / "foo.png")]
    assert all(i.severity == "warning" for i in clashes) and not report.errors
    assert any("name_clash (warning): 2" == line for line in report.lines())


@pytest.mark.parametrize("style", ["relative", "stem", "absolute"])
def test_metadata_keys_stay_unique_and_share_the_sidecar(clash, style):
    imgs = clash / "imgs"
    meta = build_metadata(imgs, key_style=style)
    assert len(meta) == 4
    by_name = {k.replace("\\", "/").rsplit("/", 1)[-1]: v for k, v in meta.items()}
    assert {"foo.jpg", "foo.png"} <= set(by_name)
    assert by_name["foo.jpg"]["tags"] == by_name["foo.png"]["tags"] == "shared tags"
    assert by_name["foo.png"]["image_size"] == [64, 96]
    if style == "stem":
        assert "img000" in meta                          # images with their own name keep stem keys
    write_metadata_json(clash / "meta.json", meta)
    back = read_metadata(clash / "meta.json", imgs)
    assert sorted(e.path.name for e in back.entries) == ["foo.jpg", "foo.png", "img000.png", "img001.png"]
    assert not back.warnings


def test_kohya_stem_key_naming_two_images_trains_both(clash):
    """A kohya metadata file keyed by stem: "foo" names foo.jpg and foo.png; neither is lost."""
    imgs = clash / "imgs"
    write_meta(clash / "meta.json", {"img000": {"caption": "zero"}, "foo": {"caption": "shared", "image_size": [64, 64]}})
    back = read_metadata(clash / "meta.json", imgs)
    foo = {e.key: e for e in back.entries if e.path.stem == "foo"}
    assert set(foo) == {"foo.jpg", "foo.png"}
    assert {e.caption for e in foo.values()} == {"shared"}
    assert all(e.image_size is None for e in foo.values())   # the recorded size fits only one of them
    (warning,) = back.warnings
    assert "'foo'" in warning and "foo.jpg" in warning and "foo.png" in warning
    # an own key for one of them wins over the shared stem entry
    write_meta(clash / "meta.json", {"foo": {"caption": "shared"}, "foo.png": {"caption": "own"}})
    got = {e.path.name: e.caption for e in read_metadata(clash / "meta.json", imgs).entries}
    assert got == {"foo.jpg": "shared", "foo.png": "own"}


def test_prepare_goes_on_and_says_so(clash, capsys):
    imgs = clash / "imgs"
    out = clash / "meta.json"
    assert prepare_command([str(imgs), "--out", str(out), "--key-style", "stem"]) == 0
    meta = json.loads(out.read_text())
    assert {"foo.jpg", "foo.png", "img000", "img001"} == set(meta)
    text = capsys.readouterr().out
    assert "foo.jpg and foo.png share the name 'foo'" in text
    assert prepare_command([str(imgs), "--check", "--no-write", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)                   # stdout stays pure JSON; the note goes to stderr
    assert {i["kind"] for i in report["issues"]} >= {"name_clash"}
    assert "share the name" in captured.err


def test_buckets_goes_on_and_says_so(clash, capsys):
    imgs = clash / "imgs"
    assert buckets_command([str(imgs), "--resolution", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {i["path"] for i in out["images"]} == {"img000.png", "img001.png", "foo.jpg", "foo.png"}
    assert out["name_clashes"] == [["foo.jpg", "foo.png"]]
    assert buckets_command([str(imgs), "--resolution", "64"]) == 0
    assert "share the name 'foo'" in capsys.readouterr().out


def test_training_data_keeps_both_and_skips_their_kohya_npz(clash):
    import torch
    from diffusers import AutoencoderKL

    from engine.data.pipeline import TrainingData
    from engine.models.tiny import TinySpec, tiny_vae_config

    imgs = clash / "imgs"
    write_metadata_json(clash / "meta.json", build_metadata(imgs, key_style="stem"))
    lat = np.zeros((4, 8, 8), dtype=np.float32)
    np.savez(imgs / "foo.npz", latents=lat)             # kohya wrote one foo.npz: for which image?
    np.savez(imgs / "img000.npz", latents=lat)          # an unambiguous one is still imported
    lines = []
    data = TrainingData.from_config(run_config(clash, TOML), log=lines.append)
    assert sorted(it.key for it in data.items) == ["foo.jpg", "foo.png", "img000", "img001"]
    assert len({it.key for it in data.items}) == len(data.items)
    assert any("foo.jpg and foo.png share the name 'foo'" in line for line in lines)
    torch.manual_seed(0)
    vae = AutoencoderKL(**tiny_vae_config(TinySpec())).eval()
    data.prepare_latents(vae, "cpu")
    assert data.cache_result.imported == 1 and data.cache_result.encoded == 3
    foo = [it for it in data.items if it.path.stem == "foo"]
    assert all(not data._latents[it.index].kohya for it in foo)


def test_wizard_health_lists_the_clash(clash):
    """The wizard's dataset step shows the engine's findings: the clash is among them."""
    from sdft_tui.session import WizardSession

    state = WizardSession()
    state.load_source(clash / "imgs")
    assert state.scan_error is None and len(state.records) == 4
    state.run_health_check()
    assert {p.name for p, _ in state.health()["name_clash"]} == {"foo.jpg", "foo.png"}
