"""Sample-prompt files in kohya's syntax, parsed without torch.

``.txt``: one prompt per line, ``#`` comments, options after `` --`` as kohya's
``line_to_prompt_dict`` reads them, the option names in any case (``--W 512``): ``--n`` negative,
``--w``/``--h`` size (floored to a multiple of 8, at least 64), ``--d`` seed, ``--s`` steps (1 to
1000), ``--l`` CFG scale, ``--ss`` sampler. ``.json``: a list of objects (or of such lines).
``.toml``: ``[[prompt]]`` tables, or kohya's form, a ``[prompt]`` table of defaults with
``[[prompt.subset]]`` tables (a subset's keys win). Objects use the keys prompt,
negative_prompt, width, height, seed, sample_steps, scale, sample_sampler.

Anything sdft would not use (an unknown option or key, an unknown sampler, kohya's options for
other model families) is a :class:`PromptError` naming the file and line, so
``sdft train --check`` catches it where kohya would silently drop it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.registry.samplers import sampler_entry as _sampler_entry

# kohya options for other model families or ControlNet: kohya's parser takes them (and its
# prompt tables their keys); SD 1.x/2.x sampling has no use for them.
_KOHYA_ONLY = {"g": "guidance scale (FLUX)", "cn": "ControlNet image", "ctr": "CFG truncation (Lumina)",
               "rcfg": "renormalised CFG (Lumina)", "fs": "flow shift (SD3/FLUX)", "am": "network multiplier"}
_KOHYA_ONLY_KEYS = {"guidance_scale": "g", "controlnet_image": "cn", "cfg_trunc_ratio": "ctr",
                    "renorm_cfg": "rcfg", "flow_shift": "fs"}
LINE_OPTIONS = ("n", "w", "h", "d", "s", "l", "ss")
MAPPING_KEYS = ("prompt", "negative_prompt", "width", "height", "seed", "sample_steps", "scale",
                "sample_sampler", "enum")
MAX_STEPS = 1000   # kohya clamps a line's --s to 1..1000


class PromptError(ValueError):
    """A sample prompt sdft cannot use as written; ``line`` is 1-based when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path, self.line, self.reason = path, line, message
        where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
        super().__init__(where + message)


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


def _size(value) -> int:
    return max(64, int(value) // 8 * 8)


def sampler_name(value) -> str | None:
    """A prompt's sampler in sdft's spelling; PromptError when sdft has no such sampler."""
    if value is None:
        return None
    try:
        return _sampler_entry(value).name
    except ValueError as exc:
        raise PromptError(str(exc)) from None


def _line_options(line: str) -> tuple[str, dict[str, str]]:
    """The prompt and its options by lower-case name, split as kohya splits (on " --")."""
    prompt, *segments = line.split(" --")
    options: dict[str, str] = {}
    for segment in segments:
        name, _, value = segment.partition(" ")   # kohya: the name right after "--"
        key = name.lower()
        if key in _KOHYA_ONLY:
            raise PromptError(f"option --{name} ({_KOHYA_ONLY[key]}) does not apply to SD 1.x/2.x sampling; remove it")
        if key not in LINE_OPTIONS:
            shown = f"--{name}" if name else "' --' with no option name"
            raise PromptError(f"unknown option {shown}; options: {' '.join('--' + o for o in LINE_OPTIONS)}")
        if not value.strip() and key != "n":
            raise PromptError(f"option --{name} needs a value, as in --{name} {_EXAMPLES[key]}")
        options[key] = value.strip()     # a repeated option: the last one wins, as in kohya
    return prompt.strip(), options


_EXAMPLES = {"w": "512", "h": "512", "d": "42", "s": "28", "l": "7.5", "ss": "euler_a"}


def parse_prompt_line(line: str, default_size: int = 512) -> SamplePrompt | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    prompt, options = _line_options(line)
    try:
        return SamplePrompt(
            prompt=prompt,
            negative=options.get("n", ""),
            width=_size(options.get("w", default_size)),
            height=_size(options.get("h", default_size)),
            seed=int(options["d"]) if "d" in options else None,
            steps=max(1, min(MAX_STEPS, int(options["s"]))) if "s" in options else None,
            scale=float(options.get("l", 7.5)),
            sampler=sampler_name(options.get("ss")),
        )
    except PromptError:
        raise
    except ValueError as exc:
        raise PromptError(f"bad option in sample prompt {line!r}: {exc}") from None


def _from_mapping(item, default_size: int) -> SamplePrompt:
    if isinstance(item, str):      # kohya's JSON may list prompt lines
        prompt = parse_prompt_line(item, default_size)
        if prompt is None:
            raise PromptError("an empty prompt")
        return prompt
    if not isinstance(item, dict):
        raise PromptError(f"a prompt must be a table or a string, got {item!r}")
    unknown = [k for k in item if k not in MAPPING_KEYS and k != "subset"]
    for key in unknown:
        if key in _KOHYA_ONLY_KEYS:
            what = _KOHYA_ONLY[_KOHYA_ONLY_KEYS[key]]
            raise PromptError(f"key {key!r} ({what}) does not apply to SD 1.x/2.x sampling; remove it")
    if unknown:
        raise PromptError(f"unknown key {unknown[0]!r}; keys: {', '.join(MAPPING_KEYS[:-1])}")
    if not str(item.get("prompt", "")).strip():
        raise PromptError("a prompt table without prompt = \"...\"")
    try:
        steps = item.get("sample_steps")
        return SamplePrompt(
            prompt=str(item["prompt"]),
            negative=str(item.get("negative_prompt", "")),
            width=_size(item.get("width", default_size)),
            height=_size(item.get("height", default_size)),
            seed=int(item["seed"]) if item.get("seed") is not None else None,
            steps=max(1, int(steps)) if steps is not None else None,
            scale=float(item.get("scale", 7.5)),
            sampler=sampler_name(item.get("sample_sampler")),
        )
    except PromptError:
        raise
    except (TypeError, ValueError) as exc:
        raise PromptError(f"bad value in prompt {item.get('prompt')!r}: {exc}") from None


def _toml_prompts(text: str) -> list[tuple[dict, str]]:
    """(prompt table, dotted key for its line) from either TOML form."""
    import tomlkit

    data = tomlkit.parse(text).unwrap().get("prompt", [])
    if isinstance(data, list):
        return [(item, f"prompt[{i}]") for i, item in enumerate(data)]
    if not isinstance(data, dict):
        raise PromptError("prompt must be [[prompt]] tables or a [prompt] table with [[prompt.subset]] tables")
    defaults = {k: v for k, v in data.items() if k != "subset"}
    subsets = data.get("subset", [])
    if not isinstance(subsets, list):
        raise PromptError("prompt.subset must be [[prompt.subset]] tables")
    return [({**defaults, **sub} if isinstance(sub, dict) else sub, f"prompt.subset[{i}]")
            for i, sub in enumerate(subsets)]


def _json_items(text: str) -> list[tuple[object, int]] | None:
    """The items of a JSON list with the line each starts on; None when the text is no list."""
    data = json.loads(text)      # first: a malformed file is reported with json's own line
    if not isinstance(data, list):
        return None
    decoder, items = json.JSONDecoder(), []
    at = text.index("[") + 1
    for _ in data:
        while text[at] in " \t\r\n,":
            at += 1
        item, end = decoder.raw_decode(text, at)
        items.append((item, text.count("\n", 0, at) + 1))
        at = end
    return items


def _read_file(path: Path, default_size: int) -> list[SamplePrompt]:
    from engine.user_files import FileRefused, read_text

    try:
        text = read_text(path, "prompts file")
    except FileRefused as exc:
        raise PromptError(f"the file {exc.reason} ({exc.hint})", path=str(path)) from None
    out: list[SamplePrompt] = []
    if path.suffix.lower() == ".json":
        try:
            items = _json_items(text)
        except json.JSONDecodeError as exc:
            raise PromptError(f"not valid JSON: {exc.msg}", path=str(path), line=exc.lineno) from None
        if items is None:
            raise PromptError("a JSON prompts file holds a list of prompts", path=str(path), line=1)
        for index, (item, line) in enumerate(items):
            try:
                out.append(_from_mapping(item, default_size))
            except PromptError as exc:
                raise PromptError(f"prompt {index + 1}: {exc.reason}", path=str(path), line=line) from None
        return out
    if path.suffix.lower() == ".toml":
        from engine.config.lines import key_lines

        try:
            tables = _toml_prompts(text)
        except PromptError as exc:
            raise PromptError(exc.reason, path=str(path)) from None
        except Exception as exc:  # tomlkit raises several ParseError kinds
            raise PromptError(f"not valid TOML: {exc}", path=str(path), line=getattr(exc, "line", None)) from None
        lines = key_lines(text)
        for item, key in tables:
            try:
                out.append(_from_mapping(item, default_size))
            except PromptError as exc:
                raise PromptError(exc.reason, path=str(path), line=lines.get(key)) from None
        return out
    for number, raw in enumerate(text.splitlines(), start=1):
        try:
            prompt = parse_prompt_line(raw, default_size)
        except PromptError as exc:
            raise PromptError(exc.reason, path=str(path), line=number) from None
        if prompt:
            out.append(prompt)
    return out


def load_prompts(source, *, base_dir: str | Path = ".", default_size: int = 512) -> list[SamplePrompt]:
    """Prompts from a file path or an inline list of kohya-style prompt lines.

    Raises FileNotFoundError for a missing file and PromptError for a prompt sdft cannot use.
    """
    if source is None:
        return []
    if isinstance(source, list):
        out = []
        for index, line in enumerate(source):
            try:
                prompt = parse_prompt_line(str(line), default_size)
            except PromptError as exc:
                raise PromptError(f"sample.prompts[{index}]: {exc.reason}") from None
            if prompt:
                out.append(prompt)
        return out
    path = Path(source)
    if not path.is_absolute() and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path   # beside the run file first, then as given (like other paths)
    if not path.is_file():
        raise FileNotFoundError(f"sample.prompts: {path} does not exist; give a .txt/.toml/.json file or a list")
    return _read_file(path, default_size)
