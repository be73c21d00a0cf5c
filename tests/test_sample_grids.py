"""Sample grids: each sampling point's grid of every prompt, and `sdft samples RUN_DIR`'s grid of
one prompt across the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.train.sample_grid import GAP, LABEL_HEIGHT, Cell, make_grid, prompt_samples

ROOT = Path(__file__).resolve().parents[1]


def _pixels(path_or_image):
    image = Image.open(path_or_image) if isinstance(path_or_image, (str, Path)) else path_or_image
    return np.asarray(image.convert("RGB"))


def _cell(grid, column: int, row: int, size: tuple[int, int], cell: tuple[int, int], top: int):
    """The picture of cell (column, row), centred in cells of ``cell`` = (width, height)."""
    x = GAP + column * (cell[0] + GAP) + (cell[0] - size[0]) // 2
    y = top + GAP + row * (cell[1] + LABEL_HEIGHT + GAP) + LABEL_HEIGHT
    return grid[y:y + size[1], x:x + size[0]]


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory, tiny_sd1):
    """A 2-step tiny run sampling two prompts (64x64 and 64x96) at steps 1 and 2."""
    folder = tmp_path_factory.mktemp("grids")
    sink = _train(folder, tiny_sd1, 2, '[sample]\nevery_n_steps = 1\nsteps = 2\n'
                  'prompts = ["a red cat --w 64 --h 64 --d 1", "ein Hund, 犬 --w 64 --h 96 --d 2"]\n')
    return folder / "runs" / "t", sink


def _train(folder, model, steps: int, extra: str):
    """A tiny run with ``extra`` tables appended, trained to completion; its event sink."""
    from train_helpers import make_run

    from engine.events import ListSink
    from engine.runner import run_training

    path = make_run(folder, model, steps=steps)
    path.write_text(path.read_text() + "\n" + extra)
    sink = ListSink()
    result = run_training(path, sink=sink)
    assert result.status == "completed", result.message
    return sink


def test_each_sampling_point_writes_a_grid_of_its_prompts(sampled_run):
    from engine.events import SampleGridSaved, SampleSaved

    run_dir, sink = sampled_run
    kinds = [(e.kind, e.step) for e in sink.events if isinstance(e, (SampleSaved, SampleGridSaved))]
    assert kinds == [("sample", 1), ("sample", 1), ("sample_grid", 1), ("sample", 2), ("sample", 2), ("sample_grid", 2)]
    grids = sink.of(SampleGridSaved)
    assert [Path(g.path).name for g in grids] == ["t_s00000001_grid.png", "t_s00000002_grid.png"]
    assert [g.count for g in grids] == [2, 2] and all(Path(g.path).parent == run_dir / "samples" for g in grids)
    samples = sink.of(SampleSaved)
    grid = _pixels(grids[1].path)
    top = LABEL_HEIGHT + GAP                                  # the "step 2" title
    assert grid.shape == (top + GAP + 96 + LABEL_HEIGHT + GAP, GAP + 2 * (64 + GAP), 3)
    assert np.array_equal(_cell(grid, 0, 0, (64, 64), (64, 96), top), _pixels(samples[2].path))
    assert np.array_equal(_cell(grid, 1, 0, (64, 96), (64, 96), top), _pixels(samples[3].path))
    logged = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["path"] for e in logged if e["event"] == "sample_grid"] == [g.path for g in grids]


def test_sdft_samples_puts_one_prompt_across_the_run(sampled_run, capsys):
    from engine.cli import main
    from engine.events import SampleSaved

    run_dir, sink = sampled_run
    second = [s for s in sink.of(SampleSaved) if s.index == 1]
    out = run_dir.parent / "dog.png"
    assert main(["samples", str(run_dir), "--prompt", "2", "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    grid = _pixels(out)
    top = LABEL_HEIGHT + GAP
    for column, sample in enumerate(second):                 # steps 1 and 2, left to right
        assert np.array_equal(_cell(grid, column, 0, (64, 96), (64, 96), top), _pixels(sample.path))
    assert main(["samples", str(run_dir)]) == 0             # prompt 1, to the default place
    default = run_dir / "samples" / "prompt01_across_steps.png"
    first = [s for s in sink.of(SampleSaved) if s.index == 0]
    assert np.array_equal(_cell(_pixels(default), 0, 0, (64, 64), (64, 64), top), _pixels(first[0].path))
    assert main(["samples", str(run_dir), "--prompt", "2", "--columns", "1", "-o", str(out)]) == 0
    assert _pixels(out).shape[:2] == (top + GAP + 2 * (96 + LABEL_HEIGHT + GAP), GAP + 64 + GAP)


def test_sdft_samples_says_what_is_wrong(sampled_run, tmp_path, capsys):
    from engine.cli import main

    run_dir, _sink = sampled_run
    assert main(["samples", str(run_dir), "--prompt", "3"]) == 1
    assert "has no images of prompt 3 (prompts with images: 1, 2)" in capsys.readouterr().err
    assert main(["samples", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["samples", str(run_dir), "--prompt", "0"]) == 2


def test_images_deleted_since_are_skipped_and_named(tmp_path):
    """Read from events.jsonl (a resumed run's repeated step: the newest image), then from the
    file names when the run has no log."""
    samples = tmp_path / "samples"
    samples.mkdir()
    events = []
    for step, shade in ((10, 40), (20, 120), (20, 200), (30, 250)):
        path = samples / f"t_s{step:08d}_00.png"
        Image.new("RGB", (64, 64), (shade, 0, 0)).save(path)
        events.append({"event": "sample", "time": 0, "path": str(path), "prompt": "a cat", "step": step, "index": 0})
    (samples / "t_s00000030_00.png").unlink()
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + '\n{"event": "sam')
    found = prompt_samples(tmp_path, 0)
    assert [step for step, _ in found.steps] == [10, 20] and found.prompt == "a cat"
    assert found.missing == [samples / "t_s00000030_00.png"]
    (tmp_path / "events.jsonl").unlink()
    assert [step for step, _ in prompt_samples(tmp_path, 0).steps] == [10, 20]
    assert prompt_samples(tmp_path, 1).steps == [] and prompt_samples(tmp_path, 1).prompts_seen == [0]


def test_labels_are_plain_text_cut_to_the_cell(tmp_path):
    Image.new("RGB", (64, 64), (0, 0, 200)).save(tmp_path / "a.png")
    long = "[bold]not markup[/bold] 猫 " + "very long prompt " * 20
    grid = make_grid([Cell(tmp_path / "a.png", long), Cell(tmp_path / "a.png", "")], title=long)
    assert grid.size == (GAP + 2 * (64 + GAP), LABEL_HEIGHT + GAP + GAP + 64 + LABEL_HEIGHT + GAP)
    label = _pixels(grid)[LABEL_HEIGHT + GAP + GAP:LABEL_HEIGHT * 2 + GAP * 2, GAP:GAP + 64]
    assert label.max() > 100                                  # the label was drawn
    with pytest.raises(ValueError, match="at least one image"):
        make_grid([])


def test_sdft_samples_loads_no_torch(sampled_run):
    run_dir, _sink = sampled_run
    code = ("import sys; from engine.cli import main; "
            f"code = main(['samples', {str(run_dir)!r}]); "
            "assert code == 0, code; assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_samples_decode_with_a_vae_dtype_other_than_the_unets(tmp_path, tiny_sd1):
    # memory.vae_dtype = "bf16" beside a float32 U-Net and no autocast (a CPU run without mixed
    # precision) stopped the run at its first sample with a dtype error; found by
    # tests/test_preflight_property.py
    from engine.events import SampleSaved

    sink = _train(tmp_path, tiny_sd1, 1, '[memory]\nvae_dtype = "bf16"\n\n[sample]\nevery_n_steps = 1\n'
                  'steps = 1\nprompts = ["a red cat --w 64 --h 64 --d 1"]\n')
    (saved,) = sink.of(SampleSaved)
    assert Image.open(saved.path).size == (64, 64)
