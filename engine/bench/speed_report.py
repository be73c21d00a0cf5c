"""How `sdft bench --matrix` and `--gpu-report` show a matrix: a console table, a markdown table
and a JSON copy. Torch-free: it reads the report dict engine.bench.speed_matrix returns."""

from __future__ import annotations

import json
from pathlib import Path

GIB = 2**30


def fmt_bytes(value) -> str:
    if value is None:
        return "n/a"
    if value >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / 2**20:.0f} MiB"


def _num(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _percent(value) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}%"


def _mfu(cell: dict) -> str:
    return "n/a" if cell.get("mfu") is None else f"{cell['mfu'] * 100:.1f}%"


def _cell_notes(cell: dict) -> list[str]:
    """Why a figure is missing, or what to keep in mind about it."""
    if cell["status"] != "ran":
        return [f"{cell['status']}: {cell['reason']}"]
    notes = []
    if cell.get("attention_note"):
        notes.append(cell["attention_note"])
    if cell.get("skipped_optimizer_steps"):
        notes.append(f"{cell['skipped_optimizer_steps']} of {cell['timed_steps']} timed steps skipped by the fp16 "
                     "gradient scaler")
    if cell.get("prediction_error") is None and cell.get("prediction_note"):
        notes.append("planner: " + cell["prediction_note"])
    if cell.get("mfu") is None and cell.get("mfu_note"):
        notes.append("MFU: " + cell["mfu_note"])
    return notes


def shared_notes(report: dict) -> list[str]:
    """Notes every cell that ran has: said once under the table, not on every row."""
    ran = [set(_cell_notes(c)) for c in report["cells"] if c["status"] == "ran"]
    return sorted(set.intersection(*ran)) if len(ran) > 1 else []


def _note(cell: dict, shared: list[str]) -> str:
    return "; ".join(n for n in _cell_notes(cell) if n not in shared)


def row_figures(cell: dict) -> list[str]:
    """steps/s, samples/s, peak, peak reserved, predicted, error, MFU (blank when not run)."""
    if cell["status"] != "ran":
        return [""] * 7
    return [_num(cell["steps_per_s"], ".3f"), _num(cell["samples_per_s"], ".2f"), fmt_bytes(cell["peak_memory_bytes"]),
            fmt_bytes(cell.get("peak_reserved_bytes")), fmt_bytes(cell.get("predicted_bytes")),
            _percent(cell.get("prediction_error")), _mfu(cell)]


FIGURE_HEADERS = ["steps/s", "samples/s", "peak memory", "peak reserved", "planner predicts", "planner error", "MFU"]


def print_table(report: dict, console=None) -> None:
    """The cells that ran in one table (a figure no cell has is left out: the notes say why), then
    one line for each cell that did not, with the reason."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ran = [(n, c) for n, c in enumerate(report["cells"], 1) if c["status"] == "ran"]
    shown = [i for i, _h in enumerate(FIGURE_HEADERS) if any(row_figures(c)[i] != "n/a" for _n, c in ran)]
    shared = shared_notes(report)
    notes = {n: _note(c, shared) for n, c in ran}
    table = Table(title=f"sdft bench --matrix: {report['run_file']} on {report['device']}")
    for header in ("#", "cell", *(FIGURE_HEADERS[i] for i in shown)):
        table.add_column(header, justify="left" if header == "cell" else "right")
    if any(notes.values()):
        table.add_column("notes")
    for number, cell in ran:
        figures = row_figures(cell)
        table.add_row(str(number), cell["label"], *(figures[i] for i in shown),
                      *([notes[number]] if any(notes.values()) else []))
    if ran:
        console.print(table)
    for number, cell in enumerate(report["cells"], 1):
        if cell["status"] != "ran":
            console.print(f"{number}. {cell['label']}: {cell['status']}: {cell['reason']}", highlight=False)
    console.print(f"{report['warmup']} warm-up + {report['steps']} timed steps per cell.", highlight=False)
    console.print(footnote(report), highlight=False)


def footnote(report: dict, bullet: str = "") -> str:
    memory = {c.get("memory_kind") for c in report["cells"] if c["status"] == "ran"}
    lines = [*(f"all cells: {n}" for n in shared_notes(report)),
             f"torch {report['torch']}, {report['torch_threads']} thread(s); load average "
             f"{_num(report.get('load_average_start'), '.2f')} at the start, "
             f"{_num(report.get('load_average_end'), '.2f')} at the end; {report.get('seconds', 0):.0f} s in all."]
    if "process RSS" in memory:
        lines.append("peak memory is the process's peak resident memory while training (a CPU run: it includes "
                     "the model kept for the next cells, and what the allocator kept of earlier cells); the planner "
                     "predicts GPU memory and is compared with CUDA runs only.")
    if "cuda" in memory:
        lines.append("peak memory/reserved: torch.cuda.max_memory_allocated/reserved while training; planner error "
                     "= (prediction less its CUDA-context allowance) / peak reserved - 1.")
    return "\n".join(bullet + line for line in lines)


def markdown_table(report: dict, timed: bool = True) -> str:
    """The cells that ran (``timed``) or the others, one column per key any cell changes ('-': as
    in the run file), then the figures (or why there are none)."""
    from engine.bench.speed_cells import short_name

    cells = [(n, c) for n, c in enumerate(report["cells"], 1) if (c["status"] == "ran") == timed]
    if not cells:
        return ""
    keys: list[str] = []
    for _n, cell in cells:
        keys.extend(k for k in cell["changes"] if k not in keys)
    figures = FIGURE_HEADERS if timed else []
    headers = ["#", *(short_name(k) for k in keys), *figures, "notes" if timed else "why not timed"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    shared = shared_notes(report)
    for number, cell in cells:
        values = [_show(cell["changes"][k]) if k in cell["changes"] else "-" for k in keys]
        row = [str(number), *values, *(row_figures(cell) if timed else []), _note(cell, shared).replace("|", "/")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def write_json(report: dict, path: str | Path) -> Path:
    from engine import atomic

    path = Path(path)
    atomic.write_text(path, json.dumps(report, indent=2, default=str) + "\n")
    return path
