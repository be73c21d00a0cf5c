"""The wizard's choices run where it runs: presets, defaults and suggestions ask nothing this machine
cannot do (no CUDA: no fp16, no 8-bit optimizers, no xformers; no bitsandbytes: no AdamW8bit)."""

from __future__ import annotations

import asyncio

import pytest

from engine import hardware
from engine.hardware import Capabilities, GpuInfo, HardwareInfo
from engine.plan import PRESETS
from sdft_tui.app import SdftApp
from sdft_tui.session import WizardSession
from tests.wizard_helpers import make_dataset, screen_text, settle

CPU_ONLY = HardwareInfo(source="test", packages=frozenset({"bitsandbytes", "xformers"}))
GPU_NO_BNB = HardwareInfo(gpus=[GpuInfo(0, "NVIDIA GeForce RTX 3060", 12 * 2**30)], source="test",
                          packages=frozenset())
CANNOT_RUN = {"AdamW8bit", "Lion8bit", "fp16", "xformers"}


def _cannot_run(values: dict, caps: Capabilities) -> dict:
    return {k: v for k, v in values.items() if caps.why_not(k, v)}


def _on_options_step(tmp_path, hardware, act) -> dict:
    """Open the wizard on a dataset with ``hardware``, go to the Options step, run ``act(app, screen)``
    there (a coroutine function) and return what it recorded."""
    folder = make_dataset(tmp_path)
    seen: dict = {}

    async def go():
        app = SdftApp(hardware=hardware, start_dir=tmp_path)
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            app.state.load_source(folder)
            await pilot.press("f5")
            await settle(app, pilot)
            await act(app, pilot, seen)

    asyncio.run(go())
    return seen


def test_new_wizard_defaults_run_on_a_machine_without_cuda_or_bitsandbytes():
    state = WizardSession()
    state.hardware = HardwareInfo(source="test", packages=frozenset())
    assert state.get("optimizer.type") not in CANNOT_RUN
    assert state.get("memory.mixed_precision") not in CANNOT_RUN
    assert state.cannot_run_here() == []


@pytest.mark.parametrize("hw", [CPU_ONLY, GPU_NO_BNB], ids=["no-cuda", "gpu-without-bitsandbytes"])
def test_every_preset_in_the_wizard_picks_only_what_runs(tmp_path, hw):
    async def every_preset(app, pilot, seen):
        screen = app.screen
        for size in sorted(PRESETS):
            screen.apply_preset(size)
            await settle(app, pilot)
            caps = app.state.capabilities()
            assert _cannot_run(app.state.values, caps) == {}, size
            assert app.state.get("optimizer.type") != "AdamW8bit"
            if not caps.cuda:
                assert app.state.get("memory.mixed_precision") != "fp16"
            # the fields on screen show what the state holds
            assert screen.query_one("#o-optimizer-type").value == app.state.get("optimizer.type")
            # whatever the list offers, applying it keeps the file runnable here
            for suggestion in screen._suggestions.values():
                assert _cannot_run(suggestion.config_changes, caps) == {}, suggestion.text
                assert not set(suggestion.config_changes.values()) & CANNOT_RUN, suggestion.text
            seen[size] = True

    assert len(_on_options_step(tmp_path, hw, every_preset)) == len(PRESETS)


def test_the_preset_says_what_it_replaced_and_suggestions_skip_what_cannot_run(tmp_path, monkeypatch):
    """The engine's capability function is the one place the wizard asks."""
    folder = make_dataset(tmp_path)
    asked = []

    def no_cuda_no_packages(hw=None):
        asked.append(hw)
        return Capabilities(cuda=False, packages=frozenset())

    monkeypatch.setattr(hardware, "capabilities", no_cuda_no_packages)

    async def go():
        app = SdftApp(hardware=HardwareInfo(source="test"), start_dir=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            app.state.load_source(folder)
            await pilot.press("f5")
            await settle(app, pilot)
            screen = app.screen
            screen.apply_preset(12)           # fp16 + AdamW8bit as written
            await settle(app, pilot)
            notes = [n.message for n in app._notifications]
            assert any("AdamW8bit needs the package bitsandbytes" in m and "Adafactor instead" in m for m in notes)
            assert any("fp16 needs a CUDA GPU" in m for m in notes)
            assert app.state.get("optimizer.type") == "Adafactor"
            assert app.state.get("memory.mixed_precision") == "bf16"
            # over budget: the list offers memory savers, none of them fp16 / 8-bit / xformers
            app.state.set("optimizer.type", "AdamW")
            app.state.set("memory.mixed_precision", "no")
            app.state.set("memory.gradient_checkpointing", False)
            app.state.set("memory.attention", "math")
            screen.refresh_view()
            await pilot.pause()
            texts = [s.text for s in screen._suggestions.values()]
            assert texts and screen.has_class("overbudget")
            for s in screen._suggestions.values():
                assert not set(s.config_changes.values()) & CANNOT_RUN, s.text
            assert any("use bf16 mixed precision" in t or "Adafactor" in t for t in texts), texts
            # a value typed by hand that cannot run here is named on the screen with its fix
            app.state.set("optimizer.type", "AdamW8bit")
            screen.refresh_view()
            await pilot.pause()
            assert "AdamW8bit needs the package bitsandbytes (pip install bitsandbytes)" in screen_text(app)
            assert asked

    asyncio.run(go())


def test_with_cuda_and_bitsandbytes_the_presets_stay_as_written(tmp_path):
    """The filter only removes what cannot run: a full GPU box gets the 12 GB preset unchanged."""
    state = WizardSession()
    state.hardware = HardwareInfo(gpus=[GpuInfo(0, "GPU", 12 * 2**30)], packages=frozenset({"bitsandbytes"}))
    assert state.apply_preset(12) == []
    assert state.get("optimizer.type") == "AdamW8bit" and state.get("memory.mixed_precision") == "fp16"


T4 = HardwareInfo(gpus=[GpuInfo(0, "Tesla T4", 15 * 2**30, (7, 5))], source="test", packages=frozenset({"bitsandbytes"}))
RTX3060 = HardwareInfo(gpus=[GpuInfo(0, "NVIDIA GeForce RTX 3060", 12 * 2**30, (8, 6))], source="test",
                       packages=frozenset({"bitsandbytes"}))


def test_presets_pick_bf16_only_on_a_gpu_that_has_it():
    for hw, has_bf16 in ((T4, False), (RTX3060, True)):
        state = WizardSession()
        state.hardware = hw
        for size in sorted(PRESETS):
            notes = state.apply_preset(size)
            assert state.cannot_run_here() == [], (hw.best_gpu.name, size)
            uses_bf16 = state.get("memory.mixed_precision") == "bf16" or state.get("memory.full_bf16")
            assert uses_bf16 == (has_bf16 and PRESETS[size]["memory.mixed_precision"] == "bf16"), size
            if not has_bf16 and PRESETS[size]["memory.mixed_precision"] == "bf16":
                assert any("compute capability 8.0" in note for note in notes)
        state.apply_preset(8)
        assert state.get("memory.fused_backward_pass") is True
        assert state.get("memory.mixed_precision") == ("bf16" if has_bf16 else "no")


def test_a_bf16_choice_on_an_older_gpu_says_what_it_needs():
    state = WizardSession()
    state.hardware = T4
    state.set("memory.mixed_precision", "bf16")
    assert any("compute capability 8.0" in reason for reason in state.cannot_run_here())


FOUR_GPUS = HardwareInfo(gpus=[GpuInfo(i, "NVIDIA A100-SXM4-80GB", 80 * 2**30, (8, 0)) for i in range(4)],
                         source="test", packages=frozenset({"bitsandbytes"}))


def test_with_several_gpus_the_options_step_plans_per_gpu_and_the_command_takes_them(tmp_path):
    from sdft_tui.screens.review import train_command

    async def choose_four(app, pilot, seen):
        screen = app.screen
        seen["shown"] = screen.query_one("#gpus-row").display
        screen.query_one("#gpus").value = 4
        await settle(app, pilot)
        seen["vram"], seen["gpus"] = str(screen.query_one("#vram").render()), app.state.gpus

    seen = _on_options_step(tmp_path, FOUR_GPUS, choose_four)
    assert seen["shown"] and seen["gpus"] == 4 and "per GPU x4" in seen["vram"]
    run = tmp_path / "run.toml"
    assert train_command(run, 4) == f"sdft train {run} --gpus 4"
    assert train_command(run, 1) == f"sdft train {run}"


def test_one_gpu_shows_no_gpu_choice(tmp_path):
    async def look(app, pilot, seen):
        seen["shown"] = app.screen.query_one("#gpus-row").display

    assert _on_options_step(tmp_path, GPU_NO_BNB, look)["shown"] is False
