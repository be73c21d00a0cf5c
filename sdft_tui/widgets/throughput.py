"""Throughput pane: step and epoch progress, it/s and samples/s, elapsed time and ETA.

Before the first step it shows the preparation phase (loading, latent caching) instead; from the
first step on, the step events' figures (the step, elapsed time and ETA move every step).
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from engine.vocabulary import phase_label
from sdft_tui.run_figures import RunFigures, format_duration
from sdft_tui.widgets.vram_meter import bar

LABEL_WIDTH = 8


class Throughput(Widget):
    COMPONENT_CLASSES = {"throughput--bar", "throughput--label", "throughput--value"}
    DEFAULT_CSS = """
    Throughput { height: auto; text-wrap: nowrap; text-overflow: clip; }
    Throughput > .throughput--bar { color: $accent; }
    Throughput > .throughput--label { color: $text-muted; }
    Throughput > .throughput--value { color: $text; text-style: bold; }
    """

    def __init__(self, figures: RunFigures, **kwargs) -> None:
        super().__init__(**kwargs)
        self.figures = figures

    @property
    def compact(self) -> bool:
        """After the run: step, epoch and speed, elapsed (3 lines, so the memory pane shows at 80x24)."""
        return self.figures.finished is not None and self.figures.last is not None

    def get_content_height(self, container, viewport, width: int) -> int:
        return 3 if self.compact else 5

    def _row(self, text: Text, label: str, value: str, rest: str = "", newline: bool = True) -> None:
        text.append(f"{label:<{LABEL_WIDTH}}", style=self.get_component_rich_style("throughput--label"))
        text.append(value, style=self.get_component_rich_style("throughput--value"))
        if rest:
            text.append(rest, style=self.get_component_rich_style("throughput--label"))
        if newline:
            text.append("\n")

    def render(self) -> Text:
        f = self.figures
        width = self.size.width
        text = Text(no_wrap=True, overflow="crop")
        m = f.last
        total = f.total_steps
        step = f.step
        label = f"{step}/{total}" if total else str(step)
        frac = step / total if total else 0.0
        bar_w = width - LABEL_WIDTH - len(label) - 6
        text.append(f"{'step':<{LABEL_WIDTH}}", style=self.get_component_rich_style("throughput--label"))
        text.append(label + " ", style=self.get_component_rich_style("throughput--value"))
        if bar_w >= 3:   # the bar is decoration: the figures keep their room
            text.append(bar(frac, bar_w) + " ", style=self.get_component_rich_style("throughput--bar"))
        text.append(f"{int(frac * 100):>3d}%\n", style=self.get_component_rich_style("throughput--label"))
        epochs = f.started.total_epochs if f.started else 0
        epoch = f"{f.epoch}/{epochs}" if epochs else str(f.epoch)
        if m is not None and self.compact:
            self._row(text, "epoch", epoch, f" · {m.it_per_s:.2f} it/s")
            self._row(text, "elapsed", format_duration(f.elapsed_s), newline=False)
            return text
        if f.phase is not None and f.newest_step is None:
            return self._phase(text, width)
        # from the first step on: the step events' own figures (the speed from the last interval)
        self._row(text, "epoch", epoch if f.newest_step is not None else (f"0/{epochs}" if epochs else "-"))
        speed = f"{m.it_per_s:.2f} it/s" if m is not None else "-"
        per_sample = f" · {m.samples_per_s:.2f} samples/s" if m is not None else ""
        if LABEL_WIDTH + len(speed) + len(per_sample) > width:
            per_sample = ""   # at 80 columns: it/s times the batch, the first figure to go
        self._row(text, "speed", speed, per_sample)
        self._row(text, "elapsed", format_duration(f.elapsed_s))
        self._row(text, "ETA", format_duration(f.eta_s) if f.running else "-", newline=False)
        return text

    def _phase(self, text: Text, width: int) -> Text:
        """Before the first step: the preparation phase and its bar."""
        phase = self.figures.phase
        self._row(text, "phase", phase_label(phase.name))
        count = f" {phase.done}/{phase.total}"
        pbar_w = max(3, width - LABEL_WIDTH - len(count))
        frac = phase.done / phase.total if phase.total else 0.0
        text.append(" " * LABEL_WIDTH)
        text.append(bar(frac, pbar_w), style=self.get_component_rich_style("throughput--bar"))
        text.append(count, style=self.get_component_rich_style("throughput--label"))
        return text
