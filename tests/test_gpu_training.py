"""GPU-only checks (skipped without CUDA): fp16 with a scaler, bf16, xformers, 8-bit Adam, VRAM.

Run them when a GPU is lent: `pytest -m gpu -q`. Record what `sdft bench` measures in README.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from engine.config.run_toml import load_run_file
from engine.events import ListSink, StepMetrics
from engine.train.runner import run_training
from engine.train.trainer import Trainer
from train_helpers import make_run

pytestmark = pytest.mark.gpu


def gpu_run(tmp_path, model, memory: str = "", optimizer: str = "", steps: int = 3):
    path = make_run(tmp_path, model, steps=steps, optimizer_extra=optimizer)
    path.write_text(path.read_text() + f'\n[memory]\ndevice = "cuda"\n{memory}\n')
    return path


def test_fp16_mixed_precision_uses_a_grad_scaler(tmp_path, tiny_sd1):
    path = gpu_run(tmp_path, tiny_sd1, 'mixed_precision = "fp16"')
    config, _doc, _w = load_run_file(path)
    trainer = Trainer(config, config_text="", sink=ListSink())
    trainer.setup()
    assert trainer.parts.accelerator.scaler is not None
    assert next(trainer.parts.components.model.unet.parameters()).dtype == torch.float32  # fp32 master weights
    assert trainer.parts.components.model.text_encoder.dtype == torch.float16  # frozen parts in fp16
    sink = ListSink()
    result = run_training(path, sink=sink)
    assert result.status == "completed", result.message
    steps = sink.of(StepMetrics)
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in steps)
    assert steps[-1].vram_peak and steps[-1].vram_total and steps[-1].vram_peak < steps[-1].vram_total


def test_bf16_and_full_bf16(tmp_path, tiny_sd2):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    path = gpu_run(tmp_path, tiny_sd2, 'mixed_precision = "bf16"\nfull_bf16 = true\ngradient_checkpointing = true')
    result = run_training(path, sink=ListSink())
    assert result.status == "completed", result.message


def test_xformers_attention_is_installed_when_available(tmp_path, tiny_sd1):
    if importlib.util.find_spec("xformers") is None:
        pytest.skip("xformers is not installed")
    path = gpu_run(tmp_path, tiny_sd1, 'mixed_precision = "fp16"\nattention = "xformers"')
    config, _doc, _w = load_run_file(path)
    trainer = Trainer(config, config_text="", sink=ListSink())
    trainer.setup()
    names = {type(p).__name__ for p in trainer.parts.components.model.unet.attn_processors.values()}
    assert any("XFormers" in name for name in names), names
    assert run_training(path, sink=ListSink()).status == "completed"


def test_adamw8bit_on_cuda(tmp_path, tiny_sd1):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    path = gpu_run(tmp_path, tiny_sd1, 'mixed_precision = "bf16"', optimizer='type = "AdamW8bit"')
    config, _doc, _w = load_run_file(path)
    trainer = Trainer(config, config_text="", sink=ListSink())
    trainer.setup()
    assert "8bit" in type(trainer.parts.bundle.optimizer.optimizer).__name__
    assert run_training(path, sink=ListSink()).status == "completed"


def test_bench_reports_mfu_and_peak_memory(tmp_path, tiny_sd1):
    from engine.train.bench import run_bench

    figures = run_bench(gpu_run(tmp_path, tiny_sd1, 'mixed_precision = "bf16"'), steps=5, warmup=2)
    assert figures["peak_memory_bytes"] > 0 and figures["flops_per_sample"] > 0
