"""What ``sdft caption`` and ``sdft tag`` show: a Rich progress bar on a terminal (plain lines in a
pipe) and the closing summary, or the summary as JSON. The commands themselves are cli.py."""

from __future__ import annotations

import json

from engine.console import styled


def merge(total, part) -> None:
    """Add one folder's summary into the run's total."""
    total.done += part.done
    total.skipped += part.skipped
    total.failed += part.failed
    total.written += part.written
    total.texts.update(part.texts)
    total.seconds += part.seconds
    total.images_per_s = total.done / total.seconds if total.seconds > 0 else 0.0
    total.device = part.device if part.done or part.failed else total.device
    total.first_batch_s = total.first_batch_s if total.first_batch_s is not None else part.first_batch_s
    total.stopped = total.stopped or part.stopped
    total.warnings += [w for w in part.warnings if w not in total.warnings]
    total.backups += part.backups


class ProgressView:
    """Rich progress bar on a terminal; one line per folder and per tenth in a pipe."""

    def __init__(self, console, kind: str):
        self.console, self.kind = console, kind
        self.interactive = console.is_terminal
        self.progress = None
        self.task = None
        self.last_tenth = -1

    def __enter__(self):
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     console=self.console, transient=False)
            self.progress.start()
        return self

    def start(self, label: str, count: int) -> None:
        self.last_tenth = -1
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"{self.kind} {label}", total=max(count, 1), info="")
        else:
            self.console.print(f"{self.kind}: {label} ({count} images)")

    def update(self, p) -> None:
        if p.phase == "loading":
            self.log(f"loading the model for {p.total} image(s) ({p.skipped} already labelled, skipped)")
            if self.progress is not None and self.task is not None:
                self.progress.update(self.task, completed=p.skipped, info="loading model")
            return
        handled = p.done + p.failed
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=p.skipped + handled,
                                 info=f"{p.images_per_s:.2f} img/s" + (f", {p.failed} failed" if p.failed else ""))
        else:
            tenth = int(10 * handled / max(p.total, 1))
            if tenth != self.last_tenth:
                self.last_tenth = tenth
                self.console.print(f"  {handled}/{p.total} ({p.images_per_s:.2f} img/s)")

    def log(self, text: str) -> None:
        style = "yellow" if ("CPU" in text or text.startswith("skipped")) else None
        target = self.progress.console if self.progress is not None else self.console
        target.print(text, style=style, markup=False, highlight=False)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __exit__(self, *exc):
        self.stop()
        return False


def print_summary(console, kind: str, s, args) -> None:
    if args.json:
        out = s.to_dict()
        if kind == "tag":
            out["tag_frequency"] = s.tag_frequency()
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    rate = f"{s.images_per_s:.2f} images/s on {s.device}" if s.done else "no images labelled"
    console.print(styled((f"{kind}:", "bold"), f" {s.done} done, {s.skipped} skipped (already labelled), "
                         f"{len(s.failed)} failed; {rate}"))
    if kind == "tag" and s.done:
        console.print(f"tags per image: {s.tags_per_image:.1f}")
        freq = s.tag_frequency()
        top = list(freq.items())[: (len(freq) if args.frequency else 10)]
        if top:
            console.print(("tag frequency: " if args.frequency else "most frequent: ")
                          + ", ".join(f"{t} ({n})" for t, n in top))
    for folder in s.backups:
        console.print(styled(("kept", "bold"), f" the labels replaced in {folder} "
                             f"(its RESTORE.txt says how to put them back)"))
    for path, reason in s.failed:
        console.print(styled(("failed", "red"), f" {path}: {reason}"))
    if s.stopped:
        console.print(styled(("stopped", "yellow"), ": the images done so far are written; run again to continue"))
