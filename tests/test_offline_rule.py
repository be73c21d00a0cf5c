"""One offline rule (engine/models/hub.py) for base models, --check and the labellers: either of
huggingface_hub's two variables, with its true values, read when asked."""

from __future__ import annotations

import pytest

from engine.labeling.options import LabelError
from engine.labeling.sources import resolve_model
from engine.models.errors import ModelLoadError
from engine.models.hub import is_offline
from engine.preflight.model import look_at_model

HUB_ID = "someone/some-model"


@pytest.fixture
def online(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("YES", True), ("on", True),
                                            ("0", False), ("false", False), ("", False)])
def test_either_variable_with_huggingface_hubs_true_values(online, name, value, offline):
    online.setenv(name, value)
    assert is_offline() is offline


def test_read_at_each_call_not_at_import(online):
    assert not is_offline()
    online.setenv("TRANSFORMERS_OFFLINE", "1")
    assert is_offline()


def test_check_loader_and_labellers_agree_on_transformers_offline(online):
    online.setenv("TRANSFORMERS_OFFLINE", "1")   # the variable the older copies did not read
    probe = look_at_model(HUB_ID)
    assert probe.error and "offline" in probe.error and "hf download someone/some-model" in probe.error

    from engine.models.load import download_hub

    with pytest.raises(ModelLoadError) as loading:
        download_hub(HUB_ID)
    assert str(loading.value) == probe.error, "--check says exactly what loading says"

    with pytest.raises(LabelError, match="offline.*hf download someone/some-model"):
        resolve_model(HUB_ID, required=["config.json"], what="BLIP")
