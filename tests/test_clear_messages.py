"""Messages that say what to do: kohya's caption_extention beside a metadata file, a run file
that names itself as its dataset_config, a wrong-typed optimizer argument."""

from __future__ import annotations

from train_helpers import make_run

from engine.cli import main


def _check(config, capsys) -> tuple[int, str]:
    code = main(["train", str(config), "--check"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_caption_extention_is_said_to_be_not_needed_with_a_metadata_file(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    config.write_text(config.read_text().replace('metadata_file = "meta.json"',
                                                 'metadata_file = "meta.json"\n  caption_extention = ".txt"'))
    code, out = _check(config, capsys)
    assert code == 2
    assert "caption_extention is not needed with a metadata file" in out and "delete it" in out
    assert "build a metadata file" not in out and "rename it" not in out


def test_a_run_file_naming_itself_as_dataset_config_is_told_so(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    text = config.read_text()
    config.write_text(f'dataset_config = "{config.name}"\n' + text[:text.index("[general]")])
    code, out = _check(config, capsys)
    assert code == 2
    assert "dataset_config" in out and "names this run file itself" in out


def test_a_wrong_typed_optimizer_argument_is_named(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1, optimizer_extra='type = "AdamW"\nargs = { weight_decay = "0.01", '
                                                          'eps = 1e-8 }\n')
    code, out = _check(config, capsys)
    assert code == 2
    assert "optimizer.args.weight_decay" in out and "'0.01' (str)" in out and "without quotes" in out
    assert "optimizer.args.eps" not in out, "only the argument at fault is named"
