"""Users do not have the project's internal notes: no help text or key doc may cite them."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields, is_dataclass

import pytest

from engine.config.schema import SECTIONS

CITATION = re.compile(r"(SPEC|DESIGN) §")
COMMANDS = ["", "train", "demo", "bench", "plan", "buckets", "prepare", "cache", "convert", "tokens",
            "caption", "tag"]


def _docs(cls, prefix):
    for f in fields(cls):
        yield f"{prefix}.{f.name}", f.metadata.get("doc", "")
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            yield from _docs(f.default_factory, f"{prefix}.{f.name}")


def test_key_docs_cite_no_internal_document():
    cited = [key for name, cls in SECTIONS.items() for key, doc in _docs(cls, name) if CITATION.search(doc)]
    assert cited == []


@pytest.mark.parametrize("command", COMMANDS)
def test_help_texts_cite_no_internal_document(command, capsys):
    from engine.cli import main

    with pytest.raises(SystemExit) as exited:
        code = main([*([command] if command else []), "--help"])
        raise SystemExit(code)
    assert exited.value.code in (0, None)
    out = capsys.readouterr()
    assert out.out.strip(), f"sdft {command} --help printed nothing"
    assert not CITATION.search(out.out + out.err), out.out


def _message_strings(path):
    """String literals of a module that are not docstrings (help texts, messages, hints)."""
    import io
    import tokenize

    tokens = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
              if t.type not in (tokenize.NL, tokenize.COMMENT)]
    for before, token, after in zip([None] + tokens, tokens, tokens[1:] + [None], strict=False):
        docstring = (before is None or before.type in (tokenize.INDENT, tokenize.NEWLINE, tokenize.DEDENT)) \
            and after is not None and after.type == tokenize.NEWLINE
        if token.type == tokenize.STRING and not docstring:
            yield token.start[0], token.string


def test_messages_cite_no_internal_document():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cited = [f"{path.relative_to(root)}:{line}" for package in ("engine", "sdft_tui")
             for path in sorted((root / package).rglob("*.py"))
             for line, text in _message_strings(path) if CITATION.search(text)]
    assert cited == []


def test_no_source_file_cites_a_document_users_do_not_have():
    """Comments and docstrings too: they cite docs/ (in the repository) or say the thing."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    internal = re.compile(r"\b(SPEC|DESIGN)(\.md)?\s*§|§\s*\d|/work/shared|\.\./shared/")
    cited = [f"{path.relative_to(root)}:{number}" for package in ("engine", "sdft_tui", "tests")
             for path in sorted((root / package).rglob("*.py")) if path != Path(__file__).resolve()
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if internal.search(line)]
    assert cited == []
