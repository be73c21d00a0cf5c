"""Speed options change time, not results: channels_last, torch.compile (kohya's --torch_compile
and --dynamo_backend), TF32 and cuDNN autotuning; --check and from-kohya know them."""

from __future__ import annotations

import types

import pytest
import torch
from train_helpers import make_run

from engine.config.run_toml import load_run_file
from engine.events import ListSink, StepMetrics
from engine.preflight.checks import check_run_file
from engine.runner import run_training
from engine.train.precision import set_backend_flags
from engine.train.trainer import Trainer


def run_with(folder, model, memory: str) -> list[float]:
    path = make_run(folder, model, steps=3)
    path.write_text(path.read_text() + "\n[memory]\n" + memory)
    sink = ListSink()
    result = run_training(path, sink=sink)
    assert result.status == "completed", result.message
    return [e.loss for e in sink.of(StepMetrics)]


@pytest.fixture(scope="module")
def plain_losses(plain_run):
    sink, _result = plain_run(3)       # run_with's file with an empty [memory]: the worker's shared run
    return [e.loss for e in sink.of(StepMetrics)]


def test_channels_last_keeps_the_losses_within_float_rounding(tmp_path, tiny_sd1, plain_losses):
    losses = run_with(tmp_path, tiny_sd1, "channels_last = true\n")
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), rtol=1e-5, atol=1e-6)


def test_channels_last_stores_the_unets_convolutions_nhwc(tmp_path, tiny_sd1):
    path = make_run(tmp_path, tiny_sd1, steps=1)
    path.write_text(path.read_text() + "\n[memory]\nchannels_last = true\n")
    config, _doc, _warnings = load_run_file(path)
    trainer = Trainer(config, config_text="", sink=ListSink())
    trainer.setup()
    conv = trainer.parts.components.model.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


@pytest.mark.slow
def test_torch_compile_traces_the_unet_and_keeps_the_losses(tmp_path, tiny_sd1, plain_losses):
    # the eager backend runs dynamo's captured graphs as they are: bitwise the same losses, and
    # quick enough for a 2-core test machine (inductor builds C++ for minutes on a CPU)
    from torch._dynamo.utils import counters

    counters.clear()
    losses = run_with(tmp_path, tiny_sd1, 'torch_compile = true\ndynamo_backend = "eager"\n')
    assert counters["stats"]["unique_graphs"] > 0
    assert losses == plain_losses


@pytest.mark.slow
def test_each_bucket_shape_gets_a_static_graph(tmp_path, tiny_sd1):
    # a symbolic-size graph after the second bucket is what inductor failed to build; a probe
    # backend sees the inputs each graph is built for
    from torch._dynamo import register_backend

    seen = []

    @register_backend(name="sdft_shape_probe")
    def probe(gm, example_inputs):
        values = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        seen.append([v for v in values if isinstance(v, (torch.Tensor, torch.SymInt))])
        return gm.forward

    # At 96 px the three image sizes fall into three buckets of two images each: with batches of two,
    # each step meets a new bucket, so two steps build a graph for the first and for the second
    # (where dynamo would turn a size symbolic), and trace the U-Net one time fewer than three.
    path = make_run(tmp_path, tiny_sd1, steps=2)
    text = path.read_text().replace("resolution = 64\n", "resolution = 96\n")
    path.write_text(text + '\n[memory]\ntorch_compile = true\ndynamo_backend = "sdft_shape_probe"\n')
    assert run_training(path, sink=ListSink()).status == "completed"
    symbolic = [v for graph in seen for v in graph
                if isinstance(v, torch.SymInt) or any(isinstance(size, torch.SymInt) for size in v.shape)]
    assert seen and not symbolic, "a graph was built with symbolic sizes"
    latents = {tuple(v.shape) for graph in seen for v in graph if v.dim() == 4 and v.shape[:2] == (2, 4)}
    assert len(latents) >= 2, latents               # a static graph for each bucket met


@pytest.mark.slow
def test_a_compiled_run_saves_the_same_weight_names(tmp_path, tiny_sd1):
    from safetensors import safe_open

    names = []
    for label, memory in (("plain", ""), ("compiled", 'torch_compile = true\ndynamo_backend = "eager"\n')):
        path = make_run(tmp_path / label, tiny_sd1, steps=1, save_extra='format = "safetensors"\n')
        path.write_text(path.read_text() + "\n[memory]\n" + memory)
        assert run_training(path, sink=ListSink()).status == "completed"
        saved = next((tmp_path / label / "runs").rglob("*.safetensors"))
        with safe_open(saved, "pt") as fh:
            names.append(sorted(fh.keys()))
    assert names[0] == names[1] and not any("_orig_mod" in n for n in names[1])


def check(tmp_path, tiny_sd1, memory: str):
    path = make_run(tmp_path, tiny_sd1, steps=1)
    path.write_text(path.read_text() + "\n[memory]\n" + memory)
    _config, problems = check_run_file(path)
    return problems


def test_check_names_an_unknown_dynamo_backend(tmp_path, tiny_sd1):
    problems = check(tmp_path, tiny_sd1, 'torch_compile = true\ndynamo_backend = "turbo"\n')
    bad = [p for p in problems if p.key == "memory.dynamo_backend" and p.severity == "error"]
    assert bad and "turbo" in bad[0].message and "inductor" in bad[0].hint


def test_check_refuses_a_backend_without_torch_compile(tmp_path, tiny_sd1):
    problems = check(tmp_path, tiny_sd1, 'dynamo_backend = "eager"\n')
    assert any(p.key == "memory.dynamo_backend" and "torch_compile" in p.message for p in problems)


def test_check_says_inductor_on_a_cpu_needs_a_compiler(tmp_path, tiny_sd1, monkeypatch):
    import engine.preflight.speed as speed

    warned = check(tmp_path / "a", tiny_sd1, "torch_compile = true\n")
    assert any(p.key == "memory.torch_compile" and p.severity == "warning" and "minutes" in p.message
               for p in warned)
    monkeypatch.setattr(speed.shutil, "which", lambda name: None)
    problems = check(tmp_path / "b", tiny_sd1, "torch_compile = true\n")
    assert any(p.key == "memory.dynamo_backend" and p.severity == "error" and "C++" in p.message
               for p in problems)


def test_backend_flags_switch_tf32_and_cudnn_autotuning_on_cuda_only(monkeypatch):
    memory = types.SimpleNamespace(allow_tf32=True, cudnn_benchmark=True)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.benchmark = False
        set_backend_flags(memory, torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False
        set_backend_flags(memory, torch.device("cuda"))    # sets flags only; no GPU needed
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        set_backend_flags(types.SimpleNamespace(allow_tf32=True, cudnn_benchmark=False), torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is False
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def test_from_kohya_maps_torch_compile_and_dynamo_backend():
    from engine.kohya.convert import from_command

    conversion = from_command(["python", "fine_tune.py", "--torch_compile", "--dynamo_backend=eager"])
    assert conversion.document["memory"] == {"torch_compile": True, "dynamo_backend": "eager"}
    assert not conversion.refused


def test_adamw_is_fused_on_the_cpu_unless_the_args_choose():
    from engine.train.optimizers import build_optimizer

    def group_flags(args):
        p = torch.nn.Parameter(torch.ones(3))
        return build_optimizer("AdamW", [{"params": [p]}], 1e-3, args, "cpu").param_groups[0]

    assert group_flags({})["fused"] is True
    assert not group_flags({"fused": False})["fused"]
    assert group_flags({"foreach": True})["foreach"] and not group_flags({"foreach": True})["fused"]


def test_fused_adamw_trains_like_the_per_tensor_one(tmp_path, tiny_sd1, plain_losses):
    path = make_run(tmp_path, tiny_sd1, steps=3, optimizer_extra="args = { fused = false }")
    sink = ListSink()
    assert run_training(path, sink=sink).status == "completed"
    per_tensor = [e.loss for e in sink.of(StepMetrics)]
    assert per_tensor == pytest.approx(plain_losses, rel=1e-5)
