"""``sdft prepare DIR`` for kohya's DreamBooth layout (``DIR/10_sks dog/``, ...): each ``N_name``
sub-folder checked as training reads it, and a dataset TOML written that says the same
(engine/data/kohya_folders.py), so the folders train as they are, with no metadata file."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.console import styled
from engine.vocabulary import ExitCode


def prepare_layout(folder: Path, args) -> int:
    from engine.config.dataset import parse_dataset_tables
    from engine.config.problems import ProblemList
    from engine.data.cli import _console
    from engine.data.kohya_folders import skipped_folders

    console = _console(stderr=args.json)
    out = Path(args.out) if args.out else folder / "dataset.toml"
    text = layout_toml(folder, Path(args.reg_dir) if args.reg_dir else None, args.caption_extension, out)
    import tomllib

    problems = ProblemList(file=str(out))
    blueprint = parse_dataset_tables(tomllib.loads(text), problems=problems, base_dir=out.parent)
    if problems.has_errors:   # a reg folder that is not there, ...
        from engine.console import print_problems

        print_problems(problems.items)
        return ExitCode.USAGE
    for name in skipped_folders(folder):
        console.print(f"note: {name} is not a subset: kohya reads only sub-folders named N_name (N repeats)")
    paths, captions = _summarise(blueprint, args.caption_extension, console)
    if not args.no_write:
        status = _write(out, text, console)
        if status:
            return status
    from engine.data.buckets import BucketSettings
    from engine.data.cli import _health_report, _print_report

    settings = BucketSettings(args.resolution, True, False, 256, 1024, 64)
    report = _health_report(paths, captions, settings, args, sidecar_extensions=(args.caption_extension,))
    return _print_report(report, args, _console())


def layout_toml(folder: Path, reg_dir: Path | None, caption_extension: str, out: Path) -> str:
    """The dataset TOML of the layout, its folders relative to ``out``'s folder where inside it."""
    import tomlkit

    from engine.data.kohya_folders import layout_dataset

    tables = layout_dataset(folder, reg_dir, caption_extension=caption_extension)
    for subset in tables["datasets"][0]["subsets"]:
        subset["image_dir"] = _relative(Path(subset["image_dir"]), out.parent)
    head = (f"# kohya's DreamBooth folders of {folder}, written by `sdft prepare`: each N_name folder is a subset\n"
            "# (N repeats, its caption files, else \"name\" as the caption). Use it with: dataset_config = "
            f'"{out.name}"\n\n')
    return head + tomlkit.dumps(tables)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _summarise(blueprint, caption_extension: str, console) -> tuple[list[Path], list[str]]:
    """One line per subset (images, repeats, captions); every image and the text it trains with."""
    from engine.data.subset_source import folder_caption, read_subset

    paths, captions, with_file = [], [], 0
    for sub in blueprint.subsets:
        meta = read_subset(sub, caption_extension=caption_extension)
        extension = sub.caption_extension or caption_extension
        found = sum(1 for e in meta.entries if folder_caption(e.path, extension) is not None)
        with_file += found
        role = " (regularization)" if sub.is_reg else ""
        rest = len(meta.entries) - found
        fallback = f', {rest} captioned "{sub.class_tokens}"' if sub.class_tokens and rest else (
            f", {rest} without a caption" if rest else "")
        console.print(f"{sub.image_dir.name}{role}: {len(meta.entries)} images × {sub.num_repeats} repeats, "
                      f"{found} with a {caption_extension} file{fallback}")
        paths += [e.path for e in meta.entries]
        captions += [e.caption for e in meta.entries]
    if paths and not with_file and caption_extension != ".txt" and any(
            p.with_suffix(".txt").exists() for p in paths):
        console.print(styled(("note", "yellow"), f": no {caption_extension} file, but .txt files are there: "
                             "pass --caption-extension .txt if they hold the captions"))
    return paths, captions


def _write(out: Path, text: str, console) -> int:
    """Write the dataset TOML; one that exists and says something else is left alone."""
    from engine import atomic

    if out.exists():
        if out.read_text(encoding="utf-8") == text:
            console.print(f"{out} is up to date")
            return ExitCode.OK
        print(f"sdft prepare: {out} exists and differs; remove it or give --out another file", file=sys.stderr)
        return ExitCode.USAGE
    atomic.write_text(out, text)
    console.print(styled(("wrote ", ""), (str(out), "bold"), ": in a run TOML, dataset_config = "
                         f'"{out}" trains these folders as they are'))
    return ExitCode.OK
