"""scanning odd files, metadata key forms and round trips, captions, pixel conversion."""

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_dataset, make_image, write_meta
from PIL import Image

from engine.data.buckets import BucketSettings
from engine.data.captions import (
    SidecarEncodingError,
    clean_caption,
    clean_tags,
    join_caption_and_tags,
    join_separator,
    read_sidecar,
    tag_frequency,
    write_caption,
)
from engine.data.health import check_images
from engine.data.images import load_pixels, open_rgb, to_rgb
from engine.data.metadata import (
    MetadataError,
    build_metadata,
    read_metadata,
    write_metadata_json,
)
from engine.data.scan import ScanError, find_images, read_image_info, scan_folder

# ---------------------------------------------------------------- odd files


@pytest.fixture()
def odd(tmp_path):
    d = tmp_path / "odd"
    make_image(d / "plain.png", (64, 48))
    make_image(d / "rotated.jpg", (80, 40), exif_orientation=6, fmt="JPEG")
    make_image(d / "cmyk.jpg", (32, 32), mode="CMYK", fmt="JPEG")
    pal = Image.new("P", (20, 10))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    Image.fromarray(np.full((8, 12), 65535, dtype=np.uint16)).save(d / "deep16.png")
    make_image(d / "tiny.png", (4, 4))
    make_image(d / "wide.png", (400, 10))
    make_image(d / "ünïcødé 画像.png", (30, 30))
    (d / "corrupt.png").write_bytes(b"not an image at all")
    (d / "empty.jpg").write_bytes(b"")
    good = (d / "plain.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / ".hidden.png").write_bytes(good)
    (d / "latent.npz").write_bytes(b"x")
    (d / "dup.png").write_bytes(good)
    (d / "sub").mkdir()
    make_image(d / "sub" / "deep.webp", (16, 16))
    return d


def test_find_images_filters_and_sorts(odd):
    names = [p.name for p in find_images(odd)]
    assert names == sorted(names)
    assert ".hidden.png" not in names and "latent.npz" not in names and "deep.webp" not in names
    assert "ünïcødé 画像.png" in names
    assert any(p.name == "deep.webp" for p in find_images(odd, recursive=True))


def test_missing_folder_is_a_scan_error(tmp_path):
    with pytest.raises(ScanError, match="image folder not found"):
        find_images(tmp_path / "nowhere")


def test_header_sizes_and_exif(odd):
    info = read_image_info(odd / "rotated.jpg")
    assert info.raw_size == (80, 40) and info.size == (40, 80) and info.rotated
    assert read_image_info(odd / "rotated.jpg", exif_transpose=False).size == (80, 40)
    assert read_image_info(odd / "cmyk.jpg").mode == "CMYK"
    assert read_image_info(odd / "corrupt.png").error
    assert "0 bytes" in read_image_info(odd / "empty.jpg").error


def test_pixels_converted(odd):
    rot = open_rgb(odd / "rotated.jpg")
    assert rot.size == (40, 80) and rot.mode == "RGB"
    pal = np.asarray(open_rgb(odd / "palette.png"))
    assert pal.shape == (10, 20, 3) and (pal == 255).all()           # transparent index -> white
    deep = np.asarray(open_rgb(odd / "deep16.png"))
    assert deep.shape == (8, 12, 3) and (deep == 255).all()          # 65535 -> 255
    assert open_rgb(odd / "cmyk.jpg").mode == "RGB"
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert (np.asarray(to_rgb(rgba)) == 255).all()
    la = Image.new("LA", (2, 2), (0, 255))
    assert (np.asarray(to_rgb(la)) == 0).all()
    with pytest.raises(OSError):
        open_rgb(odd / "truncated.png")


def test_dark_16_bit_image_stays_dark(tmp_path):
    """A 16-bit PNG whose values all sit below 256 is nearly black, not an 8-bit image."""
    arr = np.full((4, 6), 200, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "dark16.png")
    with Image.open(tmp_path / "dark16.png") as im:
        assert im.mode == "I;16"
    assert (np.asarray(open_rgb(tmp_path / "dark16.png")) == 0).all()     # 200 >> 8 == 0


def test_load_pixels_resize_crop_flip(tmp_path):
    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[:, :30] = 255                                               # left half white
    Image.fromarray(arr).save(tmp_path / "half.png")
    out = load_pixels(tmp_path / "half.png", (60, 40), (40, 40), (10, 0))
    assert out.shape == (40, 40, 3)
    assert out[0, 0, 0] == 255 and out[0, -1, 0] == 0
    flipped = load_pixels(tmp_path / "half.png", (60, 40), (40, 40), (10, 0), flipped=True)
    assert flipped[0, 0, 0] == 0 and flipped[0, -1, 0] == 255
    small = load_pixels(tmp_path / "half.png", (30, 20), (30, 20), (0, 0), interpolation="nearest")
    assert small.shape == (20, 30, 3)


def test_health_check_finds_everything(odd):
    paths = sorted(p for p in odd.iterdir() if p.is_file() and p.suffix != ".npz" and not p.name.startswith("."))
    captions = ["a caption"] * len(paths)
    captions[paths.index(odd / "plain.png")] = ""
    captions[paths.index(odd / "wide.png")] = ", ".join(f"word{i}" for i in range(80))
    report = check_images(paths, captions=captions, settings=BucketSettings((512, 512), True, False, 256, 1024, 64))
    kinds = {(Path(i.path).name, i.kind) for i in report.issues}
    assert ("corrupt.png", "unreadable") in kinds
    assert ("empty.jpg", "zero_size") in kinds
    assert ("truncated.png", "truncated") in kinds
    assert ("plain.png", "duplicate") in kinds            # same bytes as dup.png (sorted first)
    assert ("tiny.png", "too_small") in kinds and ("tiny.png", "heavy_upscale") in kinds
    assert ("cmyk.jpg", "odd_mode") in kinds and ("palette.png", "odd_mode") in kinds
    assert ("deep16.png", "odd_mode") in kinds
    assert ("rotated.jpg", "exif_rotated") in kinds
    assert ("plain.png", "no_caption") in kinds
    assert ("wide.png", "too_long") in kinds
    assert {i.kind for i in report.errors} == {"unreadable", "zero_size", "truncated"}
    assert report.lines()[0].startswith(f"{len(paths)} image(s) checked")


# ---------------------------------------------------------------- metadata


def test_every_key_form(tmp_path, monkeypatch):
    imgs = tmp_path / "imgs"
    make_image(imgs / "abs.png", (10, 10))
    make_image(imgs / "rel.png", (10, 10))
    make_image(imgs / "stem.jpg", (10, 10), fmt="JPEG")
    make_image(imgs / "sub" / "deep.png", (10, 10))
    make_image(tmp_path / "cwdonly.png", (10, 10))
    monkeypatch.chdir(tmp_path)
    meta = write_meta(tmp_path / "m.json", {
        str(imgs / "abs.png"): {"caption": "absolute"},
        "rel.png": {"caption": "relative", "image_size": [10, 10]},
        "stem": {"tags": "a, b"},
        "sub/deep": {"caption": "stem with folder", "train_resolution": [64, 64], "extra": 1},
        "cwdonly.png": {"caption": "found via cwd"},
    })
    mf = read_metadata(meta, imgs)
    by = {e.key: e for e in mf.entries}
    assert by[str(imgs / "abs.png")].path == imgs / "abs.png"
    assert by["rel.png"].path == imgs / "rel.png" and by["rel.png"].image_size == (10, 10)
    assert by["stem"].path == imgs / "stem.jpg" and by["stem"].caption is None and by["stem"].tags == "a, b"
    assert by["sub/deep"].train_resolution == (64, 64) and by["sub/deep"].extra == {"extra": 1}
    assert by["cwdonly.png"].path.resolve() == (tmp_path / "cwdonly.png").resolve()


def test_unresolved_keys_all_reported(tmp_path):
    make_image(tmp_path / "x.png", (8, 8))
    make_image(tmp_path / "x.webp", (8, 8))
    meta = write_meta(tmp_path / "m.json", {"x": {}, "missing1": {}, "missing2.png": {}})
    with pytest.raises(MetadataError) as err:
        read_metadata(meta, tmp_path)
    text = str(err.value)
    assert "missing1" in text and "missing2.png" in text
    assert "'x'" not in text        # a stem naming two images that share it is no problem (both train)


def test_repeated_field_inside_an_entry_is_not_round_tripped(tmp_path):
    """json's last-wins for a field repeated inside one entry; no internal marker leaks out."""
    make_image(tmp_path / "a.png", (8, 8))
    (tmp_path / "d.json").write_text('{"a.png": {"caption": "x", "caption": "y"}}', encoding="utf-8")
    mf = read_metadata(tmp_path / "d.json", tmp_path)
    assert mf.entries[0].caption == "y"
    assert mf.entries[0].extra == {}
    assert any("caption" in w and "last one wins" in w for w in mf.warnings)


def test_jsonl_and_duplicates(tmp_path):
    make_image(tmp_path / "a.png", (8, 8))
    (tmp_path / "m.jsonl").write_text(
        '{"image_path": "a.png", "caption": "first"}\n\n{"image_path": "a.png", "tags": "t"}\n', encoding="utf-8")
    mf = read_metadata(tmp_path / "m.jsonl", tmp_path)
    assert len(mf.entries) == 1 and mf.entries[0].caption == "" and mf.entries[0].tags == "t"
    assert any("duplicate" in w for w in mf.warnings)
    (tmp_path / "d.json").write_text('{"a.png": {"caption": "x"}, "a.png": {"caption": "y"}}')
    mf = read_metadata(tmp_path / "d.json", tmp_path)
    assert mf.entries[0].caption == "y" and mf.warnings


def test_build_write_read_round_trip(tmp_path):
    imgs = tmp_path / "imgs"
    make_dataset(imgs, [(64, 48), (48, 64)])
    make_image(imgs / "rot.jpg", (80, 40), exif_orientation=8, fmt="JPEG")
    (imgs / "rot.caption").write_bytes("\ufeff  bom caption \n".encode("utf-8"))
    for style in ("relative", "stem", "absolute"):
        meta = build_metadata(imgs, key_style=style)
        out = write_metadata_json(tmp_path / f"{style}.json", meta)
        text = out.read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        mf = read_metadata(out, imgs)
        by = {e.path.name: e for e in mf.entries}
        assert by["img000.png"].caption == "a photo number 0" and by["img000.png"].tags == "tag0, common, red"
        assert by["rot.jpg"].image_size == (40, 80) and by["rot.jpg"].caption == "bom caption"
    assert "img000" in build_metadata(imgs, key_style="stem")
    jl = write_metadata_json(tmp_path / "m.jsonl", build_metadata(imgs))
    assert len(read_metadata(jl, imgs).entries) == 3


# ---------------------------------------------------------------- captions


def test_sidecars_and_edit_policies(tmp_path):
    f = tmp_path / "a.caption"
    assert read_sidecar(f) is None
    assert write_caption(f, "first")
    assert not write_caption(f, "second")                       # skip is the default
    assert read_sidecar(f) == "first"
    assert write_caption(f, "more", policy="append") and read_sidecar(f) == "first, more"
    assert not write_caption(f, "more", policy="append")
    assert write_caption(f, "new", policy="overwrite") and read_sidecar(f) == "new"
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError):
        write_caption(f, "x", policy="replace")


def test_append_refuses_a_sidecar_that_is_not_utf8(tmp_path):
    """Reading replaces bad bytes; appending to that lossy copy would destroy the original."""
    f = tmp_path / "a.caption"
    original = "café au lait".encode("latin-1")
    f.write_bytes(original)
    assert read_sidecar(f) == "caf\ufffd au lait"
    with pytest.raises(SidecarEncodingError, match="not UTF-8"):
        write_caption(f, "more", policy="append")
    assert f.read_bytes() == original
    assert not write_caption(f, "more")                              # skip: untouched
    assert write_caption(f, "new", policy="overwrite") and read_sidecar(f) == "new"


def test_join_caption_and_tags():
    assert join_caption_and_tags("a cat", "tag1, tag2", sep=",") == "a cat,tag1, tag2"
    assert join_caption_and_tags("", "t", sep=",") == "t"
    assert join_caption_and_tags(None, None) == ""
    assert join_caption_and_tags("cap", "") == "cap"
    assert join_separator("comma_space") == ", " and join_separator("separator", ";") == ";"
    assert join_separator(" | ") == " | "
    assert join_caption_and_tags("l1\n\nl2", "a\nb", sep=",", wildcard=True) == "l1,a,b\n\nl2,a,b"
    assert join_caption_and_tags("", "a\nb", sep=",", wildcard=True) == "a,b"


def test_tag_frequency_counts_once_per_image():
    assert tag_frequency(["A, b, a", "b", None]) == {"b": 2, "a": 1}


def test_clean_tags():
    assert clean_tags("long_hair, ^_^, smile, rating:safe") == "long hair, ^_^, smile"
    assert clean_tags("1girl, smile, rating:safe, rating:questionable") == "1girl, smile"
    assert clean_tags("white shirt, shirt, smile") == "white shirt, smile"
    assert clean_tags("hair ornament, red hair ornament") == "red hair ornament"
    # several people: conflicting eye colours and hair colours removed, one hair length kept
    assert clean_tags("2girls, blue eyes, red eyes, long hair, blonde hair, black hair") == "2girls, long hair"
    # one person: nothing removed
    assert clean_tags("1girl, blue eyes, red eyes") == "1girl, blue eyes, red eyes"


def test_clean_caption():
    assert clean_caption("a young woman with anime anime anime style") == "a girl with anime style"
    assert clean_caption("a cartoon drawing of people") == "a drawing of girls"
    assert clean_caption("an anime girl girl") == "an girl"


def test_scan_folder_pairs_sidecars(tmp_path):
    make_dataset(tmp_path, [(32, 16)], tags=False)
    make_image(tmp_path / "bare.png", (8, 8))
    items = {i.path.name: i for i in scan_folder(tmp_path)}
    assert items["img000.png"].caption == "a photo number 0" and items["img000.png"].tags is None
    assert items["img000.png"].info.size == (32, 16)
    assert items["bare.png"].caption is None
