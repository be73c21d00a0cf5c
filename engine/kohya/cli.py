"""``sdft from-kohya``: a kohya fine_tune.py / train_db.py command line, config file or kohya_ss
GUI config in, a run TOML out, and a table of where every option went, or why it was left out
or refused."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.vocabulary import ExitCode


def register(commands) -> None:
    p = commands.add_parser(
        "from-kohya", help="convert a kohya fine_tune.py / train_db.py command, config file or kohya_ss GUI "
                           "config to a run TOML",
        description="Convert a kohya-ss fine_tune.py or train_db.py command line (as typed, `accelerate launch` "
                    "included), its --config_file TOML, or a kohya_ss GUI config JSON (a preset or a saved "
                    "config) into an sdft run TOML, and show where each option went.",
        epilog="examples:\n  sdft from-kohya -o run.toml -- accelerate launch fine_tune.py --use_8bit_adam ...\n"
               "  sdft from-kohya --config-file kohya_args.toml -o run.toml\n"
               "  sdft from-kohya --config-file my_dreambooth_config.json -o run.toml")
    p.add_argument("-o", "--output", required=True, help="the run TOML to write")
    p.add_argument("--config-file", help="kohya's --config_file / --output_config TOML (flat or sectioned), or a "
                                         "kohya_ss GUI config JSON (told apart by the content)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("command", nargs="*", help="after --: the kohya command line as typed")
    p.set_defaults(run=_from_kohya)


def from_kohya_command(argv: list[str]) -> int:
    from engine.commandline import run_command

    return run_command(register, "from-kohya", argv)


def _from_kohya(args) -> int:
    from engine import atomic
    from engine.console import make_console, styled
    from engine.kohya.convert import from_command, from_config_file, render, report_lines
    from engine.kohya.scripts import NotConvertible

    err = make_console(stderr=True)
    if bool(args.config_file) == bool(args.command):
        err.print("sdft from-kohya: give the kohya command after -- or --config-file FILE (one of them)")
        return ExitCode.USAGE
    out = Path(args.output)
    if out.exists() and not args.force:
        err.print(f"sdft from-kohya: {out} exists; pass --force to replace it or choose another -o")
        return ExitCode.USAGE
    try:
        conversion = from_config_file(args.config_file) if args.config_file else from_command(args.command)
    except NotConvertible as exc:
        err.print(f"sdft from-kohya: {exc}")
        return ExitCode.USAGE
    except (OSError, ValueError) as exc:   # tomllib's errors are ValueErrors
        where = f"cannot read {args.config_file}: " if args.config_file else ""
        err.print(f"sdft from-kohya: {where}{exc}")
        return ExitCode.USAGE
    atomic.write_text(out, render(conversion, args.config_file or list(args.command)))
    _print_table(make_console(), report_lines(conversion))
    refused, dropped = len(conversion.refused), len(conversion.dropped)
    converted = len(conversion.rows) - refused - dropped
    make_console().print(styled(("wrote ", ""), (str(out), "bold"),
                                f" ({conversion.script}): {converted} option(s) converted, {dropped} left out, "
                                f"{refused} refused. Next: sdft train {out} --check"))
    return ExitCode.OK


def _print_table(console, lines) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("kohya setting", no_wrap=True)
    table.add_column("in the run TOML", overflow="fold")
    table.add_column("why / note", style="dim", overflow="fold")   # a long option name wraps, never "…"
    for option, went, why in lines:
        # Text cells: option values and paths print exactly, brackets included
        table.add_row(Text(option), Text(went, style={"refused": "yellow", "left out": "dim"}.get(went, "")), Text(why))
    console.print(table)


if __name__ == "__main__":
    sys.exit(from_kohya_command(sys.argv[1:]))
