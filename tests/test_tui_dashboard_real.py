"""A real tiny training run on the CPU through the dashboard's worker thread."""

from __future__ import annotations

import asyncio

import pytest
from dashboard_helpers import screen_text

from sdft_tui.dashboard import DashboardApp
from sdft_tui.engine_handle import EngineHandle
from sdft_tui.screens.run import RunScreen


@pytest.mark.slow
def test_real_tiny_run_through_the_tui_worker(tmp_path, demo_folder):
    toml = demo_folder(tmp_path / "demo", steps=3)
    handle = EngineHandle()
    app = DashboardApp(lambda: RunScreen(toml, handle=handle))   # the real trainer, imported lazily
    out = {}

    async def main():
        async with app.run_test(size=(100, 32)) as pilot:
            screen = app.dashboard
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 240
            while not (handle.done.is_set() and screen.figures.finished is not None):
                assert loop.time() < deadline, "the tiny run did not finish"
                await pilot.pause(0.1)
            await pilot.pause()
            screen.repaint(force=True)
            await pilot.pause()
            out["figures"] = screen.figures
            out["text"] = screen_text(app)
            await pilot.press("q")
            await pilot.pause()

    asyncio.run(main())
    figures = out["figures"]
    assert handle.error is None, handle.error_traceback
    assert app.return_code == 0 and handle.result.status == "completed"
    assert figures.status == "completed" and figures.step == 3 and figures.loss
    assert "Training completed at step 3" in out["text"]
    model_path = handle.result.model_path
    assert model_path and figures.finished.model_path == model_path

    from engine.models.load import load_model

    loaded = load_model(model_path)
    assert loaded.unet is not None and loaded.text_encoder is not None
