"""Sample prompt files in kohya's syntax (SPEC §5.5)."""

from __future__ import annotations

import json

import pytest

from engine.train.prompts import SamplePrompt, load_prompts, parse_prompt_line


def test_inline_options():
    p = parse_prompt_line("a cat, masterpiece --n blurry, lowres --w 515 --h 30 --d 7 --s 25 --l 5.5 --ss euler_a")
    assert p == SamplePrompt(prompt="a cat, masterpiece", negative="blurry, lowres", width=512, height=64,
                             seed=7, steps=25, scale=5.5, sampler="euler_a")


def test_defaults_comments_and_blank_lines():
    assert parse_prompt_line("# a comment") is None and parse_prompt_line("   ") is None
    p = parse_prompt_line("just a prompt", default_size=768)
    assert (p.width, p.height, p.seed, p.steps, p.scale, p.negative) == (768, 768, None, None, 7.5, "")


def test_bad_option_names_the_prompt():
    with pytest.raises(ValueError, match="bad option in sample prompt"):
        parse_prompt_line("a cat --w wide")


def test_files_in_every_format(tmp_path):
    (tmp_path / "p.txt").write_text("# samples\na cat --d 1\n\na dog --n ugly\n")
    (tmp_path / "p.toml").write_text('[[prompt]]\nprompt = "a cat"\nwidth = 640\nseed = 3\nsample_steps = 12\n')
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "a dog", "negative_prompt": "ugly", "scale": 6}]))
    txt = load_prompts("p.txt", base_dir=tmp_path)
    assert [p.prompt for p in txt] == ["a cat", "a dog"] and txt[1].negative == "ugly"
    toml = load_prompts("p.toml", base_dir=tmp_path)[0]
    assert (toml.prompt, toml.width, toml.seed, toml.steps) == ("a cat", 640, 3, 12)
    js = load_prompts(str(tmp_path / "p.json"))[0]
    assert (js.prompt, js.negative, js.scale) == ("a dog", "ugly", 6.0)
    assert load_prompts(["a cat --w 256"])[0].width == 256
    assert load_prompts(None) == []
    with pytest.raises(FileNotFoundError, match="sample.prompts"):
        load_prompts("missing.txt", base_dir=tmp_path)
