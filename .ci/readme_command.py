"""Print one ```sh block of README.md: the commands CI runs are read from README itself so the
two can never drift apart.

    python3 .ci/readme_command.py "## Quick start" 2 1

prints the second (index 1) of exactly 2 sh blocks in the part of README.md that starts at the
heading "## Quick start" and ends at the next heading of its level or above.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str, count: int, index: int, text: str | None = None) -> str:
    text = README.read_text(encoding="utf-8") if text is None else text
    if "\n" + heading + "\n" not in text:
        raise SystemExit(f"README.md has no heading {heading!r}")
    after = text.split("\n" + heading + "\n", 1)[1]
    depth = len(heading.split(" ", 1)[0])
    section = re.split(r"\n#{1,%d} " % depth, after, maxsplit=1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    if len(blocks) != count:
        raise SystemExit(f"README's {heading!r} must hold exactly {count} sh blocks, found {len(blocks)}")
    return blocks[index].strip()


if __name__ == "__main__":
    print(readme_block(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
