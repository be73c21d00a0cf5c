"""CI runs README's test command (the quick tier) and then README's slow tier: together they must
be the whole suite, each test in exactly one of them, with the same pytest options."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_command():
    spec = importlib.util.spec_from_file_location("readme_command", ROOT / ".ci" / "readme_command.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.readme_block


def pytest_arguments(command: str) -> list[str]:
    """The arguments after ``python -m pytest`` in the last part of a ``&&`` chain."""
    words = shlex.split(command.split("&&")[-1])
    start = words.index("pytest") + 1
    return words[start:]


def marker_expression(arguments: list[str]) -> tuple[str, list[str]]:
    index = arguments.index("-m")
    return arguments[index + 1], arguments[:index] + arguments[index + 2:]


def test_the_quick_tier_and_the_slow_tier_split_the_suite_by_the_slow_marker():
    readme_block = _readme_command()
    quick, rest_quick = marker_expression(pytest_arguments(readme_block("## Quick start", 2, 1)))
    slow, rest_slow = marker_expression(pytest_arguments(readme_block("### Tests", 1, 0)))
    assert (quick, slow) == ("not slow", "slow")
    assert rest_quick == rest_slow                  # same workers, same output: only the tier differs
    configured = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"slow: ' in configured                  # a registered marker, so a typo is an error


def test_the_block_reader_names_a_missing_heading_or_a_wrong_count():
    readme_block = _readme_command()
    text = "# T\n\n## A\n\n```sh\none\n```\n\n### B\n\n```sh\ntwo\n```\n\n## C\n\n```sh\nthree\n```\n"
    assert readme_block("## A", 2, 1, text) == "two"       # a subsection belongs to its section
    assert readme_block("### B", 1, 0, text) == "two"      # ... and ends at the next section
    with pytest.raises(SystemExit, match="exactly 1 sh blocks, found 2"):
        readme_block("## A", 1, 0, text)
    with pytest.raises(SystemExit, match="no heading '## D'"):
        readme_block("## D", 1, 0, text)
