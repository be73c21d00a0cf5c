"""``sdft buckets`` and ``sdft prepare``: dataset tools for the terminal (``sdft cache`` is
engine/train/cache_cli.py).

:func:`register` adds the two commands to the one ``sdft`` tree (see engine.commandline);
``buckets_command(argv)`` and the others parse and run one of them from Python. Each returns
an exit code (0 ok, 1 problems found, 2 bad usage or configuration). Output uses Rich;
``--json`` prints one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.commandline import run_command
from engine.console import styled
from engine.vocabulary import ExitCode


def _resolution(text: str) -> tuple[int, int]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 512 or 768,512, got {text!r}") from None
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"expected 512 or 768,512, got {text!r}")


def _console(stderr: bool = False):
    from engine.console import make_console

    return make_console(stderr=stderr)   # markup off: paths and captions print exactly


def register(commands) -> None:
    """Add ``buckets`` and ``prepare`` to the ``sdft`` tree."""
    _add_buckets(commands)
    _add_prepare(commands)


def buckets_command(argv: list[str]) -> int:
    return run_command(register, "buckets", argv)


def prepare_command(argv: list[str]) -> int:
    return run_command(register, "prepare", argv)



# ---------------------------------------------------------------- sdft buckets


def _add_buckets(commands) -> None:
    p = commands.add_parser("buckets", help="bucket histogram of an image folder",
                            description="Show how the images of a folder fall into aspect-ratio buckets "
                                        "(kohya's 64-px bucketing), without decoding any image.")
    p.add_argument("dir", help="image folder")
    p.add_argument("--resolution", type=_resolution, default=(512, 512), help="512 or W,H (default 512)")
    p.add_argument("--min-bucket-reso", type=int, default=256)
    p.add_argument("--max-bucket-reso", type=int, default=1024)
    p.add_argument("--bucket-reso-steps", type=int, default=64)
    p.add_argument("--no-upscale", action="store_true", help="bucket_no_upscale: never enlarge images")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (× accumulation × GPUs) for the "
                   "batches/partial columns")
    p.add_argument("--recursive", action="store_true", help="include sub-folders")
    p.add_argument("--no-exif", action="store_true", help="ignore EXIF orientation (kohya parity)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_buckets)


def _buckets(args) -> int:
    from engine.config.dataset import round_bucket_limits
    from engine.data.buckets import BucketError, BucketSettings, assign_sizes, bucket_report
    from engine.data.scan import ScanError, find_images, name_clashes, read_sizes

    d = args.bucket_reso_steps
    if d <= 0 or d % 8 or args.batch_size < 1:
        print("sdft buckets: --bucket-reso-steps must be a positive multiple of 8 and --batch-size ≥ 1",
              file=sys.stderr)
        return ExitCode.USAGE
    min_b, max_b = round_bucket_limits(args.min_bucket_reso, args.max_bucket_reso, d)
    settings = BucketSettings(args.resolution, True, args.no_upscale, min_b, max_b, d)
    try:
        paths = find_images(args.dir, recursive=args.recursive)
        bucket_list = settings.bucket_list()
    except (ScanError, BucketError) as exc:
        print(f"sdft buckets: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    infos = read_sizes(paths, exif_transpose=not args.no_exif)
    readable = [i for i in infos if i.size is not None]
    assignments = assign_sizes([i.size for i in readable], settings)
    report = bucket_report(assignments, args.batch_size)
    root = Path(args.dir)
    clashes = name_clashes(paths)
    if args.json:
        out = {
            "settings": {"resolution": list(settings.resolution), "min_bucket_reso": min_b, "max_bucket_reso": max_b,
                         "bucket_reso_steps": d, "no_upscale": args.no_upscale, "batch_size": args.batch_size},
            "bucket_list": [list(b) for b in bucket_list],
            **report.to_dict(),
            "images": [
                {"path": _rel(i.path, root), "size": list(i.size),
                 "bucket": list(a.bucket) if a.bucket else None,
                 "resized": list(a.resized) if a.resized else None,
                 **({"error": a.error} if a.error else {})}
                for i, a in zip(readable, assignments, strict=True)
            ],
            "unreadable": [{"path": _rel(i.path, root), "error": i.error} for i in infos if i.size is None],
            "name_clashes": [[_rel(p, root) for p in c.images] for c in clashes],
        }
        for entry in out["rejected"]:
            entry["path"] = _rel(readable[entry["index"]].path, root)
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return ExitCode.OK
    _print_histogram(report, readable, infos, settings, root)
    _print_clashes(_console(), clashes)
    return ExitCode.OK


def _print_clashes(console, clashes) -> None:
    """Images sharing one name are kept (see engine.data.scan.NameClash): say so, once each."""
    for clash in clashes:
        console.print("note: " + clash.note(), markup=False)


def _print_not_read(console, not_read: list[tuple[Path, str]], folder: Path) -> None:
    """Images and sidecars prepare did not read (links out of the folder, FIFOs, huge files)."""
    if not_read:
        console.print(styled(("not read", "yellow"), f": {len(dict(not_read))} file(s) in {folder}:"))
        for path, why in sorted(dict(not_read).items()):
            console.print(f"  {_rel(path, folder)}: {why}")


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _print_histogram(report, readable, infos, settings, root) -> None:
    from rich.table import Table

    console = _console()

    def histogram(bar_width: int) -> Table:
        table = Table(title=f"{len(readable)} images in {len(report.rows)} buckets "
                            f"(resolution {settings.resolution[0]}x{settings.resolution[1]}"
                            f"{', no upscale' if settings.no_upscale else ''})")
        for col, justify in (("bucket", "left"), ("aspect", "right"), ("images", "right"), ("batches", "right"),
                             ("partial", "right"), ("upscaled", "right"), ("ar err", "right")):
            table.add_column(col, justify=justify, no_wrap=True)   # figures are never cut
        if bar_width:
            table.add_column("", no_wrap=True, width=bar_width)
        peak = max((r.images for r in report.rows), default=1)
        for r in report.rows:
            bar = ["█" * max(1, round(bar_width * r.images / peak))] if bar_width else []
            table.add_row(f"{r.bucket[0]}x{r.bucket[1]}", f"{r.bucket[0] / r.bucket[1]:.2f}", str(r.images),
                          str(r.batches), str(r.partial) if r.partial else "-", str(len(r.upscaled)) or "-",
                          f"{r.mean_ar_error:.3f}", *bar)
        return table

    # The bar is decoration: it takes what the figures leave of the terminal's width, up to
    # 24 characters, and is left out below 6 (an 80-column terminal over SSH keeps every figure).
    spare = console.width - console.measure(histogram(0)).maximum - 3
    console.print(histogram(min(24, spare) if spare >= 6 else 0))
    console.print(f"mean aspect error {report.mean_ar_error:.4f}; {report.total_batches} batches per epoch at "
                  f"batch size {report.batch_size}; {report.partial_batches} bucket(s) end in a partial batch")
    for index, why in report.rejected:
        console.print(styled(("rejected", "yellow"), f" {_rel(readable[index].path, root)}: {why}"))
    for info in infos:
        if info.size is None:
            console.print(styled(("unreadable", "red"), f" {_rel(info.path, root)}: {info.error}"))


# ---------------------------------------------------------------- sdft prepare


def _add_prepare(commands) -> None:
    p = commands.add_parser("prepare", help="health check; write kohya metadata JSON from sidecars",
                            description="Build kohya metadata JSON from a folder of images + .caption/.txt "
                                        "sidecars, and check a dataset's health.")
    p.add_argument("target", help="image folder, kohya's DreamBooth folder of N_name sub-folders, a run TOML to "
                   "check, or a metadata JSON to clean (with --clean)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="run the health check (default; --no-check only writes the metadata of an image folder; "
                        "always on for a run TOML and a folder of N_name sub-folders)")
    p.add_argument("--out", help="metadata file to write (default: DIR/metadata.json); for N_name sub-folders the "
                   "dataset TOML (default: DIR/dataset.toml)")
    p.add_argument("--reg-dir", help="with N_name sub-folders: kohya's reg_data_dir, whose N_name sub-folders are "
                   "regularization subsets")
    p.add_argument("--key-style", choices=("relative", "stem", "absolute"), default="relative",
                   help="image keys: relative (default), stem (kohya classic, flat folders), absolute")
    p.add_argument("--clean", action="store_true", help="clean captions and tags (kohya's clean_captions_and_tags) while "
                   "building; given a metadata JSON, clean its entries (written to --out, or in place with a backup)")
    p.add_argument("--recursive", action="store_true", help="include sub-folders")
    p.add_argument("--caption-extension", help="sidecar holding a caption (default: .caption, or .txt when the "
                   ".txt files read as sentences)")
    p.add_argument("--tags-extension", help="sidecar holding comma-separated tags (default: .txt, or .tags when the "
                   ".txt files read as sentences)")
    p.add_argument("--resolution", type=_resolution, default=(512, 512), help="for the size checks (default 512)")
    p.add_argument("--max-token-length", type=int, default=75, choices=(75, 150, 225))
    p.add_argument("--no-write", action="store_true", help="only check; write nothing")
    p.add_argument("--json", action="store_true", help="print the health report as JSON")
    p.set_defaults(run=_prepare)


def _prepare(args) -> int:
    target = Path(args.target)
    if args.clean and target.is_file() and _is_metadata_file(target):
        return _clean_metadata(target, args)
    if target.is_file() and target.suffix.lower() in (".toml", ".json"):
        return _prepare_run(target, args)
    if not target.is_dir():
        print(f"sdft prepare: {target} is neither an image folder nor a run TOML", file=sys.stderr)
        return ExitCode.USAGE
    from engine.data.kohya_folders import is_layout

    if is_layout(target):
        from engine.data.layout_cli import prepare_layout
        from engine.data.sidecar_kind import DEFAULT_MODE, SIDECAR_EXTENSIONS

        args.caption_extension = args.caption_extension or SIDECAR_EXTENSIONS[DEFAULT_MODE][0]
        return prepare_layout(target, args)
    if args.reg_dir:
        print(f"sdft prepare: --reg-dir goes with a folder of kohya's N_name sub-folders, and {target} holds "
              "images itself", file=sys.stderr)
        return ExitCode.USAGE
    return _prepare_folder(target, args)


def _prepare_folder(folder: Path, args) -> int:
    from engine.data.buckets import BucketSettings
    from engine.data.captions import join_caption_and_tags
    from engine.data.metadata import build_metadata, load_raw, write_metadata_json
    from engine.data.scan import ScanError

    console = _console()
    _print_sidecar_reading(folder, args)
    out = Path(args.out) if args.out else folder / "metadata.json"
    existing = None
    if out.is_file():
        try:
            existing, _ = load_raw(out)
        except Exception as exc:
            print(f"sdft prepare: {out} exists but cannot be read ({exc}); move it away first", file=sys.stderr)
            return ExitCode.USAGE
    from engine.data.scan import find_images, name_clashes

    not_read: list[tuple[Path, str]] = []   # links out of the folder, FIFOs, huge sidecars: named
    try:
        paths = find_images(folder, recursive=args.recursive)
    except ScanError as exc:
        print(f"sdft prepare: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    report = None
    if args.check or args.no_write:
        # The check runs first, so the metadata leaves out what it could not decode (training
        # would skip those images anyway). Every image found is checked, unreadable ones too.
        from engine.data.captions import read_sidecar

        captions = []
        for path in paths:
            stem = path.with_suffix("")
            captions.append(join_caption_and_tags(
                read_sidecar(stem.with_name(stem.name + args.caption_extension), within=folder),
                read_sidecar(stem.with_name(stem.name + args.tags_extension), within=folder)))
        settings = BucketSettings(args.resolution, True, False, 256, 1024, 64)
        report = _health_report(paths, captions, settings, args,
                                sidecar_extensions=(args.caption_extension, args.tags_extension))
    undecodable = _undecodable(report)
    try:
        meta = build_metadata(folder, recursive=args.recursive, caption_extension=args.caption_extension,
                              tags_extension=args.tags_extension, key_style=args.key_style, clean=args.clean,
                              existing=existing, leave_out=undecodable, not_read=not_read)
    except (ScanError, ValueError) as exc:
        print(f"sdft prepare: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    _print_clashes(_console(stderr=args.json), name_clashes(paths))   # stdout holds only the JSON
    _print_not_read(_console(stderr=args.json), not_read, folder)
    if not args.no_write:
        write_metadata_json(out, meta)
        with_caption = sum(1 for e in meta.values() if e.get("caption") or e.get("tags"))
        notes = _console(stderr=args.json)
        notes.print(f"wrote {out}: {len(meta)} images, {with_caption} with a caption or tags "
                    f"(keys: {args.key_style})")
        if undecodable:
            notes.print(f"left out of {out.name}: {len(undecodable)} image(s) the check could not decode:")
            for path in sorted(undecodable):
                notes.print(f"  {_rel(path, folder)}")
    if report is None:
        return ExitCode.OK
    return _print_report(report, args, console)


def _print_sidecar_reading(folder: Path, args) -> None:
    """Settle which sidecar is the caption and which the tags, and say so in one line: as given,
    or as the .txt files read (engine/data/sidecar_kind.py)."""
    from engine.data.sidecar_kind import DEFAULT_MODE, SIDECAR_EXTENSIONS, extensions_meaning, guess_folder

    notes = _console(stderr=args.json)
    if args.caption_extension or args.tags_extension:
        default_caption, default_tags = SIDECAR_EXTENSIONS[DEFAULT_MODE]
        args.caption_extension = args.caption_extension or default_caption
        args.tags_extension = args.tags_extension or default_tags
        notes.print(f"sidecars as given: {extensions_meaning(args.caption_extension, args.tags_extension)}")
        return
    guess = guess_folder(folder, recursive=args.recursive)
    args.caption_extension, args.tags_extension = SIDECAR_EXTENSIONS[guess.mode]
    notes.print(f"{guess.reading()}; {extensions_meaning(args.caption_extension, args.tags_extension)} "
                "(--caption-extension / --tags-extension choose)")


def _is_metadata_file(path: Path) -> bool:
    """A kohya metadata file (JSONL, or a JSON object of entries), not a dataset config JSON."""
    import json

    if path.suffix.lower() == ".jsonl":
        return True
    if path.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return True    # let the metadata reader name what is wrong with it
    return isinstance(data, dict) and not ({"general", "datasets"} & data.keys())


def _clean_metadata(path: Path, args) -> int:
    """kohya's clean_captions_and_tags on a metadata file that has no sidecars beside it.

    Written to --out, or over the file itself after a copy of it is kept in
    ``sdft-label-backups/`` beside it (engine/data/label_backups.py), so no caption is lost.
    """
    from engine.data.captions import clean_entry
    from engine.data.label_backups import LabelBackup
    from engine.data.metadata import MetadataError, load_raw, write_metadata_json

    try:
        raw, warnings = load_raw(path)
    except (MetadataError, OSError, ValueError) as exc:
        print(f"sdft prepare: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    notes = _console(stderr=args.json)
    for warning in warnings:
        notes.print(f"{path.name}: {warning}")
    cleaned, changed, missing = {}, 0, 0
    for key, entry in raw.items():
        cleaned[key], lacks = clean_entry(entry)
        changed += cleaned[key] != entry
        missing += len(lacks) == 2
    out = Path(args.out) if args.out else path
    if args.no_write:
        notes.print(f"{path}: {changed} of {len(raw)} entries would change; nothing written (--no-write)")
        return ExitCode.OK
    backup = None
    if out.resolve() == path.resolve() and changed:
        backup = LabelBackup(path.parent, reason="sdft prepare --clean")
        backup.keep(path)
    if changed or out != path:
        write_metadata_json(out, cleaned)
    notes.print(f"cleaned {path}: {changed} of {len(raw)} entries changed"
                + (f", {missing} with neither caption nor tags" if missing else "") + f"; wrote {out}")
    if backup is not None and backup.folder is not None:
        notes.print(f"the original is kept in {backup.folder}")
    return ExitCode.OK


def _undecodable(report) -> set[Path]:
    """Images the health check could not read or decode (they cannot train)."""
    from engine.data.health import UNDECODABLE

    if report is None:
        return set()
    return {Path(i.path) for i in report.issues if i.kind in UNDECODABLE}


def _prepare_run(path: Path, args) -> int:
    from engine.config.problems import ConfigError
    from engine.data.buckets import BucketSettings
    from engine.data.captions import caption_as_trained
    from engine.data.metadata import MetadataError
    from engine.data.subset_source import read_subset

    try:
        from engine.config.run_toml import load_run_config

        cfg = load_run_config(path)
    except ConfigError as exc:
        from engine.console import print_problems

        print_problems(exc.problems)
        return ExitCode.USAGE
    console = _console()
    status = ExitCode.OK
    for spec in cfg.datasets.datasets:
        settings = BucketSettings.of_dataset(spec, args.resolution)
        paths, captions, masks = [], [], []
        for sub in spec.subsets:
            try:   # a folder subset's captions as training reads them (engine/data/subset_source.py)
                meta = read_subset(sub, caption_extension=cfg.data.caption_extension, recursive=cfg.data.recursive)
            except MetadataError as exc:
                console.print(styled(("error", "red"), f" {sub.key}: {exc}"))
                status = ExitCode.FINDINGS
                continue
            for warning in meta.warnings:   # keys naming images outside image_dir among them
                console.print(styled(("warning", "yellow"), f" {sub.key}: {warning}"))
            for e in meta.entries:
                paths.append(e.path)
                masks.append(_mask_of(e.path, sub))
                captions.append(caption_as_trained(e.caption, e.tags, join=cfg.data.caption_tags_join,
                                                   separator=sub.caption_separator, wildcard=sub.enable_wildcard,
                                                   prefix=sub.caption_prefix, suffix=sub.caption_suffix,
                                                   file_name=e.path if sub.caption_from_filename else None))
        console.print(styled((spec.key, "bold")))
        args.max_token_length = cfg.model.max_token_length
        status = max(status, _print_health(paths, captions, settings, args, console,
                                           exif_transpose=cfg.data.exif_transpose,
                                           masks=masks if any(m is not None for m in masks) else None))
    return status


def _mask_of(image: Path, sub):
    """The image's loss mask for the health check: its source, the MaskError saying it has
    none, or None when the subset gives no masks (engine/data/masks.py)."""
    from engine.data.masks import MaskError, mask_source

    try:
        return mask_source(image, sub)
    except MaskError as exc:
        return exc


def _health_report(paths, captions, settings, args, exif_transpose: bool = True, sidecar_extensions=None,
                   masks=None):
    from engine.data.health import check_images

    return check_images(paths, captions=captions, settings=settings, max_token_length=args.max_token_length,
                        exif_transpose=exif_transpose, sidecar_extensions=sidecar_extensions, masks=masks)


def _print_report(report, args, console) -> int:
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for line in report.lines():
            console.print(line, markup=False)
    return ExitCode.FINDINGS if report.errors else ExitCode.OK


def _print_health(paths, captions, settings, args, console, exif_transpose: bool = True, masks=None) -> int:
    # A run TOML's captions are read as training reads them (above): no sidecar is checked again.
    report = _health_report(paths, captions, settings, args, exif_transpose=exif_transpose, masks=masks)
    return _print_report(report, args, console)
