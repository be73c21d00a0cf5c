"""``sdft caption`` (BLIP) and ``sdft tag`` (WD14 / DeepDanbooru) for the terminal.

Target: an image folder, or a run TOML whose subsets' ``image_dir`` folders are labelled
(with the run's ``[data]`` caption/tag extensions unless given). A Rich progress bar on a
terminal, plain lines in a pipe, then a summary: done, skipped, failed, images/s and for
tags the tags per image and the most frequent tags. Ctrl-C stops after the current batch
(everything finished is already written); a second Ctrl-C aborts.

:func:`register` adds both commands to the one ``sdft`` tree (see engine.commandline).

Exit codes: 0 ok, 1 some images failed, 2 bad usage / model / configuration, 130 stopped.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from engine.commandline import run_command
from engine.console import make_console, styled
from engine.labeling.terminal import ProgressView, merge, print_summary
from engine.vocabulary import ExitCode


@dataclass
class Target:
    """One folder to label, with the metadata file that belongs to it (run TOML subsets)."""

    image_dir: Path
    metadata_file: Path | None = None
    label: str = ""


# ---------------------------------------------------------------- arguments


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="image folder, or a run TOML (its subsets' image_dir folders are labelled)")
    p.add_argument("--model", help="model folder or hub id (downloaded only when online)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch on the device")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--recursive", action="store_true", help="include sub-folders")
    p.add_argument("--no-exif", action="store_true", help="ignore EXIF orientation")
    write = p.add_mutually_exclusive_group()
    write.add_argument("--overwrite", action="store_true", help="replace existing labels (default: keep them)")
    write.add_argument("--append", action="store_true", help="add to existing labels")
    p.add_argument("--metadata", metavar="FILE", help="also write this kohya metadata JSON (folder target)")
    p.add_argument("--update-metadata", action="store_true",
                   help="also write each subset's metadata_file (run TOML target)")
    p.add_argument("--no-sidecars", action="store_true", help="write only the metadata JSON, no sidecar files")
    p.add_argument("--clean", action="store_true", help="clean the text as kohya's clean_captions_and_tags does")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def register(commands) -> None:
    """Add ``caption`` and ``tag`` to the ``sdft`` tree."""
    _add_caption(commands)
    _add_tag(commands)


def _add_caption(commands) -> None:
    from engine.labeling.options import DEFAULT_BLIP

    p = commands.add_parser("caption", help="auto-caption images with BLIP",
                            description="Write a BLIP caption (<image>.caption) for every image that has none.")
    _common(p)
    p.add_argument("--beam-search", action="store_true", help="beam search instead of nucleus sampling")
    p.add_argument("--num-beams", type=int, default=1, help="beams for --beam-search (default 1)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling top_p (default 0.9)")
    p.add_argument("--max-length", type=int, default=75, help="max tokens, prompt included (default 75)")
    p.add_argument("--min-length", type=int, default=5, help="min tokens, prompt included (default 5)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (default 42)")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16")
    p.add_argument("--caption-extension", default=None, help="caption sidecar extension (default .caption)")
    p.add_argument("--prefix", default="", help="text put before every caption")
    p.add_argument("--suffix", default="", help="text put after every caption")
    p.set_defaults(model_default=DEFAULT_BLIP, run=_caption)


def _add_tag(commands) -> None:
    p = commands.add_parser("tag", help="auto-tag images with WD14 / DeepDanbooru",
                            description="Write Danbooru-style tags (<image>.txt) with a WD14 tagger (default) "
                                        "or DeepDanbooru.")
    _common(p)
    from engine.registry.labelers import DEFAULT_TAGGER, TAGGERS

    p.add_argument("--tagger", choices=TAGGERS, default=DEFAULT_TAGGER)
    p.add_argument("--thresh", type=float, default=None, help="threshold (WD14 0.35, DeepDanbooru 0.5)")
    p.add_argument("--general-threshold", type=float, default=None, help="WD14 general tags (default --thresh)")
    p.add_argument("--character-threshold", type=float, default=None, help="WD14 character tags (default --thresh)")
    rating = p.add_mutually_exclusive_group()
    rating.add_argument("--use-rating-tags", action="store_true", help="put the rating tag first")
    rating.add_argument("--use-rating-tags-as-last-tag", action="store_true", help="put the rating tag last")
    quality = p.add_mutually_exclusive_group()
    quality.add_argument("--use-quality-tags", action="store_true",
                         help="kohya's quality tag first: refused, the WD14 models have no Quality category")
    quality.add_argument("--use-quality-tags-as-last-tag", action="store_true",
                         help="kohya's quality tag last: refused, as --use-quality-tags")
    p.add_argument("--character-tags-first", action="store_true", help="character tags before general tags")
    p.add_argument("--always-first-tags", default="", help="comma list moved to the front when present")
    p.add_argument("--undesired-tags", default="", help="comma list of tags never written")
    p.add_argument("--tag-replacement", default="", help="'a,b;c,d' replaces a by b and c by d (\\, \\; escape)")
    p.add_argument("--remove-underscore", action="store_true", help="underscores to spaces (tags longer than 3)")
    p.add_argument("--character-tag-expand", action="store_true", help="name_(series) -> name, series")
    p.add_argument("--max-tags", type=int, default=None, help="keep at most this many (most probable) tags")
    p.add_argument("--caption-separator", default=", ", help="separator between tags (default ', ')")
    p.add_argument("--tags-extension", "--caption-extension", dest="tags_extension", default=None,
                   help="tag sidecar extension (default .txt)")
    p.add_argument("--frequency", action="store_true", help="print the tag frequency table")
    p.set_defaults(run=_tag)


# ---------------------------------------------------------------- targets


def resolve_targets(target: str, *, console=None) -> tuple[list[Target], dict]:
    """Folders to label, plus the run's ``[data]`` extensions when the target is a run TOML."""
    path = Path(target).expanduser()
    if path.is_dir():
        return [Target(path, None, str(path))], {}
    if not path.exists():
        raise _Usage(f"{target}: no such folder or run TOML")
    if path.suffix.lower() != ".toml":
        raise _Usage(f"{target}: give an image folder or a run TOML")
    from engine.config.problems import ConfigError
    from engine.config.run_toml import load_run_file

    try:
        config, _doc, _warnings = load_run_file(path)
    except ConfigError as exc:
        # A dataset whose metadata JSON does not exist yet is the usual case before captioning:
        # fall back to the image_dir values written in the file.
        targets, data = _raw_targets(path)
        if not targets:
            raise _Usage(f"{path}: no [[datasets.subsets]] image_dir to label "
                         f"({len(exc.problems)} problem(s) in the file; `sdft train {path} --check` lists them)") from None
        if console is not None:
            console.print(styled(("note:", "yellow"), f" {path} does not validate yet ({len(exc.problems)} problem(s)); "
                                 "labelling the image_dir folders it names"))
        return targets, data
    targets = []
    for di, dataset in enumerate(config.datasets.datasets):
        for si, subset in enumerate(dataset.subsets):
            if subset.image_dir is None:
                continue
            metadata = Path(subset.metadata_file) if subset.metadata_file is not None else None   # a folder subset
            targets.append(Target(Path(subset.image_dir), metadata, f"datasets[{di}].subsets[{si}]"))
    if not targets:
        raise _Usage(f"{path}: no subset has an image_dir to label")
    data = {"caption_extension": config.data.caption_extension, "tags_extension": config.data.tags_extension}
    return targets, data


def _raw_targets(path: Path) -> tuple[list[Target], dict]:
    import tomllib

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise _Usage(f"{path}: cannot read the TOML ({exc})") from None
    base = path.parent
    tables = raw
    if isinstance(raw.get("dataset_config"), str):
        ref = base / raw["dataset_config"]   # kept relative, as the user wrote it: messages name it so
        try:
            tables = tomllib.loads(ref.read_text(encoding="utf-8-sig"))
            base = ref.parent
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise _Usage(f"{ref}: cannot read the dataset TOML ({exc})") from None
    targets = []
    for di, dataset in enumerate(tables.get("datasets") or []):
        for si, subset in enumerate((dataset or {}).get("subsets") or []):
            image_dir = (subset or {}).get("image_dir")
            if isinstance(image_dir, str) and (base / image_dir).is_dir():
                meta = subset.get("metadata_file")
                targets.append(Target(base / image_dir, base / meta if isinstance(meta, str) else None,
                                      f"datasets[{di}].subsets[{si}]"))
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    return targets, {k: data[k] for k in ("caption_extension", "tags_extension") if isinstance(data.get(k), str)}


class _Usage(Exception):
    pass


# ---------------------------------------------------------------- running


class _StopFlag:
    """The stop-signal policy (engine/stop_signals.py) for labelling: stop after the current
    batch (every label written so far is kept); Ctrl-C again aborts."""

    def __init__(self, console):
        from engine.stop_signals import StopSignals

        self.console, self.stop = console, False
        self.signals = StopSignals(self.request)

    def request(self, name: str) -> None:
        self.stop = True
        self.console.print(f"{name}: stopping after this batch (Ctrl-C again to abort)", style="yellow")

    def __enter__(self):
        self.signals.__enter__()
        return self

    def __exit__(self, *exc):
        return self.signals.__exit__(*exc)

    def __call__(self) -> bool:
        return self.stop


def _policy(args) -> str:
    return "overwrite" if args.overwrite else "append" if args.append else "skip"


def _outputs(args, target: Target) -> dict:
    metadata = None
    if args.metadata:
        metadata = Path(args.metadata)
    elif args.update_metadata and target.metadata_file is not None:
        metadata = target.metadata_file
    return dict(policy=_policy(args), sidecars=not args.no_sidecars, metadata_file=metadata,
                image_dir=target.image_dir, clean=args.clean, exif_transpose=not args.no_exif,
                device=args.device)


def caption_command(argv: list[str]) -> int:
    return run_command(register, "caption", argv)


def tag_command(argv: list[str]) -> int:
    return run_command(register, "tag", argv)


def _caption(args) -> int:
    from engine.labeling.options import CaptionOptions

    def build(target: Target, data: dict) -> CaptionOptions:
        return CaptionOptions(
            model=args.model or args.model_default, batch_size=args.batch_size or 1, dtype=args.dtype,
            beam_search=args.beam_search, num_beams=args.num_beams, top_p=args.top_p, max_length=args.max_length,
            min_length=args.min_length, seed=args.seed,
            caption_extension=args.caption_extension or data.get("caption_extension", ".caption"),
            prefix=args.prefix, suffix=args.suffix, **_outputs(args, target))

    return _run("caption", args, build)


# kohya reads a quality tag only from taggers that ship a tag_mapping.json with a "Quality"
# category; every WD14 model (v1.4 and v3) ships selected_tags.csv, whose categories are rating,
# general and character, so the option would change nothing.
QUALITY_REFUSAL = ("--use-quality-tags needs a tagger whose labels have a Quality category; the WD14 "
                   "taggers (v1.4 and v3) have rating, general and character tags only, so there is no "
                   "quality tag to add. Remove the option (kohya's script does nothing with it for these "
                   "models either).")


def _tag(args) -> int:
    from engine.labeling.options import TagOptions
    from engine.labeling.tagrules import split_list

    if args.use_quality_tags or args.use_quality_tags_as_last_tag:
        make_console(stderr=True).print(styled(("sdft tag:", "bold red"), f" {QUALITY_REFUSAL}"))
        return ExitCode.USAGE

    def build(target: Target, data: dict) -> TagOptions:
        sep = args.caption_separator
        return TagOptions(
            tagger=args.tagger, model=args.model, batch_size=args.batch_size or 1, thresh=args.thresh,
            general_threshold=args.general_threshold, character_threshold=args.character_threshold,
            use_rating_tags=args.use_rating_tags, use_rating_tags_as_last_tag=args.use_rating_tags_as_last_tag,
            character_tags_first=args.character_tags_first,
            always_first_tags=split_list(args.always_first_tags, sep),
            undesired_tags=split_list(args.undesired_tags, sep), tag_replacement=args.tag_replacement,
            remove_underscore=args.remove_underscore, character_tag_expand=args.character_tag_expand,
            max_tags=args.max_tags, caption_separator=sep,
            tags_extension=args.tags_extension or data.get("tags_extension", ".txt"), **_outputs(args, target))

    return _run("tag", args, build)


def _run(kind: str, args, build) -> int:
    from engine.data.scan import ScanError, find_images
    from engine.labeling.options import LabelError, LabelSummary

    console = make_console()
    err = make_console(stderr=True)
    if args.batch_size is not None and args.batch_size < 1:
        err.print(f"sdft {kind}: --batch-size must be at least 1")
        return ExitCode.USAGE
    try:
        targets, data = resolve_targets(args.target, console=err)
        if args.metadata and len(targets) > 1:
            raise _Usage("--metadata names one file but the run TOML has several subsets; use --update-metadata")
        jobs = [(t, find_images(t.image_dir, recursive=args.recursive)) for t in targets]
    except (_Usage, ScanError) as exc:
        err.print(styled((f"sdft {kind}:", "bold red"), f" {exc}"))
        return ExitCode.USAGE
    total = LabelSummary()
    model = None
    # with --json, stdout holds only the JSON object: progress goes to stderr
    with _StopFlag(err) as stop, ProgressView(err if args.json else console, kind) as view:
        for target, paths in jobs:
            opts = build(target, data)
            view.start(target.label or str(target.image_dir), len(paths))
            try:
                if model is None:
                    model = _LazyModel(kind, opts)
                summary = _call(kind, paths, opts, view, stop, model)
            except LabelError as exc:
                view.stop()
                err.print(styled((f"sdft {kind}:", "bold red"), f" {exc}"))
                return ExitCode.USAGE
            merge(total, summary)
            if summary.stopped:
                break
    if model is not None:
        model.close()
    print_summary(console, kind, total, args)
    if total.stopped:
        return ExitCode.STOPPED
    return ExitCode.FINDINGS if total.failed else ExitCode.OK


class _LazyModel:
    """One model shared by every folder of a run TOML, loaded on first use (never when every
    image is already labelled)."""

    def __init__(self, kind: str, opts):
        self._kind, self._opts, self._real = kind, opts, None

    def __getattr__(self, name):
        if self._real is None:
            from engine.labeling.runner import load_captioner, load_tagger

            self._real = (load_captioner if self._kind == "caption" else load_tagger)(self._opts)
        return getattr(self._real, name)

    def close(self) -> None:
        if self._real is not None and hasattr(self._real, "close"):
            self._real.close()


def _call(kind, paths, opts, view, stop, model):
    from engine.labeling.runner import caption_images, tag_images

    fn = caption_images if kind == "caption" else tag_images
    return fn(paths, opts, progress=view.update, should_stop=stop, log=view.log, model=model)
