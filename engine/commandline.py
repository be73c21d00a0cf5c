"""The shape of the one ``sdft`` argument tree.

:mod:`engine.cli` builds the whole tree; each module that owns commands (``engine.data.cli``,
``engine.labeling.cli``, ``engine.models.tokens_cli``, ``engine.families.convert_cli``,
``engine.bench.data``) adds them with its ``register(commands)``, each command's parser
carrying the function that runs it (``run``). A module's own ``X_command(argv)`` parses
through a tree holding only its commands, so ``sdft X ...`` and ``X_command([...])`` read
the same options the same way, with the same usage and error lines.

Library modules never import this module or the command modules (import-linter checks it);
nothing heavy is imported here, so ``sdft --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

DESCRIPTION = ("Fine-tune Stable Diffusion 1.x/2.x on your own images. "
               "Run `sdft` alone for the wizard, or `sdft train RUN.toml` headless.")

Register = Callable[[argparse._SubParsersAction], None]


def new_tree() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The root ``sdft`` parser and the subparsers action commands register into."""
    from engine import __version__

    parser = argparse.ArgumentParser(prog="sdft", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"sdft {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser, commands


def run_command(register: Register, name: str, argv: list[str] | None = None) -> int:
    """Parse ``sdft NAME ARGV...`` with only ``register``'s commands in the tree and run it.
    A usage error exits 2 as argparse does (SystemExit)."""
    parser, commands = new_tree()
    register(commands)
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    return args.run(args)
