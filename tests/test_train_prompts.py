"""Sample prompt files in kohya's syntax."""

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


def test_kohya_toml_form_with_defaults_and_subsets(tmp_path):
    (tmp_path / "p.toml").write_text(
        '[prompt]\nwidth = 320\nsample_steps = 9\nscale = 5\n\n'
        '[[prompt.subset]]\nprompt = "a cat"\n\n'
        '[[prompt.subset]]\nprompt = "a dog"\nwidth = 256\nsample_sampler = "k_euler_a"\n')
    cat, dog = load_prompts("p.toml", base_dir=tmp_path)
    assert (cat.prompt, cat.width, cat.steps, cat.scale, cat.sampler) == ("a cat", 320, 9, 5.0, None)
    assert (dog.prompt, dog.width, dog.steps, dog.sampler) == ("a dog", 256, 9, "euler_a")


def test_json_may_list_prompt_lines(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(["a cat --w 256", {"prompt": "a dog"}]))
    assert [(p.prompt, p.width) for p in load_prompts("p.json", base_dir=tmp_path, default_size=320)] == [
        ("a cat", 256), ("a dog", 320)]


@pytest.mark.parametrize("name, text, line, match", [
    ("p.txt", "a cat\n# note\na dog --ss dpm_fast\n", 3, "unknown sampler 'dpm_fast'"),
    ("p.txt", "a cat --zz 3\n", 1, "unknown option --zz"),
    ("p.txt", "a cat --cn hint.png\n", 1, "ControlNet image"),
    ("p.toml", '[[prompt]]\nprompt = "a"\n\n[[prompt]]\nprompt = "b"\nsample_sampler = "dpm_fast"\n', 4, "unknown sampler"),
    ("p.toml", '[prompt]\nscale = 5\n[[prompt.subset]]\nprompt = "a"\nguidance = 3\n', 3, "unknown key 'guidance'"),
])
def test_what_sampling_would_not_use_names_file_and_line(tmp_path, name, text, line, match):
    from engine.train.prompts import PromptError

    (tmp_path / name).write_text(text)
    with pytest.raises(PromptError, match=match) as info:
        load_prompts(name, base_dir=tmp_path)
    assert info.value.line == line and info.value.path.endswith(name)


def test_unknown_sampler_in_json_and_inline_lists(tmp_path):
    from engine.train.prompts import PromptError

    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "a"}, {"prompt": "b", "sample_sampler": "dpm_fast"}]))
    with pytest.raises(PromptError, match="prompt 2: unknown sampler 'dpm_fast'"):
        load_prompts("p.json", base_dir=tmp_path)
    with pytest.raises(PromptError, match=r"sample.prompts\[1\]: unknown sampler"):
        load_prompts(["a cat", "a dog --ss nope"])
    assert load_prompts(["a cat --SS Euler --W 256"])[0].sampler == "euler"


@pytest.mark.parametrize("option, value, field, expected", [
    ("n", "ugly, blurry", "negative", "ugly, blurry"),
    ("w", "320", "width", 320),
    ("h", "200", "height", 200),
    ("d", "1234", "seed", 1234),
    ("s", "12", "steps", 12),
    ("l", "4.5", "scale", 4.5),
    ("ss", "k_dpm_2_a", "sampler", "dpm_2_a"),
])
@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_each_line_option_in_either_case(option, value, field, expected, case):
    """kohya matches the option names with re.IGNORECASE: --W 512 is --w 512."""
    p = parse_prompt_line(f"a cat --{case(option)} {value}")
    assert p.prompt == "a cat" and getattr(p, field) == expected
    assert getattr(parse_prompt_line("a cat"), field) != expected   # the option made the difference


def test_steps_are_clamped_as_kohya_clamps_them():
    assert parse_prompt_line("a --s 5000").steps == 1000
    assert parse_prompt_line("a --s 0").steps == 1


def test_repeated_option_last_wins_and_text_stays_whole():
    p = parse_prompt_line("a cat, 1girl --n low quality, bad hands --w 256 --w 320")
    assert (p.prompt, p.negative, p.width) == ("a cat, 1girl", "low quality, bad hands", 320)


@pytest.mark.parametrize("line, match", [
    ("a cat --zz 3", "unknown option --zz"),
    ("a cat --w512", "unknown option --w512"),
    ("a cat -- w 512", "' --' with no option name"),
    ("a cat --G 3.5", r"--G \(guidance scale \(FLUX\)\) does not apply"),
    ("a cat --fs 3", "flow shift"),
    ("a cat --ctr 0.5", "CFG truncation"),
    ("a cat --rcfg 1", "renormalised CFG"),
    ("a cat --w", "--w needs a value"),
    ("a cat --ss", "--ss needs a value"),
])
def test_unknown_or_foreign_options_are_errors_with_the_line(tmp_path, line, match):
    from engine.train.prompts import PromptError

    (tmp_path / "p.txt").write_text(f"# header\n\nfine --w 256\n{line}\n")
    with pytest.raises(PromptError, match=match) as info:
        load_prompts("p.txt", base_dir=tmp_path)
    assert info.value.line == 4 and info.value.path.endswith("p.txt")
    assert str(info.value).startswith(str(tmp_path / "p.txt") + ":4: ")


def test_json_problems_name_the_line_of_the_prompt(tmp_path):
    from engine.train.prompts import PromptError

    (tmp_path / "p.json").write_text('[\n  "a cat --W 256",\n  {"prompt": "a dog"},\n\n  "a bird --Q 1"\n]\n')
    with pytest.raises(PromptError, match="prompt 3: unknown option --Q") as info:
        load_prompts("p.json", base_dir=tmp_path)
    assert info.value.line == 5
    (tmp_path / "p.json").write_text('[{"prompt": "a"},\n {"prompt": "b",\n  "guidance_scale": 3}]')
    with pytest.raises(PromptError, match="'guidance_scale' \\(guidance scale \\(FLUX\\)\\) does not apply") as info:
        load_prompts("p.json", base_dir=tmp_path)
    assert info.value.line == 2


def test_toml_prompt_tables_refuse_other_families_keys(tmp_path):
    from engine.train.prompts import PromptError

    (tmp_path / "p.toml").write_text('[[prompt]]\nprompt = "a"\n\n[[prompt]]\nprompt = "b"\nflow_shift = 3.0\n')
    with pytest.raises(PromptError, match="'flow_shift' \\(flow shift") as info:
        load_prompts("p.toml", base_dir=tmp_path)
    assert info.value.line == 4


def test_every_sampler_spelling_is_taken_in_prompt_files(tmp_path):
    from engine.registry.samplers import ACCEPTED_NAMES, canonical_name

    (tmp_path / "p.toml").write_text("".join(
        f'[[prompt]]\nprompt = "p{i}"\nsample_sampler = "{name.upper()}"\n' for i, name in enumerate(ACCEPTED_NAMES)))
    got = [p.sampler for p in load_prompts("p.toml", base_dir=tmp_path)]
    assert got == [canonical_name(n) for n in ACCEPTED_NAMES] and None not in got
