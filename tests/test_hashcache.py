"""Large files are hashed once and re-hashed only when they change."""

from __future__ import annotations

import hashlib
import json
import os

from engine import hashcache


def test_hash_is_remembered_and_refreshed_on_change(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights v1")
    assert hashcache.sha256_of(model) == hashlib.sha256(b"weights v1").hexdigest()
    stored = json.loads(hashcache.cache_file().read_text())
    assert stored["images"][str(model.resolve())]["sha256"] == hashlib.sha256(b"weights v1").hexdigest()

    expected_v2 = hashlib.sha256(b"weights v2, longer").hexdigest()
    calls = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashcache.hashlib, "sha256", lambda *data: calls.append(1) or real_sha256(*data))
    hashcache.sha256_of(model)
    assert calls == []                                  # unchanged file: read from the cache

    model.write_bytes(b"weights v2, longer")
    os.utime(model, ns=(1, 2))
    assert hashcache.sha256_of(model) == expected_v2
    assert calls == [1]                                 # changed file: hashed again


def test_two_indexes_on_one_file_keep_each_others_entries(tmp_path):
    file = tmp_path / "index.json"
    first, second = hashcache.HashIndex(file), hashcache.HashIndex(file)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    first.sha256(a)
    second.sha256(b)
    first.save()
    second.save()                                       # merges with what `first` wrote
    reread = hashcache.HashIndex(file)
    assert set(reread.entries) == {str(a.resolve()), str(b.resolve())}


def test_an_index_in_an_older_layout_is_hashed_again_not_trusted(tmp_path):
    file = tmp_path / "index.json"
    model = tmp_path / "m.bin"
    model.write_bytes(b"new bytes")
    stat = model.stat()
    file.write_text(json.dumps({str(model.resolve()): {"stamp": [stat.st_size, stat.st_mtime_ns], "sha256": "stale"}}))
    assert hashcache.HashIndex(file).sha256(model) == hashlib.sha256(b"new bytes").hexdigest()


def test_an_index_without_a_file_remembers_in_memory_and_saves_nothing(tmp_path):
    index = hashcache.HashIndex(None)
    image = tmp_path / "i.png"
    image.write_bytes(b"i")
    assert index.sha256(image) == hashlib.sha256(b"i").hexdigest()
    index.save()
    assert list(tmp_path.iterdir()) == [image]
