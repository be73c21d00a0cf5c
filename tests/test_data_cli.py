"""`sdft buckets`, `sdft prepare`, `sdft cache prune` (in process and one real subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

from data_helpers import make_dataset, make_image

from engine.data.cli import buckets_command, prepare_command
from engine.train.cache_cli import cache_command

ROOT = Path(__file__).parents[1]


def test_buckets_json(tmp_path, capsys):
    make_dataset(tmp_path, [(1000, 750), (512, 512), (600, 1000)], captions=False, tags=False)
    make_image(tmp_path / "sub" / "x.png", (100, 100))
    assert buckets_command([str(tmp_path), "--resolution", "512", "--batch-size", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    images = {i["path"]: i for i in out["images"]}
    assert images["img000.png"] == {"path": "img000.png", "size": [1000, 750], "bucket": [576, 448],
                                    "resized": [597, 448]}
    assert images["img002.png"]["bucket"] == [384, 640]
    assert "sub/x.png" not in images
    assert [256, 1024] in out["bucket_list"] and out["total_batches"] == 3
    assert buckets_command([str(tmp_path), "--recursive", "--no-upscale", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {i["path"]: i["bucket"] for i in out["images"]}["sub/x.png"] == [64, 64]


def test_buckets_histogram_and_usage(tmp_path, capsys):
    make_dataset(tmp_path, [(64, 64), (64, 64)], captions=False, tags=False)
    assert buckets_command([str(tmp_path), "--resolution", "64,64", "--min-bucket-reso", "32",
                            "--max-bucket-reso", "128", "--bucket-reso-steps", "32"]) == 0
    text = capsys.readouterr().out
    assert "64x64" in text and "mean aspect error" in text
    assert buckets_command([str(tmp_path), "--bucket-reso-steps", "12"]) == 2
    assert buckets_command([str(tmp_path / "missing")]) == 2


def test_buckets_at_80_columns_keeps_every_figure_and_narrows_the_bar(tmp_path, capsys, monkeypatch):
    make_dataset(tmp_path, [(1000, 750), (512, 512), (512, 512), (600, 1000), (1500, 300)], captions=False,
                 tags=False)
    widths = {}
    for columns in (80, 140):
        monkeypatch.setenv("COLUMNS", str(columns))
        assert buckets_command([str(tmp_path), "--resolution", "512"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert max(len(line) for line in lines if "│" in line) <= columns
        for header in ("bucket", "aspect", "images", "batches", "partial", "upscaled", "ar err"):
            assert any(header in line for line in lines), (columns, header)
        for bucket in ("576x448", "512x512", "384x640", "1024x256"):   # whole, never "512…"
            assert any(f"│ {bucket} " in line for line in lines), (columns, bucket)
        assert "…" not in "".join(lines)
        widths[columns] = max(line.count("█") for line in lines)
    assert widths[140] == 24 and 0 <= widths[80] < 24   # the bar gives way, not the figures


def test_prepare_folder_writes_metadata_and_checks(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    make_dataset(imgs, [(512, 512), (640, 512)])
    (imgs / "broken.png").write_bytes(b"nope")
    out = tmp_path / "meta.json"
    rc = prepare_command([str(imgs), "--check", "--out", str(out), "--key-style", "stem", "--clean"])
    assert rc == 1                                         # broken.png is an error
    meta = json.loads(out.read_text())
    assert set(meta) == {"img000", "img001"}
    assert meta["img000"] == {"caption": "a photo number 0", "tags": "tag0, common, red", "image_size": [512, 512]}
    text = capsys.readouterr().out
    assert "unreadable" in text and "broken.png" in text
    # hand edits of an existing file survive a rebuild
    meta["img000"]["note"] = "kept"
    out.write_text(json.dumps(meta))
    (imgs / "broken.png").unlink()
    assert prepare_command([str(imgs), "--out", str(out), "--key-style", "stem"]) == 0
    assert json.loads(out.read_text())["img000"]["note"] == "kept"


def test_prepare_checks_by_default_and_no_check_skips_it(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    make_dataset(imgs, [(512, 512), (640, 512)])
    (imgs / "broken.png").write_bytes(b"nope")
    assert prepare_command([str(imgs)]) == 1   # as README says: the health check runs, broken.png is an error
    assert "broken.png" in capsys.readouterr().out
    assert prepare_command([str(imgs), "--no-check"]) == 0
    assert "unreadable" not in capsys.readouterr().out
    assert {"img000.png", "img001.png"} <= set(json.loads((imgs / "metadata.json").read_text()))


def _run_toml(tmp_path: Path) -> Path:
    imgs = tmp_path / "imgs"
    make_dataset(imgs, [(64, 64), (96, 64)])
    assert prepare_command([str(imgs), "--out", str(tmp_path / "meta.json")]) == 0
    run = tmp_path / "run.toml"
    run.write_text("""config_version = 1
[model]
pretrained_model_name_or_path = "x"
[train]
output_dir = "out"
output_name = "mine"
[[datasets]]
resolution = 64
[[datasets.subsets]]
metadata_file = "meta.json"
image_dir = "imgs"
""")
    return run


def test_prepare_run_toml_check(tmp_path, capsys):
    run = _run_toml(tmp_path)
    capsys.readouterr()
    assert prepare_command([str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["checked"] == 2
    bad = tmp_path / "bad.toml"
    bad.write_text(run.read_text().replace("resolution = 64", "resolution = 64\nbatch_sise = 2"))
    assert prepare_command([str(bad)]) == 2


def test_cache_prune(tmp_path, capsys):
    run = _run_toml(tmp_path)
    cache = tmp_path / "out" / ".latent-cache"
    keep, stale = "a" * 64, "b" * 64
    for key in (keep, stale):
        (cache / key[:2]).mkdir(parents=True, exist_ok=True)
        (cache / key[:2] / f"{key}.safetensors").write_bytes(b"x" * 10)
    (cache / "runs").mkdir()
    (cache / "runs" / "mine.json").write_text(json.dumps({"keys": [keep]}))
    assert cache_command(["prune", str(run), "--dry-run"]) == 0
    assert "would delete 1" in capsys.readouterr().out
    assert cache_command(["prune", str(run)]) == 0
    assert (cache / "aa" / f"{keep}.safetensors").exists()
    assert not (cache / "bb" / f"{stale}.safetensors").exists()


def test_sdft_buckets_subprocess(tmp_path):
    make_dataset(tmp_path, [(64, 64)], captions=False, tags=False)
    r = subprocess.run([sys.executable, "-m", "engine.cli", "buckets", str(tmp_path), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"][0]["bucket"] == [512, 512]


def test_buckets_prints_bracketed_paths_exactly(tmp_path, capsys):
    folder = tmp_path / "my [set1] images"
    make_dataset(folder, [(64, 64)], captions=False, tags=False)
    (folder / "[broken].png").write_bytes(b"not an image")
    assert buckets_command([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "unreadable [broken].png" in out, out


def test_prepare_clean_cleans_a_metadata_json_that_has_no_sidecars(tmp_path, capsys):
    """kohya's clean_captions_and_tags.py IN OUT: here `sdft prepare META.json --clean [--out]`."""
    meta = tmp_path / "meta.json"
    original = {"a.png": {"caption": "a photo of  1girl ,  smile", "tags": "1girl, long_hair,  1girl,"},
                "b.png": {"caption": "a tree"}, "c.png": {}}
    meta.write_text(json.dumps(original), encoding="utf-8")
    out = tmp_path / "clean.json"
    assert prepare_command([str(meta), "--clean", "--out", str(out)]) == 0
    cleaned = json.loads(out.read_text(encoding="utf-8"))
    from engine.data.captions import clean_caption, clean_tags

    assert cleaned["a.png"] == {"caption": clean_caption(original["a.png"]["caption"]),
                                "tags": clean_tags(original["a.png"]["tags"])}
    assert cleaned["a.png"] != original["a.png"] and cleaned["c.png"] == {}
    assert json.loads(meta.read_text(encoding="utf-8")) == original          # --out leaves the input alone
    text = capsys.readouterr().out
    assert "1 of 3 entries changed" in text and "1 with neither caption nor tags" in text

    # In place: the original is kept in a backup folder beside it, so nothing is lost.
    assert prepare_command([str(meta), "--clean"]) == 0
    assert json.loads(meta.read_text(encoding="utf-8")) == cleaned
    kept = list((tmp_path / "sdft-label-backups").glob("*/meta.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text(encoding="utf-8")) == original
    assert "the original is kept in" in capsys.readouterr().out


def test_prepare_clean_refuses_a_broken_metadata_file_by_name(tmp_path, capsys):
    meta = tmp_path / "meta.jsonl"
    meta.write_text('{"image_path": "a.png", "caption": "x"}\nnot json\n', encoding="utf-8")
    assert prepare_command([str(meta), "--clean"]) == 2
    err = capsys.readouterr().err
    assert "meta.jsonl" in err and "line 2" in err
