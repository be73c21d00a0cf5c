"""A diffusers folder sdft writes generates with ``StableDiffusionPipeline.from_pretrained(folder)``
alone: one dtype for every part, a tokenizer old stacks read, the source's scheduler class.

Covers ``sdft convert`` (single file and diffusers sources) and training's own diffusers saves.
Set SDFT_OLD_STACK_PYTHON to an interpreter with older diffusers/transformers (e.g. diffusers
0.32.1 + transformers 4.54.1) to also generate there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models_helpers import save_tiny_single  # noqa: E402

GENERATE = """
import json, sys
import numpy as np
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])
image = pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np").images
print(json.dumps({"shape": list(image.shape), "finite": bool(np.isfinite(image).all()),
                  "scheduler": type(pipe.scheduler).__name__,
                  "dtypes": sorted({str(m.dtype) for m in (pipe.unet, pipe.vae, pipe.text_encoder)})}))
"""


def pndm_source(folder: Path) -> Path:
    """A tiny diffusers model whose scheduler is PNDM, configured as SD 1.5 ships it."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from engine.models.tiny import TinySpec, build_tiny_components

    parts = build_tiny_components(TinySpec("sd1"))
    parts["scheduler"] = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False,
                                       steps_offset=1)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def pndm_folder(tmp_path_factory) -> Path:
    """One PNDM source for the module: convert and training only read it."""
    return pndm_source(tmp_path_factory.mktemp("pndm") / "src")


def generate(folder: Path):
    """Exactly the user's call: from_pretrained(folder) with no extra arguments, then a prompt."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    image = pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    assert len({m.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder)}) == 1
    return pipe


def stored_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    out = set()
    for part in ("unet", "vae", "text_encoder"):
        for file in (folder / part).glob("*.safetensors"):
            with safe_open(str(file), "pt") as f:
                out |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
        for file in (folder / part).glob("*.bin"):
            sd = torch.load(file, weights_only=True)
            out |= {str(v.dtype).replace("torch.", "").replace("float", "F").upper() for v in sd.values()
                    if torch.is_floating_point(v)}
    return out


def assert_tokenizer_for_old_stacks(folder: Path, tmp_path: Path) -> None:
    """vocab.json + merges.txt beside tokenizer.json, and they tokenize exactly as it does."""
    from transformers import CLIPTokenizer

    tok = folder / "tokenizer"
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in tok.iterdir()}
    slow_only = tmp_path / "slow-only"
    slow_only.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(tok / name, slow_only / name)
    texts = ["a photo of a cat, masterpiece", "ünïcødé 画像!!", "<|endoftext|> x"]
    assert (CLIPTokenizer.from_pretrained(str(slow_only))(texts)["input_ids"]
            == CLIPTokenizer.from_pretrained(str(tok))(texts)["input_ids"])


def old_stack_generates(folder: Path, scheduler: str) -> None:
    python = os.environ.get("SDFT_OLD_STACK_PYTHON")
    if not python:
        return
    out = subprocess.run([python, "-c", GENERATE, str(folder)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shape"] == [1, 64, 64, 3] and got["finite"] and got["scheduler"] == scheduler
    assert len(got["dtypes"]) == 1


def test_convert_fp16_single_file_generates(tmp_path):
    from engine.families.convert_cli import convert_command

    single = save_tiny_single(tmp_path / "m.safetensors", "sd1", precision="fp16")
    folder = tmp_path / "out"
    assert convert_command([str(single), str(folder)]) == 0
    assert stored_dtypes(folder) == {"F16"}                   # the source's dtype, every part
    pipe = generate(folder)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"   # a plain single file records none: SD's DDIM
    assert_tokenizer_for_old_stacks(folder, tmp_path)
    old_stack_generates(folder, "DDIMScheduler")


@pytest.mark.parametrize("precision,stored", [("fp16", "F16"), ("fp32", "F32")])
def test_convert_pndm_diffusers_source_keeps_its_scheduler(tmp_path, pndm_folder, precision, stored):
    from engine.families.convert_cli import convert_command

    source = pndm_folder
    folder = tmp_path / "out"
    assert convert_command([str(source), str(folder), "--precision", precision]) == 0
    assert stored_dtypes(folder) == {stored}
    pipe = generate(folder)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.scheduler.config.skip_prk_steps
    assert json.loads((folder / "model_index.json").read_text())["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert_tokenizer_for_old_stacks(folder, tmp_path)
    old_stack_generates(folder, "PNDMScheduler")


def test_scheduler_survives_a_single_file_in_between(tmp_path, pndm_folder):
    from engine.families.convert_cli import convert_command

    source = pndm_folder
    single = tmp_path / "mid.safetensors"
    assert convert_command([str(source), str(single)]) == 0
    folder = tmp_path / "out"
    assert convert_command([str(single), str(folder)]) == 0
    assert type(generate(folder).scheduler).__name__ == "PNDMScheduler"


def test_zero_terminal_snr_needs_a_scheduler_that_takes_it():
    from engine.models.save import inference_scheduler

    pndm = {"_class_name": "PNDMScheduler", "skip_prk_steps": True, "_diffusers_version": "0.1"}
    assert inference_scheduler(pndm, v2=False, v_parameterization=True) == {
        "_class_name": "PNDMScheduler", "skip_prk_steps": True, "prediction_type": "v_prediction"}
    # PNDM would ignore rescale_betas_zero_snr: SD's DDIM (None) takes it instead
    assert inference_scheduler(pndm, v2=False, v_parameterization=False,
                               overrides={"rescale_betas_zero_snr": True}) is None
    euler = {"_class_name": "EulerDiscreteScheduler"}
    assert inference_scheduler(euler, v2=False, v_parameterization=False,
                               overrides={"rescale_betas_zero_snr": True})["_class_name"] == "EulerDiscreteScheduler"


def test_training_diffusers_save_generates(tmp_path, pndm_folder):
    from train_helpers import make_run

    from engine.events import ListSink, ModelSaved
    from engine.runner import run_training

    source = pndm_folder
    config = make_run(tmp_path, source, steps=1, save_extra='format = "diffusers"')
    sink = ListSink()
    result = run_training(config, sink=sink)
    assert result.status == "completed", result.message
    folder = Path(sink.of(ModelSaved)[-1].path)
    assert (folder / "model_index.json").is_file()
    assert stored_dtypes(folder) == {"F16"}                   # save.precision = fp16 (the default)
    assert type(generate(folder).scheduler).__name__ == "PNDMScheduler"
    assert_tokenizer_for_old_stacks(folder, tmp_path)
    old_stack_generates(folder, "PNDMScheduler")
