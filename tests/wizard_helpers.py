"""Generated datasets for the wizard tests: small PNGs with .caption / .txt sidecars."""

from __future__ import annotations

from pathlib import Path

SIZES = [(512, 512), (640, 384), (384, 640), (300, 200), (768, 512), (512, 768), (1024, 576), (200, 300)]


def make_dataset(root: Path, sizes=SIZES) -> Path:
    """A folder of PNGs: even images get a .caption, odd ones a .txt, the last one nothing."""
    from PIL import Image

    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        im = Image.new("RGB", (w, h), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
        for x in range(0, w, 16):  # a diagonal stripe so previews are not flat
            im.putpixel((x, min(h - 1, x * h // w)), (255, 255, 255))
        im.save(folder / f"img{i:02d}.png")
        if i == len(sizes) - 1:
            continue
        if i % 2 == 0:
            (folder / f"img{i:02d}.caption").write_text(f"a photo of thing {i}, red, blue\n", encoding="utf-8")
        else:
            (folder / f"img{i:02d}.txt").write_text(f"tag{i}, solo, outdoors\n", encoding="utf-8")
    return folder


WIZARD_GROUPS = ("scan", "tokens", "detect", "hardware", "review-check", "train-check")


async def settle(app, pilot, timeout: float = 60.0) -> None:
    """Wait until the wizard's own workers are done (DirectoryTree keeps a loader worker forever).

    The first ``pilot.pause`` lets the screen handle what was sent before (a changed Select starts
    its scan there). While the workers run, the loop only sleeps (the app goes on processing its
    messages): a ``pilot.pause`` per round would post a message to every widget on the screen
    each time; the last ``pilot.pause`` waits for the screen to take in what the workers left."""
    import asyncio

    from textual.worker import WorkerState

    await pilot.pause()   # the messages already sent (a Select changed, a key) start their workers first
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout   # a safety limit on a busy machine, not a timing
    while loop.time() < deadline:
        busy = [w for w in app.workers if w.group in WIZARD_GROUPS
                and w.state in (WorkerState.PENDING, WorkerState.RUNNING)]
        if not busy:
            break
        await asyncio.sleep(0.02)
    await pilot.pause()


def screen_text(app) -> str:
    """The visible screen as plain text (for debugging and text assertions)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)
