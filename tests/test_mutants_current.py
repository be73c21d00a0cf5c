"""The on-demand mutation check (tests/mutants.py, docs/testing.md) stays current: each mutant's
line is still in its file exactly once, and each test it names exists, so a refactor that moves
the code shows up in CI instead of as a "stale" mutant the next time someone runs the check."""

from __future__ import annotations

from pathlib import Path

import pytest
from mutants import MUTANTS, ROOT


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_still_finds_its_line_and_its_tests(mutant):
    text = (ROOT / mutant.file).read_text(encoding="utf-8")
    assert text.count(mutant.old) == 1, f"{mutant.name}: its line is no longer in {mutant.file} exactly once"
    for test in mutant.tests:
        path, _, name = test.partition("::")
        assert (ROOT / path).is_file(), f"{mutant.name}: {path} is gone"
        if name:
            assert f"def {name.split('[')[0]}(" in Path(ROOT / path).read_text(encoding="utf-8"), \
                f"{mutant.name}: {test} is gone"
