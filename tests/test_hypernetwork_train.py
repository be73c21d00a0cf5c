"""train.mode = "hypernetwork" end to end on tiny models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from train_helpers import make_run  # noqa: E402

from engine.config import run_toml  # noqa: E402
from engine.control import RunControl  # noqa: E402
from engine.events import CallbackSink, FanOut, ListSink, ModelSaved, RunStarted, SampleSaved, StepMetrics  # noqa: E402
from engine.models.hypernetwork import HypernetworkAttnProcessor, load_hypernetwork  # noqa: E402
from engine.runner import run_training  # noqa: E402

MODE = 'mode = "hypernetwork"'


def hypernetwork_tables(**values) -> str:
    """Extra tables appended after [save] in the helper's run TOML."""
    lines = "\n".join(f"{k} = {v}" for k, v in values.items())
    return f"\n[hypernetwork]\n{lines}\n"


def trainer_for(config_path):
    from engine.train.trainer import Trainer

    config, _document, _warnings = run_toml.load_run_file(config_path)
    sink = ListSink()
    return Trainer(config, config_text=config_path.read_text(), sink=sink), sink


def losses(sink: ListSink) -> dict[int, float]:
    return {e.step: e.loss for e in sink.of(StepMetrics)}


def test_only_the_hypernetwork_changes_and_samples_use_it(tmp_path, tiny_sd1):
    from engine.models.load import load_model

    extra = hypernetwork_tables(learning_rate=1e-3) + '\n[sample]\nprompts = ["a red picture --w 64 --h 64 --s 2"]\n'
    config = make_run(tmp_path, tiny_sd1, steps=3, train_extra=MODE, save_extra=extra)
    trainer, sink = trainer_for(config)
    trainer.setup()
    assert trainer.parts.components.hypernetwork.widths == (32, 64)
    assert [g["lr"] for g in trainer.parts.bundle.optimizer.param_groups] == [1e-3]
    assert all(isinstance(p, HypernetworkAttnProcessor) for p in trainer.parts.bundle.unet.attn_processors.values())
    assert not any(p.requires_grad for p in trainer.parts.components.model.unet.parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in trainer.parts.components.hypernetwork.parameters())
    start = {k: v.clone() for k, v in trainer.parts.components.hypernetwork.flat_state().items()}
    trainer.cfg.sample.every_n_steps = 3
    assert trainer.run() == "completed"

    base = load_model(str(tiny_sd1))
    for name, module in (("unet", base.unet), ("text_encoder", base.text_encoder)):
        trained = getattr(trainer.parts.components.model, name).state_dict()
        assert all(torch.equal(v, trained[k]) for k, v in module.state_dict().items()), name
    end = trainer.parts.components.hypernetwork.flat_state()
    assert any(not torch.equal(start[k], end[k]) for k in start)

    saved = [e.path for e in sink.of(ModelSaved)]
    assert saved[-1].endswith("checkpoints/t.pt")
    on_disk = load_hypernetwork(saved[-1])
    assert on_disk.step == 3 and on_disk.name == "t"
    assert all(torch.equal(end[k].cpu(), v) for k, v in on_disk.flat_state().items())
    assert len(sink.of(SampleSaved)) == 1           # sampled through the hooked U-Net
    assert trainer.checkpointer.metadata(trainer.context())["sdft.learning_rate"] == "0.001"   # the hypernetwork's rate


def test_sampling_goes_through_the_hypernetwork(tmp_path, tiny_sd1):
    config = make_run(tmp_path, tiny_sd1, steps=1, train_extra=MODE,
                      save_extra='\n[sample]\nprompts = ["a red picture --w 64 --h 64 --s 2"]\n')
    trainer, _sink = trainer_for(config)
    trainer.setup()
    from engine.train.sampling import Sampler

    calls = []
    processor = next(iter(trainer.parts.bundle.unet.attn_processors.values()))
    hook = processor.hypernetwork.pairs["32"][0].register_forward_hook(lambda *args: calls.append(1))
    try:
        assert Sampler(trainer.parts).sample(trainer.context())
    finally:
        hook.remove()
    assert calls


def test_continue_from_a_saved_safetensors_hypernetwork(tmp_path, tiny_sd1):
    first = make_run(tmp_path / "a", tiny_sd1, steps=2, train_extra=MODE,
                     save_extra=hypernetwork_tables(save_format='"safetensors"'))
    result = run_training(first, sink=ListSink())
    assert result.status == "completed" and result.model_path.endswith("t.safetensors")

    second = make_run(tmp_path / "b", tiny_sd1, steps=1, train_extra=MODE,
                      save_extra=hypernetwork_tables(weights=f'"{result.model_path}"'))
    trainer, sink = trainer_for(second)
    trainer.setup()
    previous = load_hypernetwork(result.model_path).flat_state()
    now = trainer.parts.components.hypernetwork.flat_state()
    assert previous.keys() == now.keys()
    assert all(torch.equal(previous[k], now[k].cpu()) for k in previous)
    assert any("loaded from" in e.text for e in sink.events if e.kind == "message")


def test_stop_and_resume_in_hypernetwork_mode_is_exact(tmp_path, tiny_sd1):
    straight = ListSink()
    full = make_run(tmp_path / "a", tiny_sd1, steps=4, train_extra=MODE)
    assert run_training(full, sink=straight).status == "completed"

    first, control = ListSink(), RunControl()

    def stop_at_two(event):
        if isinstance(event, StepMetrics) and event.step == 2:
            control.request_stop("test stop")

    split = make_run(tmp_path / "b", tiny_sd1, steps=4, train_extra=MODE)
    stopped = run_training(split, sink=FanOut([first, CallbackSink(stop_at_two)]), control=control)
    assert stopped.status == "stopped" and stopped.global_step == 2
    from safetensors.torch import load_file

    assert any(k.startswith("pairs.") for k in load_file(f"{stopped.state_path}/hypernetwork.safetensors"))

    second = ListSink()
    resumed = run_training(split, sink=second, resume="latest")
    assert resumed.status == "completed" and second.of(RunStarted)[0].start_step == 2
    assert {**losses(first), **losses(second)} == losses(straight)          # bit-for-bit
    a, b = load_hypernetwork(tmp_path / "a/runs/t/checkpoints/t.pt"), load_hypernetwork(resumed.model_path)
    assert all(torch.equal(v, b.flat_state()[k]) for k, v in a.flat_state().items())


def test_sd2_bf16_gradient_checkpointing_plain_attention_and_ema(tmp_path, tiny_sd2):
    memory = '\n[memory]\nmixed_precision = "bf16"\ngradient_checkpointing = true\nattention = "math"\n'
    config = make_run(tmp_path, tiny_sd2, steps=2, train_extra=MODE + "\nema = true",
                      save_extra="use_ema = true\n" + memory)   # the saved hypernetwork holds the average
    sink = ListSink()
    result = run_training(config, sink=sink)
    assert result.status == "completed", result.message
    metrics = sink.of(StepMetrics)
    assert all(e.loss == e.loss for e in metrics)                 # finite
    assert all(e.grad_norm and e.grad_norm > 0 for e in metrics)  # through the checkpointed, frozen U-Net
    assert load_hypernetwork(result.model_path).widths == (32, 48, 64)   # 48 = the tiny SD2 text width
