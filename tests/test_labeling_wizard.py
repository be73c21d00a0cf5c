"""The wizard's captions screen runs the labelling engine in a worker (Pilot, tiny models)."""

from __future__ import annotations

import asyncio

from engine.hardware import HardwareInfo
from labeling_helpers import make_blip_folder, make_wd14_folder
from sdft_tui.app import SdftApp
from tests.wizard_helpers import make_dataset, settle

# 1girl .9 and kaga .99 pass 0.35 ... (see test_labeling_tags); with defaults: six tags
SCORES = [0.1, 0.7, 0.2, 0.05, 0.9, 0.5, 0.8, 0.3, 0.6, 0.36, 0.34, 0.99]
TAGS = "1girl, long_hair, ^_^, solo, hatsune_miku_(vocaloid), kaga_(kancolle)"


async def wait_labels(app, pilot, rounds: int = 1500) -> None:
    from textual.worker import WorkerState

    for _ in range(rounds):
        busy = [w for w in app.workers if w.group in ("labeling", "tokens")
                and w.state in (WorkerState.PENDING, WorkerState.RUNNING)]
        if not busy:
            break
        await pilot.pause(0.02)
    await pilot.pause()
    await pilot.pause()


def test_caption_missing_tag_all_undo_and_recaption(tmp_path, monkeypatch):
    folder = make_dataset(tmp_path)
    monkeypatch.setenv("SDFT_CAPTION_MODEL", str(make_blip_folder(tmp_path / "blip")))
    monkeypatch.setenv("SDFT_TAG_MODEL", str(make_wd14_folder(tmp_path / "wd14", SCORES)))

    async def walk():
        app = SdftApp(hardware=HardwareInfo(source="test"), start_dir=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            path = app.screen.query_one("#path")
            path.value = str(folder)
            path.focus()
            await pilot.press("enter")
            await settle(app, pilot)
            await pilot.press("ctrl+n")
            await settle(app, pilot)
            assert app.current_step() == "captions"
            screen = app.screen
            screen.query_one("#captions").focus()

            # f7: caption missing -> only the images without a .caption (odd ones and the last)
            await pilot.press("f7")
            await wait_labels(app, pilot)
            written = sorted(p.name for p in folder.glob("*.caption"))
            assert written == [f"img{i:02d}.caption" for i in range(8)]
            assert (folder / "img00.caption").read_text() == "a photo of thing 0, red, blue\n"
            assert all(r.caption for r in app.state.records)          # table data refreshed
            assert not screen.query("#label-progress")                # progress bar removed

            # one ctrl+u undoes the whole run
            await pilot.press("ctrl+u")
            await settle(app, pilot)
            assert sorted(p.name for p in folder.glob("*.caption")) == [f"img{i:02d}.caption" for i in (0, 2, 4, 6)]

            # f9: tag all (overwrites the .txt files, as asked)
            await pilot.press("f9")
            await wait_labels(app, pilot)
            assert all((folder / f"img{i:02d}.txt").read_text() == TAGS + "\n" for i in range(8))
            assert app.state.records[1].tags == TAGS

            # ctrl+r: a new caption for the selected image lands in the editor, unsaved
            screen.query_one("#captions").move_cursor(row=0)
            await pilot.pause()
            await pilot.press("ctrl+r")
            await wait_labels(app, pilot)
            editor = screen.query_one("#editor")
            assert editor.text != "a photo of thing 0, red, blue"
            assert (folder / "img00.caption").read_text() == "a photo of thing 0, red, blue\n"
            editor.focus()
            await pilot.press("ctrl+s")
            await settle(app, pilot)
            assert (folder / "img00.caption").read_text().strip() == editor.text.strip()

    asyncio.run(walk())
