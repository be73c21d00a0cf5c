"""The wizard with an SDXL base model, at 80x24: the Options step names the detected family, plans
a full-size SDXL U-Net, offers SDXL's presets (24, 48, 80 GB) and applies its own in place of SD's
once it sees the model, and says the token counts hold for both text encoders."""

from __future__ import annotations

import asyncio

import pytest

from engine.hardware import GpuInfo, HardwareInfo
from engine.plan import presets_for
from sdft_tui.app import SdftApp
from sdft_tui.screens.options import preset_choices
from tests.wizard_helpers import make_dataset, screen_text, settle

GPU_24 = HardwareInfo(gpus=[GpuInfo(0, "NVIDIA GeForce RTX 4090", int(23.6 * 2**30), (8, 9))], source="test",
                      packages=frozenset({"bitsandbytes"}))


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    from engine.families.sdxl.tiny import save_tiny_sdxl_model

    return save_tiny_sdxl_model(tmp_path_factory.mktemp("xl") / "tiny_xl")


async def _until(app, pilot, done, seconds: float = 60.0) -> None:
    """Let the app run until ``done()`` (a worker's answer), then settle; fail after ``seconds``."""
    for _ in range(int(seconds / 0.1)):
        if done():
            await settle(app, pilot)
            return
        await pilot.pause(0.1)
    raise AssertionError("the wizard did not get there")


def test_preset_choices_follow_the_family():
    assert [size for _words, size in preset_choices("sd1")] == [8, 12, 16, 24, 48]
    assert preset_choices("sdxl") == [("24 GB card", 24), ("48 GB card", 48), ("80+ GB card", 80)]


def test_the_options_step_shows_sdxl_and_applies_its_preset(tmp_path, tiny_xl):
    folder = make_dataset(tmp_path)
    seen: dict = {}

    async def go():
        app = SdftApp(hardware=GPU_24, start_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.state.load_source(folder)
            app.state.count_tokens()
            await pilot.press("f5")
            await settle(app, pilot)
            screen = app.screen
            app._hardware_ready(GPU_24)     # the probe's answer starts from its card's preset
            await settle(app, pilot)
            seen["before"] = (app.state.family, app.state.preset_applied, app.state.get("optimizer.type"))
            field = screen.query_one("#o-model-pretrained_model_name_or_path")
            field.value = str(tiny_xl)          # typed into the model field: detected in a worker
            await _until(app, pilot, lambda: app.state.preset_family == "sdxl")
            seen["family"] = app.state.family
            seen["values"] = dict(app.state.values)
            seen["choices"] = [size for _words, size in screen.query_one("#preset")._options if size != -1
                               and isinstance(size, int)]
            seen["text"] = screen_text(app)
            seen["info"] = str(screen.query_one("#model-info").render())
            seen["vram"] = str(screen.query_one("#vram").render())
            seen["commands"] = [c.title for c in app.get_system_commands(screen) if c.title.startswith("Preset")]

    asyncio.run(go())
    # SD's 24 GB preset when the GPU is found (no model yet), SDXL's once the model is seen
    assert seen["before"] == ("sd1", 24, "AdamW8bit")
    assert seen["family"] == "sdxl"
    values, sdxl = seen["values"], presets_for("sdxl")[24]
    assert values["optimizer.type"] == "Adafactor" and values["memory.full_bf16"] is True
    assert values["memory.fused_backward_pass"] is True
    assert values["dataset.max_bucket_reso"] == sdxl["general.max_bucket_reso"] == 2048
    assert seen["choices"] == [24, 48, 80]
    assert seen["commands"] == ["Preset: 24 GB card", "Preset: 48 GB card", "Preset: 80 GB card"]
    assert "Model: SDXL" in seen["info"] and "a small test model" in seen["info"]
    assert "for both text encoders (CLIP ViT-L and OpenCLIP bigG count alike)" in seen["info"]
    assert "full-size SDXL" in seen["vram"]
    assert all(len(line.rstrip()) <= 80 for line in seen["text"].splitlines())


def test_an_sd_model_keeps_sds_presets_and_one_count(tmp_path, tiny_sd1):
    folder = make_dataset(tmp_path)
    seen: dict = {}

    async def go():
        app = SdftApp(hardware=GPU_24, start_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.state.load_source(folder)
            app.state.count_tokens()
            await pilot.press("f5")
            await settle(app, pilot)
            app._hardware_ready(GPU_24)
            await settle(app, pilot)
            app.screen.query_one("#o-model-pretrained_model_name_or_path").value = str(tiny_sd1)
            await _until(app, pilot, lambda: app.state.model_guess.family == "sd1")
            seen["family"], seen["optimizer"] = app.state.family, app.state.get("optimizer.type")
            seen["info"] = str(app.screen.query_one("#model-info").render())

    asyncio.run(go())
    assert seen["family"] == "sd1" and seen["optimizer"] == "AdamW8bit"   # SD's 24 GB preset stays
    assert "Captions: longest caption" in seen["info"] and "both text encoders" not in seen["info"]
