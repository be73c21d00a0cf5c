"""What the command line says when something is wrong: no placeholders, the near names, the way on."""

from __future__ import annotations

from train_helpers import make_run

from engine.cli import main
from engine.runlock import RunLock
from engine.vocabulary import ExitCode


def test_a_missing_run_file_names_no_placeholder_and_the_close_name(tmp_path, tiny_sd1, capsys, monkeypatch):
    make_run(tmp_path, tiny_sd1, name="photos-run.toml")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "photos-run.tom", "--check"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "photos-run.tom: error: file not found" in err and "<file>" not in err
    assert "did you mean photos-run.toml?" in err
    assert main(["photos-run.tom"]) == ExitCode.USAGE   # the wizard's file, too
    assert "did you mean photos-run.toml?" in capsys.readouterr().err
    assert main(["train", "elsewhere.toml", "--check"]) == ExitCode.USAGE   # nothing close: the usual hint
    assert "hint: check the path" in capsys.readouterr().err


def test_a_missing_metadata_file_gives_the_near_name_or_the_exact_command(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    text = config.read_text()
    config.write_text(text.replace('metadata_file = "meta.json"', 'metadata_file = "meta.jsn"'))
    assert main(["train", str(config), "--check"]) == ExitCode.USAGE
    assert f"did you mean {tmp_path / 'meta.json'}?" in capsys.readouterr().err
    config.write_text(text.replace('metadata_file = "meta.json"', 'metadata_file = "captions/all.json"'))
    assert main(["train", str(config), "--check"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"`sdft prepare {tmp_path / 'images'} --out {tmp_path / 'captions' / 'all.json'}`" in err


def test_a_wrong_resume_path_says_it_does_not_exist_and_lists_the_states(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    states = tmp_path / "runs" / "t" / "state"
    assert main(["train", str(config), "--check", "--resume", "runs/t/state/nope"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "runs/t/state/nope does not exist" in err and "has no saved state yet" in err
    for step in (2, 4):
        (states / f"t-step{step:08d}-state").mkdir(parents=True)
    assert main(["train", str(config), "--check", "--resume", "runs/t/state/t-step3-state"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "does not exist" in err and "not a state folder" not in err
    assert f"the run's states: {states / 't-step00000002-state'}, {states / 't-step00000004-state'}" in err


def test_a_busy_run_folder_has_its_own_exit_code(tmp_path, tiny_sd1, capsys):
    config = make_run(tmp_path, tiny_sd1)
    with RunLock(tmp_path / "runs" / "t", "sdft train"):
        assert main(["train", str(config)]) == ExitCode.BUSY == 4
    assert "is in use by sdft train" in capsys.readouterr().err


def test_labelling_a_run_file_names_its_folders_as_the_file_does(tmp_path, capsys, monkeypatch):
    """`sdft tag run.toml` names an image as the run file's image_dir does (relative, as every other
    message), not by its absolute path: a file that validates, one that does not yet (no metadata
    JSON before labelling) and one whose dataset tables are in a dataset_config."""
    from labeling_helpers import make_wd14_folder, solid_image

    from engine.labeling.cli import tag_command

    model = make_wd14_folder(tmp_path / "wd14", [0.9] * 12)
    solid_image(tmp_path / "photos" / "ok.png")
    (tmp_path / "photos" / "bad.png").write_bytes(b"not an image")
    subset = '[[datasets]]\n[[datasets.subsets]]\nimage_dir = "photos"\nmetadata_file = "meta.json"\n'
    (tmp_path / "run.toml").write_text(subset)                      # meta.json does not exist yet
    (tmp_path / "ds.toml").write_text(subset)
    (tmp_path / "via-dataset.toml").write_text('dataset_config = "ds.toml"\n')
    (tmp_path / "valid.json").write_text('{"ok.png": {"caption": "a red picture"}}')   # a file that validates
    (tmp_path / "valid.toml").write_text('[model]\npretrained_model_name_or_path = "model"\n\n'
                                         + subset.replace("meta.json", "valid.json"))
    monkeypatch.chdir(tmp_path)
    for run_file in ("run.toml", "via-dataset.toml", "valid.toml"):
        assert tag_command([run_file, "--model", str(model), "--overwrite"]) == ExitCode.FINDINGS
        out = capsys.readouterr().out
        assert "failed photos/bad.png:" in out, out
        assert str(tmp_path / "photos") not in out, out
