"""GPU-only checks (skipped without CUDA): fp16 with a scaler, bf16, xformers, 8-bit Adam, VRAM.

Run them when a GPU is lent: `pytest -m gpu -q`. Record what `sdft bench` measures in README.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from train_helpers import make_run

from engine.config.run_toml import load_run_file
from engine.events import ListSink, StepMetrics
from engine.runner import run_training
from engine.train.trainer import Trainer

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
    from engine.hardware import cuda_has_bf16

    if not cuda_has_bf16():
        pytest.skip("this GPU has no bf16 hardware")
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
    from engine.bench.speed import run_bench

    figures = run_bench(gpu_run(tmp_path, tiny_sd1, 'mixed_precision = "bf16"'), steps=5, warmup=2)
    assert figures["peak_memory_bytes"] > 0 and figures["flops_per_sample"] > 0


# ---------------------------------------------------------------- the hot path (docs/precision.md)


def _bf16_or_skip():
    from engine.hardware import cuda_has_bf16

    if not cuda_has_bf16():
        pytest.skip("this GPU has no bf16 hardware")


def test_steady_steps_make_no_host_sync_and_batches_arrive_pinned(tmp_path, tiny_sd1):
    _bf16_or_skip()
    path = gpu_run(tmp_path, tiny_sd1, 'mixed_precision = "bf16"\nfull_bf16 = true', steps=6)
    path.write_text(path.read_text().replace("[logging]\nevery_n_steps = 1", "[logging]\nevery_n_steps = 100"))
    config, _doc, _w = load_run_file(path)
    trainer = Trainer(config, config_text="", sink=ListSink())
    trainer.setup()
    pinned = []
    step = trainer.train_step

    def strict(batches):
        pinned.extend(b.latents.is_pinned() for b in batches)
        if trainer.global_step < 2:      # first steps: cuDNN autotuning and lazy inits may sync
            return step(batches)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer.train_step = strict
    trainer.loop(trainer.standard_hooks())
    assert trainer.global_step == 6 and all(pinned)


def test_fused_backward_on_a_gpu_tracks_the_unfused_run(tmp_path, tiny_sd1):
    _bf16_or_skip()
    runs = {}
    for fused in (False, True):
        path = gpu_run(tmp_path / str(fused), tiny_sd1, f'mixed_precision = "bf16"\nfused_backward_pass = {str(fused).lower()}',
                       optimizer="max_grad_norm = 0.0", steps=4)
        sink = ListSink()
        assert run_training(path, sink=sink).status == "completed"
        runs[fused] = torch.tensor([e.loss for e in sink.of(StepMetrics)])
    # the same arithmetic; GPU kernels may pick other reduction orders between runs
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-4, atol=1e-5)


def test_ema_offloaded_through_pinned_memory_equals_the_gpu_average():
    from engine.train.ema import EMA

    params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (1000, 5000)]
    on_gpu = EMA([(f"p{i}", p) for i, p in enumerate(params)], decay=0.9)
    offloaded = EMA([(f"p{i}", p) for i, p in enumerate(params)], decay=0.9, cpu_offload=True)
    assert offloaded.offloaded and all(s.is_pinned() for s in offloaded.shadow)
    for step in range(1, 5):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        on_gpu.update(step)
        offloaded.update(step)
    for a, b in zip(on_gpu.state_dict().values(), offloaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)


def test_a_skipped_fp16_step_leaves_the_learning_rate_schedule_where_it_was(tmp_path, tiny_sd1):
    path = gpu_run(tmp_path, tiny_sd1, 'mixed_precision = "fp16"',
                   optimizer='lr_scheduler = "linear"\nmax_grad_norm = 0.0', steps=4)
    config, _doc, _w = load_run_file(path)
    trainer = Trainer(config, config_text="", sink=ListSink())
    trainer.setup()
    compute = trainer.compute_loss

    def overflow_first(batch, generator):   # a finite loss whose fp16 gradients overflow
        loss = compute(batch, generator)
        return loss * 1e30 if trainer.global_step == 0 else loss

    trainer.compute_loss = overflow_first
    trainer.loop(trainer.standard_hooks())
    schedule = trainer.parts.bundle.lr_scheduler
    schedule.settle()
    assert schedule.skipped == 1 and schedule.scheduler.last_epoch == 3   # 4 steps, 1 skipped


def test_xformers_is_proven_by_a_real_call_and_reported(tmp_path, tiny_sd1):
    if importlib.util.find_spec("xformers") is None:
        pytest.skip("xformers is not installed")
    from engine.events import RunStarted
    from engine.train.components import prove_xformers

    prove_xformers(torch.device("cuda"))
    sink = ListSink()
    path = gpu_run(tmp_path, tiny_sd1, 'mixed_precision = "fp16"\nattention = "xformers"')
    assert run_training(path, sink=sink).status == "completed"
    assert sink.of(RunStarted)[0].attention == "xformers"
