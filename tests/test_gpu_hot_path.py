"""The training step as it runs on a GPU, checked on the CPU where the logic is the same
(docs/precision.md): no host read per step, noise drawn on the training device, the LR schedule
skipping what fp16's scaler skipped, the EMA's foreach update, previews decoded outside autocast,
bf16 only on hardware that has it, and the attention that actually ran."""

from __future__ import annotations

import threading
import types

import pytest
import torch
from train_helpers import make_run

from engine.config.run_toml import load_run_file
from engine.events import ListSink, RunStarted
from engine.runner import run_training
from engine.train.lr_steps import ScheduleOnTakenSteps
from engine.train.trainer import Trainer
from engine.train.weight_update import AllAtOnce

HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


def test_a_training_step_outside_the_logging_interval_reads_nothing_back_to_the_host(tmp_path, tiny_sd1, monkeypatch):
    # On a GPU each such read stalls the CPU until the GPU catches up; here the same code is watched
    # on the training thread (the loader thread may read: it is not the GPU's stream).
    noise = ("noise_offset = 0.1\nadaptive_noise_scale = 0.01\nnoise_offset_random_strength = true\n"
             "ip_noise_gamma = 0.1\nip_noise_gamma_random_strength = true\n")
    path = make_run(tmp_path, tiny_sd1, steps=4, train_extra=noise, optimizer_extra="max_grad_norm = 1.0")
    path.write_text(path.read_text().replace("[logging]\nevery_n_steps = 1", "[logging]\nevery_n_steps = 100")
                    + '\n[memory]\nmixed_precision = "bf16"\nfull_bf16 = true\n')
    config, _doc, _warnings = load_run_file(path)
    trainer = Trainer(config, config_text="", sink=ListSink())
    trainer.setup()
    reads, watching = [], threading.local()
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if getattr(watching, "on", False):
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    step, figures_if_due = trainer.train_step, trainer._figures_if_due

    def watched(batches):   # the step and then its hooks are watched ...
        watching.on = True
        step(batches)

    def figures():          # ... except on a logging step, which reads the interval's loss
        if trainer.is_logging_step:   # steps 1 and 4 of the 4
            watching.on = False
        return figures_if_due()

    trainer.train_step, trainer._figures_if_due = watched, figures
    trainer.loop(trainer.standard_hooks())
    watching.on = False
    assert trainer.global_step == 4 and reads == []


def test_noise_and_timesteps_come_from_a_generator_on_the_training_device(tmp_path, tiny_sd1):
    config, _doc, _warnings = load_run_file(make_run(tmp_path, tiny_sd1, steps=1))
    trainer = Trainer(config, config_text="", sink=ListSink())
    trainer.setup()
    generator = trainer.step_generator(0)
    assert generator.device == trainer.parts.device
    again = trainer.step_generator(0)
    assert torch.equal(torch.randn(4, generator=generator), torch.randn(4, generator=again))


class _Scheduler:
    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1

    def get_last_lr(self):
        return [float(self.steps)]


def test_the_schedule_advances_only_on_taken_steps_and_reads_the_flags_late():
    schedule = ScheduleOnTakenSteps(_Scheduler())
    for skipped in (True, False, None):
        schedule.step_after(types.SimpleNamespace(skipped=None if skipped is None else torch.tensor(skipped)))
    assert schedule.scheduler.steps == 0 and len(schedule.pending) == 3    # nothing read yet
    assert schedule.get_last_lr() == [2.0] and schedule.skipped == 1        # reading it settles first
    schedule.step_after(types.SimpleNamespace(skipped=None))
    assert schedule.scheduler.steps == 3 and not schedule.pending


def test_a_step_the_gradient_scaler_skips_leaves_the_schedule_where_it_was():
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    schedule = ScheduleOnTakenSteps(lr_schedule)

    class Scaled:   # what accelerate's optimizer does with a scaler
        param_groups = optimizer.param_groups

        def step(self):
            scaler.step(optimizer)
            scaler.update()

    update = AllAtOnce(Scaled(), [param], scaler=scaler)
    for grad in (float("inf"), 1.0, 1.0):
        scaler.scale(param.sum() * 0).backward()      # gives the scaler its state
        param.grad = torch.full_like(param, grad) * scaler.get_scale()
        schedule.settle()
        schedule.step_after(update.finish())
        optimizer.zero_grad(set_to_none=True)
    schedule.settle()
    assert schedule.skipped == 1 and lr_schedule.last_epoch == 2     # two taken steps, one skipped


def test_the_ema_foreach_update_equals_the_per_tensor_one():
    from engine.train.ema import EMA

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n)) for n in (10, 300, 7)]
    ema = EMA([(f"p{i}", p) for i, p in enumerate(params)], decay=0.9)
    reference = [p.detach().clone() for p in params]
    for step in range(1, 6):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        ema.update(step)
        weight = 1.0 - ema.decay_at(step)
        for r, p in zip(reference, params, strict=True):
            r.lerp_(p.detach(), weight)
    assert all(torch.equal(s, r) for s, r in zip(ema.shadow, reference, strict=True))


def test_previews_decode_outside_autocast_in_the_vaes_dtype(tmp_path, tiny_sd1, monkeypatch):
    from engine.train import sampling

    seen = []
    original = sampling._decode

    def spy(vae, processor, latents):
        seen.append((torch.is_autocast_enabled("cpu"), next(vae.parameters()).dtype))
        return original(vae, processor, latents)

    monkeypatch.setattr(sampling, "_decode", spy)
    path = make_run(tmp_path, tiny_sd1, steps=1)
    path.write_text(path.read_text() + '\n[memory]\nmixed_precision = "bf16"\nvae_dtype = "fp32"\n\n[sample]\n'
                    'every_n_steps = 1\nsteps = 1\nprompts = ["a red cat --w 64 --h 64 --d 1"]\n')
    assert run_training(path, sink=ListSink()).status == "completed"
    assert seen == [(False, torch.float32)]


def _memory(**values):
    defaults = dict(mixed_precision="bf16", full_bf16=False, full_fp16=False, fused_backward_pass=False,
                    vae_dtype="fp32")
    return types.SimpleNamespace(**{**defaults, **values})


@pytest.mark.parametrize("memory, mixed, trained, words", [
    (_memory(), "fp16", torch.float32, "using fp16 with gradient scaling"),
    (_memory(full_bf16=True), "fp16", torch.float32, "full_bf16 is off"),
    (_memory(fused_backward_pass=True), "no", torch.float32, "training in fp32"),
])
def test_a_gpu_without_bf16_hardware_trains_in_fp16_with_a_note(monkeypatch, memory, mixed, trained, words):
    from engine.train import precision

    monkeypatch.setattr(precision, "cuda_has_bf16", lambda device=None: False)
    chosen = precision.decide_precision(memory, torch.device("cuda"))
    assert chosen.mixed_precision == mixed and chosen.trainable_dtype == trained
    assert any(words in note for note in chosen.notes) and "compute capability 8.0" in chosen.notes[0]
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda device=None: True)
    assert precision.decide_precision(memory, torch.device("cuda")).mixed_precision == "bf16"


def test_bf16_hardware_is_compute_capability_8_not_emulation(monkeypatch):
    from engine import hardware

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)   # emulation counts there
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert hardware.cuda_has_bf16() is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert hardware.cuda_has_bf16() is True


def test_xformers_that_fails_its_first_real_call_falls_back_to_sdpa_and_says_so(monkeypatch):
    from engine.train import components

    said = []
    unet = types.SimpleNamespace(enable_xformers_memory_efficient_attention=lambda: pytest.fail("not proven"))

    def broken(device):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(components, "prove_xformers", broken)
    ran = components.set_attention(unet, "xformers", torch.device("cuda"), lambda text, level="info": said.append(text))
    assert ran == "sdpa" and "no kernel image" in said[0] and "SDPA" in said[0]
    assert components.set_attention(unet, "xformers", torch.device("cpu"), lambda *a, **k: None) == "sdpa"


def test_the_run_says_which_attention_ran(tmp_path, tiny_sd1):
    path = make_run(tmp_path, tiny_sd1, steps=1)
    path.write_text(path.read_text() + '\n[memory]\nattention = "xformers"\n')
    sink = ListSink()
    assert run_training(path, sink=sink).status == "completed"
    assert sink.of(RunStarted)[0].attention == "sdpa"      # a CPU has no xformers


def test_the_bench_labels_a_cell_by_the_attention_that_ran():
    from engine.bench.speed_matrix import attention_figures
    from engine.bench.speed_report import _cell_notes

    config = types.SimpleNamespace(memory=types.SimpleNamespace(attention="xformers"))
    trainer = types.SimpleNamespace(parts=types.SimpleNamespace(components=types.SimpleNamespace(attention="sdpa")))
    figures = attention_figures(config, trainer)
    assert figures["attention"] == "sdpa" and "xformers was asked for" in figures["attention_note"]
    assert figures["attention_note"] in _cell_notes({"status": "ran", **figures})
