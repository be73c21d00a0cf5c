"""``sdft cache encode`` and ``sdft cache prune``: the latent cache from the terminal.

Registered in the ``sdft`` tree by engine/cli.py; each action returns an exit code. It sits in the
training package because encoding runs the training's own latent pass (engine/train/encode.py).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

from engine.commandline import run_command
from engine.vocabulary import ExitCode


def _console():
    from engine.console import make_console

    return make_console()   # markup off: paths print exactly


def register(commands) -> None:
    """Add ``cache`` (encode, prune) to the ``sdft`` tree."""
    p = commands.add_parser("cache", help="latent cache: encode now, prune", description="Latent cache maintenance.")
    sub = p.add_subparsers(dest="action", required=True)
    prune = sub.add_parser("prune", help="delete cache entries no run uses any more")
    prune.add_argument("config", help="run TOML (names the cache folder)")
    prune.add_argument("--only-this-run", action="store_true",
                       help="keep only the entries this run used (forget other runs' manifests)")
    prune.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    prune.set_defaults(run=_cache)
    encode = sub.add_parser("encode", help="encode the run's latents now, train later",
                            description="Encode every latent the run would cache at its start (its model, "
                                        "dataset and cache settings), so training starts without waiting.")
    encode.add_argument("config", help="run TOML")
    encode.set_defaults(run=_cache_encode)


def cache_command(argv: list[str]) -> int:
    return run_command(register, "cache", argv)


def _live_run_using(cache_dir: Path, runs_root: Path) -> str | None:
    """A live run that may be writing this cache: any run registered on it, wherever its
    output_dir is, or a locked run folder beside this run's (they share
    ``<output_dir>/.latent-cache``; an older sdft's manifest names only the run)."""
    from engine.data.cache_prune import registered_runs
    from engine.runlock import read_holder

    folders = {p for p in runs_root.iterdir() if p.is_dir()} if runs_root.is_dir() else set()
    for manifest, run_dir in registered_runs(cache_dir).items():
        folders.add(run_dir if run_dir is not None else runs_root / manifest.stem)
    for folder in sorted(folders):
        holder = read_holder(folder)
        if holder is not None:
            return f"{folder} is in use by {holder.describe()}"
    return None


def _cache_encode(args) -> int:
    from engine.config.problems import ConfigError
    from engine.console import print_problems
    from engine.runlock import RunFolderBusy
    from engine.train.encode import encode_latents

    console = _console()
    try:
        result = encode_latents(args.config, lambda line: console.print(line))
    except KeyboardInterrupt:   # the entries written so far stay (the cache's index is saved too)
        print("sdft cache encode: interrupted; the latents encoded so far are kept in the cache, and the next "
              "`sdft cache encode` or training run reuses them", file=sys.stderr)
        return ExitCode.STOPPED
    except ConfigError as exc:
        print_problems(exc.problems)
        return ExitCode.USAGE
    except RunFolderBusy as exc:
        print(f"sdft cache encode: {exc}", file=sys.stderr)
        return ExitCode.BUSY
    except ValueError as exc:
        print(f"sdft cache encode: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    console.print(f"latents: {result.encoded} encoded, {result.reused} already cached, {result.imported} imported "
                  f"from kohya .npz, {len(result.failed)} image(s) could not be read")
    return ExitCode.OK


def _cache(args) -> int:
    from engine.config.problems import ConfigError
    from engine.config.run_toml import load_run_config

    try:
        cfg = load_run_config(args.config)
    except ConfigError as exc:
        from engine.console import print_problems

        print_problems(exc.problems)
        return ExitCode.USAGE
    from engine.data.cache_prune import manifest_path, prune_cache, referenced_keys, registered_runs

    cache_dir = Path(cfg.cache.cache_dir) if cfg.cache.cache_dir else Path(cfg.train.output_dir) / ".latent-cache"
    if not cache_dir.is_absolute():
        cache_dir = Path(cfg.base_dir) / cache_dir
    if not cache_dir.is_dir():
        print(f"no latent cache at {cache_dir}")
        return ExitCode.OK
    only = manifest_path(cache_dir, cfg.run_dir()) if args.only_this_run else None
    if only and not only.is_file():
        print(f"sdft cache prune: no record of run {cfg.run_dir()} in {cache_dir}; train it once first",
              file=sys.stderr)
        return ExitCode.USAGE
    from engine.runlock import RunFolderBusy, RunLock

    busy = None if args.dry_run else _live_run_using(cache_dir, Path(cfg.run_dir()).parent)
    if busy is not None:
        print(f"sdft cache prune: {busy}; pruning now would delete latents it is caching. "
              "Prune when it has finished.", file=sys.stderr)
        return ExitCode.BUSY
    try:
        # hold this run's folder while deleting, so its own training cannot start mid-prune
        holds = not args.dry_run and Path(cfg.run_dir()).is_dir()
        with RunLock(cfg.run_dir(), "sdft cache prune") if holds else nullcontext():
            keep = referenced_keys(cache_dir, only)
            files, size = prune_cache(cache_dir, keep, dry_run=args.dry_run)
            if only and not args.dry_run:
                for manifest in registered_runs(cache_dir):
                    if manifest != only:
                        manifest.unlink()
    except RunFolderBusy as exc:
        print(f"sdft cache prune: {exc}", file=sys.stderr)
        return ExitCode.BUSY
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {files} cache file(s), {size / 1e6:.1f} MB; {len(keep)} entries kept in {cache_dir}")
    return ExitCode.OK
