"""Throughput pane: step and epoch progress, it/s and samples/s, elapsed time and ETA.

Before the first step it shows the preparation phase (loading, latent caching) instead.
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
        bar_w = max(3, width - LABEL_WIDTH - len(label) - 6)
        frac = step / total if total else 0.0
        text.append(f"{'step':<{LABEL_WIDTH}}", style=self.get_component_rich_style("throughput--label"))
        text.append(label + " ", style=self.get_component_rich_style("throughput--value"))
        text.append(bar(frac, bar_w), style=self.get_component_rich_style("throughput--bar"))
        text.append(f" {int(frac * 100):>3d}%\n", style=self.get_component_rich_style("throughput--label"))
        epochs = f.started.total_epochs if f.started else 0
        if m is not None and self.compact:
            self._row(text, "epoch", f"{m.epoch}/{epochs}" if epochs else str(m.epoch),
                      f" · {m.it_per_s:.2f} it/s")
            self._row(text, "elapsed", format_duration(f.elapsed_s), newline=False)
            return text
        if m is not None:
            self._row(text, "epoch", f"{m.epoch}/{epochs}" if epochs else str(m.epoch))
            self._row(text, "speed", f"{m.it_per_s:.2f} it/s")
            self._row(text, "", f"{m.samples_per_s:.2f} samples/s")
            self._row(text, "ETA", format_duration(m.eta_s) if f.running else "-",
                      f" · elapsed {format_duration(f.elapsed_s)}", newline=False)
            return text
        phase = f.phase
        if phase is not None:
            name = phase_label(phase.name)
            self._row(text, "phase", name)
            pbar_w = max(3, width - LABEL_WIDTH - 14)
            frac = phase.done / phase.total if phase.total else 0.0
            text.append(" " * LABEL_WIDTH)
            text.append(bar(frac, pbar_w), style=self.get_component_rich_style("throughput--bar"))
            text.append(f" {phase.done}/{phase.total}", style=self.get_component_rich_style("throughput--label"))
            return text
        self._row(text, "epoch", f"0/{epochs}" if epochs else "-")
        self._row(text, "speed", "-")
        self._row(text, "", "")
        self._row(text, "ETA", "-", newline=False)
        return text
