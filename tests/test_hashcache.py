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
    assert stored[str(model.resolve())]["sha256"] == hashlib.sha256(b"weights v1").hexdigest()

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
