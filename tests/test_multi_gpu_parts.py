"""The pieces of a multi-GPU run that one process can check (docs/many-gpus.md): how a global
batch splits, the launcher's command, the control file sdft watch writes, the DDP settings, shared
caching, learning-rate scaling and the refusals."""

from __future__ import annotations

import json
import types
from itertools import pairwise

import pytest

from engine.control import RunControl
from engine.control_file import ControlFileReader, send_request
from engine.data.parts import part_weight, rank_part
from engine.launch import LaunchError, gpu_count_wanted, launch_plan, parse_p2p_matrix


def test_a_global_batch_splits_into_contiguous_parts_that_cover_it_once():
    for count in range(1, 12):
        for processes in (1, 2, 3, 4):
            parts = [rank_part(count, processes, r) for r in range(processes)]
            assert parts[0][0] == 0 and parts[-1][1] == count
            assert all(a[1] == b[0] for a, b in pairwise(parts))
            sizes = [e - s for s, e in parts]
            assert max(sizes) - min(sizes) <= 1
            # the weights make the average over processes the mean over the global batch
            assert sum(part_weight(n, count, processes) for n in sizes) == pytest.approx(processes)


def test_the_launcher_runs_sdft_train_in_n_processes_and_passes_multi_node_options():
    plan = launch_plan(["run.toml", "--resume", "latest"], 4,
                       {"num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.1",
                        "main_process_port": None}, p2p_ok=False)
    argv = plan.argv
    assert argv[1:5] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"] and argv[5] == "4"
    assert argv[argv.index("--num_machines") + 1] == "2" and argv[argv.index("--machine_rank") + 1] == "1"
    assert "--main_process_port" not in argv
    assert argv[-5:] == ["engine.cli", "train", "run.toml", "--resume", "latest"]
    assert plan.env == {"NCCL_P2P_DISABLE": "1"} and "cannot reach each other" in plan.notes[0]
    assert launch_plan(["r.toml"], 2, {}, p2p_ok=True).env == {}


def test_gpu_counts_are_checked_against_what_the_machine_shows():
    assert gpu_count_wanted("all", 4) == 4 and gpu_count_wanted("2", 4) == 2
    with pytest.raises(LaunchError, match="none is visible"):
        gpu_count_wanted("2", 0)
    with pytest.raises(LaunchError, match="shows 2 GPU"):
        gpu_count_wanted("4", 2)
    with pytest.raises(LaunchError, match="a number of GPUs or 'all'"):
        gpu_count_wanted("two", 2)


def test_peer_to_peer_is_read_from_nvidia_smi_topo():
    geforce = "        GPU0    GPU1\n GPU0   X       NS\n GPU1   NS      X\n\nLegend:\n  X = Self\n  OK = Status Ok\n"
    nvlink = "        GPU0    GPU1\n GPU0   X       OK\n GPU1   OK      X\n"
    assert parse_p2p_matrix(geforce) is False and parse_p2p_matrix(nvlink) is True
    assert parse_p2p_matrix("        GPU0\n GPU0   X\n") is None


def test_a_request_in_control_json_reaches_the_run_once(tmp_path):
    send_request(tmp_path, "stop", by="an old watch")          # left by an earlier run: not replayed
    reader = ControlFileReader(tmp_path)
    control = RunControl()
    assert reader.apply(control) is None and not control.stop_requested
    send_request(tmp_path, "save", by="sdft watch (pid 1)")
    assert reader.apply(control) == "save" and control.take_save_request()
    assert reader.apply(control) is None                       # once
    send_request(tmp_path, "pause", by="x")
    reader.apply(control)
    assert control.paused
    send_request(tmp_path, "resume", by="x")
    reader.apply(control)
    assert not control.paused
    send_request(tmp_path, "stop", by="sdft watch (pid 7)")
    reader.apply(control)
    assert control.stop_requested and control.stop_reason == "stop requested by sdft watch (pid 7)"
    with pytest.raises(ValueError, match="unknown request"):
        send_request(tmp_path, "explode", by="x")
    assert json.loads((tmp_path / "control.json").read_text())["seq"] == 5


def test_a_run_stops_at_a_request_from_another_process(tmp_path, tiny_sd1):
    from train_helpers import make_run

    from engine.events import CallbackSink, FanOut, ListSink, StepMetrics
    from engine.runner import run_training

    path = make_run(tmp_path, tiny_sd1, steps=20)
    run_dir = tmp_path / "runs" / "t"

    def on_event(event):
        if isinstance(event, StepMetrics) and event.step == 2:
            send_request(run_dir, "stop", by="the test")

    sink = ListSink()
    result = run_training(path, sink=FanOut([sink, CallbackSink(on_event)]))
    assert result.status == "stopped" and result.global_step == 2
    assert result.state_path and "step00000002" in result.state_path
    assert "stop requested by the test" in result.message


def test_ddp_settings_reach_the_accelerator(monkeypatch, tmp_path):
    import accelerate

    from engine.config.schema import RunConfig
    from engine.train import precision

    seen = {}

    class Captured:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            self.distributed_type = "DistributedType.MULTI_GPU"

    monkeypatch.setattr(accelerate, "Accelerator", Captured)
    cfg = RunConfig()
    cfg.memory.device = "cpu"
    cfg.train.ddp_timeout = 90
    precision.start_accelerator(cfg, lambda *a: None)
    ddp, waits = seen["kwargs_handlers"]
    assert ddp.gradient_as_bucket_view is True and ddp.static_graph is False
    assert waits.timeout.total_seconds() == 90 * 60


@pytest.mark.parametrize("kind", ["DEEPSPEED", "FSDP"])
def test_deepspeed_and_fsdp_configs_are_refused_with_what_to_use(kind):
    from engine.train.precision import refuse_unsupported_launch

    with pytest.raises(RuntimeError, match="--gpus N.*memory.sharding"):
        refuse_unsupported_launch(types.SimpleNamespace(distributed_type=f"DistributedType.{kind}"))


def test_each_process_encodes_its_share_of_a_disk_cache(tmp_path, tiny_sd1):
    import torch
    from train_helpers import make_run

    from engine.config.run_toml import load_run_file
    from engine.data.pipeline import TrainingData
    from engine.models.load import load_model

    config, _doc, _warnings = load_run_file(make_run(tmp_path, tiny_sd1))
    data = TrainingData.from_config(config, default_resolution=(64, 64), log=lambda _t: None)
    vae = load_model(str(tiny_sd1)).vae
    entries = lambda: sorted(data.cache_dir.rglob("*.safetensors"))   # noqa: E731
    data.encode_share(vae, torch.device("cpu"), torch.float32, None, rank=0, processes=2)
    assert len(entries()) == 3                       # 6 images: every other one
    data.encode_share(vae, torch.device("cpu"), torch.float32, None, rank=1, processes=2)
    assert len(entries()) == 6
    said = []
    data.log = said.append
    data.prepare_latents(vae, torch.device("cpu"), torch.float32, main=False)
    assert data.cache_result.reused == 6 and data.cache_result.encoded == 0


def test_learning_rates_can_scale_with_the_global_batch():
    from engine.train.optimizer_bundle import lr_scale

    cfg = types.SimpleNamespace(optimizer=types.SimpleNamespace(scale_lr="none"),
                                train=types.SimpleNamespace(gradient_accumulation_steps=2),
                                datasets=types.SimpleNamespace(datasets=[types.SimpleNamespace(batch_size=4)]))
    assert lr_scale(cfg, 2) == 1.0
    cfg.optimizer.scale_lr = "linear"
    assert lr_scale(cfg, 2) == 16.0
    cfg.optimizer.scale_lr = "sqrt"
    assert lr_scale(cfg, 2) == 4.0


def test_a_stopped_process_of_a_multi_process_run_exits_0_for_the_launcher(monkeypatch):
    from engine.cli import stopped_exit_code

    assert stopped_exit_code() == 130
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert stopped_exit_code() == 0


def test_gpus_without_gpus_and_tui_with_gpus_are_refused(tmp_path, tiny_sd1, monkeypatch, capsys):
    from train_helpers import make_run

    from engine import hardware
    from engine.cli import main

    path = make_run(tmp_path, tiny_sd1)
    monkeypatch.setattr(hardware, "probe_gpus_nvidia_smi", lambda timeout=5.0: ([], "nvidia-smi not found"))
    assert main(["train", str(path), "--gpus", "2"]) == 2
    assert "none is visible" in " ".join(capsys.readouterr().err.split())
    assert main(["train", str(path), "--gpus", "2", "--tui"]) == 2
    assert "sdft watch RUN_DIR" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("memory, optimizer, words", [
    ('mixed_precision = "fp16"\n', "AdamW", "gradient scaler"),
    ('mixed_precision = "bf16"\nfull_bf16 = true\n', "AdamW", "stochastic rounding"),
    ("fused_backward_pass = true\n", "AdamW", "fused backward pass"),
    ("", "AdamW8bit", "kernels take whole tensors"),
])
def test_what_sharding_cannot_do_yet_is_refused_with_the_reason(tmp_path, tiny_sd1, memory, optimizer, words):
    from train_helpers import make_run

    from engine.config.problems import ConfigError
    from engine.config.run_toml import load_run_file

    path = make_run(tmp_path, tiny_sd1, optimizer_extra=f'type = "{optimizer}"')
    path.write_text(path.read_text() + '\n[memory]\nsharding = "full"\n' + memory)
    with pytest.raises(ConfigError) as caught:
        load_run_file(path)
    assert any(p.key == "memory.sharding" and words in p.message and p.hint for p in caught.value.problems)


def test_sharded_modules_are_sharded_by_unit_smallest_first(tiny_sd1):
    from engine.models.load import load_model
    from engine.train.sharding import units_of

    unet = load_model(str(tiny_sd1)).unet
    units = units_of(unet)
    assert units[0] is unet.down_blocks[0].resnets[0] and units[-1] is unet.up_blocks[-1]
    assert all(units.index(block) > units.index(block.resnets[-1]) for block in unet.down_blocks)


def test_a_command_leaves_its_process_groups_before_python_exits(tmp_path):
    """A process of a multi-process run destroys its groups when its command returns: left to
    the interpreter's exit, gloo's threads may abort it (exit -6) after a run that ended well."""
    import torch
    import torch.distributed as dist

    from engine.cli import main

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    side = dist.new_group(backend="gloo")      # as ControlAgreement makes one
    ones = torch.ones(1)
    dist.all_reduce(ones, group=side)
    assert dist.is_initialized() and ones.item() == 1
    assert main(["tokens", "a cat"]) == 0
    assert not dist.is_initialized()


def test_a_sharded_text_encoder_is_sharded_by_layer_and_still_returns_its_hidden_states(tmp_path, tiny_sd1):
    """Clip skip and SDXL read a text encoder's hidden states; FSDP2 swaps the model's class for a
    subclass, which transformers 5 did not know could record them (a sharded run that trained the
    text encoder failed with "'NoneType' object is not subscriptable")."""
    import torch
    import torch.distributed as dist

    from engine.models.load import load_model
    from engine.train.sharding import shard, units_of

    text_encoder = load_model(str(tiny_sd1)).text_encoder
    layers = list(text_encoder.get_encoder().layers) if hasattr(text_encoder, "get_encoder") else []
    assert units_of(text_encoder) == layers and layers        # one unit per layer, not the whole model
    ids = torch.randint(0, 1000, (2, 77))
    expected = text_encoder(ids, output_hidden_states=True).hidden_states
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        shard(text_encoder, "full")
        got = text_encoder(ids, output_hidden_states=True).hidden_states
    finally:
        dist.destroy_process_group()
    assert got is not None and len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b)


def test_a_sharded_run_finds_a_weight_that_is_not_finite_in_any_shard(tmp_path):
    """The divergence watch checks the trained weights each logging interval; on a sharded run each
    process checks its own shards and the processes agree (engine/train/divergence.py _all_finite, sharding.py every_process_agrees)."""
    import torch
    import torch.distributed as dist

    from engine.train.divergence import _all_finite
    from engine.train.sharding import shard

    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2))
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        shard(model, "full")
        params = list(model.parameters())
        assert all(hasattr(p, "full_tensor") for p in params) and _all_finite(params)
        for value in (float("inf"), float("nan")):
            with torch.no_grad():
                params[2].to_local()[1, 3] = value
            assert not _all_finite(params)
            assert not bool(torch.stack([torch.isfinite(p.full_tensor()).all() for p in params]).all())
            with torch.no_grad():
                params[2].to_local()[1, 3] = 0.5
            assert _all_finite(params)
    finally:
        dist.destroy_process_group()


def test_the_strided_flag_wrapper_is_installed_only_on_the_torch_it_was_checked_against(monkeypatch):
    # engine/train/sharding.py replaces a private torch function for sharded runs' first step;
    # another torch release keeps its own (its signature may differ), the checked one gets the
    # wrapper once, however many modules are sharded.
    import torch
    from torch.distributed.tensor import _sharding_prop as propagation

    from engine.train import sharding

    seen = []

    def torchs_own(strategy, op_schema):   # stands in for torch's function: records what it read
        seen.append((strategy, op_schema.args_spec, op_schema.name))

    monkeypatch.setattr(propagation, "_propagate_use_strided_shard_flag", torchs_own)
    monkeypatch.setattr(torch, "__version__", "2.14.0")
    sharding._propagate_strided_flag_once_per_op()
    assert propagation._propagate_use_strided_shard_flag is torchs_own
    monkeypatch.setattr(torch, "__version__", sharding.CHECKED_TORCH + "0+cpu")
    sharding._propagate_strided_flag_once_per_op()
    wrapped = propagation._propagate_use_strided_shard_flag
    assert wrapped is not torchs_own and wrapped.once_per_op
    sharding._propagate_strided_flag_once_per_op()
    assert propagation._propagate_use_strided_shard_flag is wrapped
    # an op's inputs are filtered once; torch's function sees only the strided ones, and the rest
    # of the op as it is
    plain = types.SimpleNamespace(placements=("Shard(0)",))
    schema = types.SimpleNamespace(args_spec=(plain, plain), name="aten._fused_adam_")
    wrapped("output 1", schema)
    wrapped("output 2", schema)
    assert seen == [("output 1", (), "aten._fused_adam_"), ("output 2", (), "aten._fused_adam_")]
