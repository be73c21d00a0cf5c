"""The wizard's captions screen runs the labelling engine in a worker (Pilot, tiny models)."""

from __future__ import annotations

import asyncio

from labeling_helpers import make_blip_folder, make_wd14_folder

from engine.hardware import HardwareInfo
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

            # f9: tag all (overwrites the .txt files, as asked: the dialog asks first)
            await pilot.press("f9")
            await pilot.pause()
            await pilot.click("#replace-all")
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


def test_caption_all_and_tag_all_ask_before_replacing_and_keep_what_they_replaced(tmp_path, monkeypatch):
    from engine.data.label_backups import BACKUP_DIR_NAME, restore_backup

    folder = make_dataset(tmp_path)
    hand = {i: (folder / f"img{i:02d}.caption").read_text() for i in (0, 2, 4, 6)}
    monkeypatch.setenv("SDFT_CAPTION_MODEL", str(make_blip_folder(tmp_path / "blip")))
    monkeypatch.setenv("SDFT_TAG_MODEL", str(make_wd14_folder(tmp_path / "wd14", SCORES)))

    async def walk():
        app = SdftApp(hardware=HardwareInfo(source="test"), start_dir=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            app.state.load_source(folder)
            await pilot.press("f3")
            await settle(app, pilot)
            screen = app.screen
            screen.query_one("#captions").focus()

            # f8 over 4 hand-written captions: asked; cancel writes nothing
            await pilot.press("f8")
            await pilot.pause()
            dialog = app.screen
            assert type(dialog).__name__ == "ReplaceLabelsScreen"
            assert "Replace 4 existing captions?" in str(dialog.query_one("Label").render())
            await pilot.press("escape")
            await wait_labels(app, pilot)
            assert app.screen is screen
            assert not any(w.group == "labeling" for w in app.workers)
            assert {i: (folder / f"img{i:02d}.caption").read_text() for i in hand} == hand

            # "only images without": the hand-written ones stay, the others get one
            await pilot.press("f8")
            await pilot.pause()
            await pilot.click("#replace-missing")
            await wait_labels(app, pilot)
            assert {i: (folder / f"img{i:02d}.caption").read_text() for i in hand} == hand
            assert len(list(folder.glob("*.caption"))) == 8
            assert not (folder / BACKUP_DIR_NAME).exists()

            # "replace": every caption is new, the replaced ones are kept on disk, and it says where
            await pilot.press("f8")
            await pilot.pause()
            await pilot.click("#replace-all")
            await wait_labels(app, pilot)
            assert all((folder / f"img{i:02d}.caption").read_text() != hand[i] for i in hand)
            messages = " ".join(n.message for n in app._notifications)
            assert f"kept in {folder / BACKUP_DIR_NAME}" in messages and "RESTORE.txt" in messages

            # f9 over existing tag files asks too
            await pilot.press("f9")
            await pilot.pause()
            assert type(app.screen).__name__ == "ReplaceLabelsScreen"
            assert "existing tag lists" in str(app.screen.query_one("Label").render())
            await pilot.press("escape")
            await pilot.pause()

    asyncio.run(walk())
    # the wizard is closed: the hand-written captions come back from the backup
    [backup] = (folder / BACKUP_DIR_NAME).iterdir()
    restore_backup(backup)
    assert {i: (folder / f"img{i:02d}.caption").read_text() for i in hand} == hand
