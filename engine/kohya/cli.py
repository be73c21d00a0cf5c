"""``sdft from-kohya``: a kohya fine_tune.py command line or config file in, a run TOML out,
and a table of where every option went or why it was refused."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.vocabulary import ExitCode



def register(commands) -> None:
    p = commands.add_parser(
        "from-kohya", help="convert a kohya fine_tune.py command or config file to a run TOML",
        description="Convert a kohya-ss fine_tune.py command line (as typed, `accelerate launch` included) "
                    "or its --config_file TOML into an sdft run TOML, and show where each option went.",
        epilog="examples:\n  sdft from-kohya -o run.toml -- accelerate launch fine_tune.py --use_8bit_adam ...\n"
               "  sdft from-kohya --config-file kohya_args.toml -o run.toml")
    p.add_argument("-o", "--output", required=True, help="the run TOML to write")
    p.add_argument("--config-file", help="kohya's --config_file / --output_config TOML (flat or sectioned)")
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
    except (OSError, ValueError) as exc:   # tomllib's errors are ValueErrors
        err.print(f"sdft from-kohya: cannot read {args.config_file}: {exc}")
        return ExitCode.USAGE
    source = args.config_file or " ".join(args.command)
    atomic.write_text(out, render(conversion, source))
    _print_table(make_console(), report_lines(conversion))
    refused = len(conversion.refused)
    make_console().print(styled(("wrote ", ""), (str(out), "bold"),
                                f": {len(conversion.rows) - refused} option(s) converted, {refused} refused. "
                                f"Next: sdft train {out} --check"))
    return ExitCode.OK


def _print_table(console, lines) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("kohya option", no_wrap=True)
    table.add_column("in the run TOML", overflow="fold")
    table.add_column("why / note", style="dim")
    for option, went, why in lines:
        # Text cells: option values and paths print exactly, brackets included
        table.add_row(Text(option), Text(went, style="yellow" if went == "refused" else ""), Text(why))
    console.print(table)


if __name__ == "__main__":
    sys.exit(from_kohya_command(sys.argv[1:]))
