"""``sdft samples RUN_DIR``: one prompt's preview images across a run's sampling points in one
grid, each labelled with its step (docs/run-folder.md). It reads the files a run wrote; nothing
is sampled again, so no model is loaded and torch is never imported."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.commandline import run_command


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "samples", help="one prompt's samples across a run, in one grid image",
        description="Put one prompt's preview images from every sampling point of a run into one "
                    "grid, labelled with their steps (from the run's events.jsonl, or samples/).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (<output_dir>/<output_name>)")
    parser.add_argument("--prompt", type=int, default=1, metavar="N",
                        help="the prompt's number in the prompts file, from 1 (default: 1)")
    parser.add_argument("-o", "--output", metavar="OUT.png",
                        help="where to write the grid (default: RUN_DIR/samples/promptNN_across_steps.png)")
    parser.add_argument("--columns", type=int, metavar="C", help="images per row (default: about square)")
    parser.set_defaults(run=run_samples)


def samples_command(argv: list[str] | None = None) -> int:
    return run_command(register, "samples", argv)


def run_samples(args: argparse.Namespace) -> int:
    from engine.console import make_console
    from engine.train.sample_grid import Cell, make_grid, prompt_samples, save_grid
    from engine.units import counted

    console, errors = make_console(), make_console(stderr=True)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        errors.print(f"sdft samples: {run_dir} is not a folder (give a run folder: <output_dir>/<output_name>)")
        return 2
    if args.prompt < 1 or (args.columns is not None and args.columns < 1):
        errors.print("sdft samples: --prompt and --columns count from 1")
        return 2
    found = prompt_samples(run_dir, args.prompt - 1)
    for path in found.missing:
        errors.print(f"skipped (no longer there): {path}")
    if not found.steps:
        have = ", ".join(str(i + 1) for i in found.prompts_seen) or "none"
        errors.print(f"sdft samples: {run_dir} has no images of prompt {args.prompt} (prompts with images: {have})")
        return 1
    title = f"prompt {args.prompt}" + (f": {found.prompt}" if found.prompt else "")
    grid = make_grid([Cell(path, f"step {step}") for step, path in found.steps], title=title, columns=args.columns)
    out = Path(args.output) if args.output else run_dir / "samples" / f"prompt{args.prompt:02d}_across_steps.png"
    save_grid(grid, out)
    console.print(f"{counted(len(found.steps), 'sampling point')} of prompt {args.prompt}: {out}")
    return 0
