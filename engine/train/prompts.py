"""Sample-prompt files in kohya's syntax (SPEC §5.5), parsed without torch.

``.txt``: one prompt per line, ``#`` comments, inline options ``--n`` negative, ``--w``/``--h``
size (floored to a multiple of 8, at least 64), ``--d`` seed, ``--s`` steps, ``--l`` CFG scale,
``--ss`` sampler. ``.toml`` (``[[prompt]]`` tables) and ``.json`` (a list of objects) use
the keys prompt, negative_prompt, width, height, seed, sample_steps, scale, sample_sampler.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int | None = None
    steps: int | None = None
    scale: float = 7.5
    sampler: str | None = None


_OPTION = re.compile(r"\s--(n|w|h|d|s|l|ss)\s+")


def _size(value) -> int:
    return max(64, int(value) // 8 * 8)


def parse_prompt_line(line: str, default_size: int = 512) -> SamplePrompt | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = _OPTION.split(" " + line)
    fields = {"prompt": parts[0].strip()}
    for key, value in zip(parts[1::2], parts[2::2]):
        fields[key] = value.strip()
    try:
        return SamplePrompt(
            prompt=fields["prompt"],
            negative=fields.get("n", ""),
            width=_size(fields.get("w", default_size)),
            height=_size(fields.get("h", default_size)),
            seed=int(fields["d"]) if "d" in fields else None,
            steps=int(fields["s"]) if "s" in fields else None,
            scale=float(fields.get("l", 7.5)),
            sampler=fields.get("ss"),
        )
    except ValueError as exc:
        raise ValueError(f"bad option in sample prompt {line!r}: {exc}") from None


def _from_mapping(item: dict, default_size: int) -> SamplePrompt:
    return SamplePrompt(
        prompt=str(item.get("prompt", "")),
        negative=str(item.get("negative_prompt", "")),
        width=_size(item.get("width", default_size)),
        height=_size(item.get("height", default_size)),
        seed=item.get("seed"),
        steps=item.get("sample_steps"),
        scale=float(item.get("scale", 7.5)),
        sampler=item.get("sample_sampler"),
    )


def load_prompts(source, *, base_dir: str | Path = ".", default_size: int = 512) -> list[SamplePrompt]:
    """Prompts from a file path or an inline list of kohya-style prompt lines."""
    if source is None:
        return []
    if isinstance(source, list):
        return [p for p in (parse_prompt_line(str(line), default_size) for line in source) if p]
    path = Path(source)
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise FileNotFoundError(f"sample.prompts: {path} does not exist; give a .txt/.toml/.json file or a list")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        return [_from_mapping(item, default_size) for item in json.loads(text)]
    if path.suffix == ".toml":
        import tomlkit

        return [_from_mapping(dict(item), default_size) for item in tomlkit.parse(text).unwrap().get("prompt", [])]
    return [p for p in (parse_prompt_line(line, default_size) for line in text.splitlines()) if p]
