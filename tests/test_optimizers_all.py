"""Every optimizer kohya's fine_tune.py accepts builds and trains the tiny U-Net; names in any case,
kohya's list-form args, module.Class, missing packages, Adafactor's relative step with its
schedule, and the schedule-free train/eval switches around sampling and saving."""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch

from engine.registry import optimizers as registry
from engine.train.lr_schedules import ScheduleInputs, ScheduleMismatch, build_scheduler, schedule_for
from engine.train.optimizers import OptionalPackageMissing, build_optimizer, evaluation_weights

KOHYA_NAMES = ("AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
               "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdam", "DAdaptAdaGrad",
               "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "AdaFactor",
               "RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree")


def _optimizer_table(text: str, tmp_path):
    """The [optimizer] of a run file, and the problems the schema found with its keys."""
    from engine.config.run_toml import collect_run_text

    config, _doc, problems = collect_run_text(text, file=str(tmp_path / "run.toml"), base_dir=tmp_path)
    return config.optimizer, [p for p in problems.items if p.key.startswith("optimizer")]


@pytest.fixture(scope="module")
def tiny_unet():
    from engine.models.tiny import build_tiny_components

    return build_tiny_components()["unet"]


def _batch(unet, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    latents = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    text = torch.randn(2, 4, cfg.cross_attention_dim, generator=g)
    return latents, torch.tensor([10, 500]), text


def _lr(entry):
    if entry.adaptive_lr:
        return 1.0
    return 1e-2 if "SGD" in entry.name else 1e-3


def test_the_registry_has_every_kohya_name_and_the_schema_takes_them():
    from dataclasses import fields

    from engine.config.schema import OptimizerConfig

    for name in KOHYA_NAMES:
        assert registry.find(name) is not None, name
        assert registry.find(name.lower()).name == registry.find(name.upper()).name
    choices = next(f for f in fields(OptimizerConfig) if f.name == "type").metadata["choices"]
    assert choices == registry.NAMES


@pytest.mark.parametrize("name", KOHYA_NAMES)
def test_each_optimizer_trains_the_tiny_unet(tiny_unet, name):
    entry = registry.find(name)
    if entry.package and importlib.util.find_spec(entry.package) is None:
        pytest.skip(f"{entry.package} is not installed (pip install sdft[dev])")
    unet = copy.deepcopy(tiny_unet)
    before = {k: v.detach().clone() for k, v in unet.named_parameters()}
    optimizer = build_optimizer(name.lower(), [{"params": list(unet.parameters()), "lr": _lr(entry)}], _lr(entry))
    losses, changed = [], []
    # At least 3 steps (two from the optimizer's own state), then on until a weight moved: most
    # move at once; RAdam's rectified start makes no update for its first few steps (8 at most).
    for step in range(8):
        latents, timesteps, text = _batch(unet, step)
        loss = unet(latents, timesteps, text).sample.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step >= 2:
            changed = [k for k, v in unet.named_parameters() if not torch.equal(before[k], v.detach())]
            if changed:
                break
    assert all(math.isfinite(x) for x in losses), losses
    assert changed, f"{name} moved no weight"
    assert all(torch.isfinite(v).all() for v in unet.parameters())


@pytest.mark.parametrize("name", [e.name for e in registry.OPTIMIZERS if e.state_bytes])
def test_the_planners_state_bytes_are_what_the_optimizer_keeps(name):
    entry = registry.find(name)
    if entry.package and importlib.util.find_spec(entry.package) is None:
        pytest.skip(f"{entry.package} is not installed")
    param = torch.nn.Parameter(torch.randn(512, 1024))
    optimizer = build_optimizer(name, [{"params": [param]}], _lr(entry))
    for _ in range(2):
        param.grad = torch.randn_like(param)
        optimizer.step()
    held = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if torch.is_tensor(v) and v.numel() > 1)
    # bitsandbytes' CPU blocks are smaller than CUDA's (more absmax values): within 2 %
    assert held / param.numel() == pytest.approx(entry.state_bytes, rel=0.02)


def test_list_form_args_read_as_kohya_reads_them(tmp_path):
    text = ('[optimizer]\ntype = "adamw"\nargs = ["weight_decay=0.01", "betas=0.9,0.999", "amsgrad=True"]\n'
            'lr_scheduler_args = ["power=2"]\n')
    o, problems = _optimizer_table(text, tmp_path)
    assert problems == []
    assert o.type == "AdamW", "the registry's spelling is what the run keeps"
    assert o.args == {"weight_decay": 0.01, "betas": [0.9, 0.999], "amsgrad": True}
    assert o.lr_scheduler_args == {"power": 2}
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer(o.type, [{"params": [param]}], 1e-3, o.args)
    assert tuple(optimizer.defaults["betas"]) == (0.9, 0.999) and optimizer.defaults["amsgrad"] is True


def test_bad_names_and_bad_list_items_are_the_keys_problems(tmp_path):
    _o, problems = _optimizer_table('[optimizer]\ntype = "AdamW9bit"\n', tmp_path)
    [problem] = problems
    assert problem.key == "optimizer.type" and "AdamW8bit" in problem.message and "module.Class" in problem.message
    assert problem.line == 2
    _o, problems = _optimizer_table('[optimizer]\nargs = ["weight_decay"]\n', tmp_path)
    [problem] = problems
    assert problem.key == "optimizer.args" and "key=value" in problem.message


def test_module_class_builds_any_optimizer_and_a_failed_import_says_so(tmp_path):
    o, problems = _optimizer_table('[optimizer]\ntype = "torch.optim.RAdam"\nargs = { weight_decay = 0.1 }\n',
                                   tmp_path)
    assert problems == [] and o.type == "torch.optim.RAdam"
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer(o.type, [{"params": [param]}], 1e-2, o.args)
    assert type(optimizer) is torch.optim.RAdam and optimizer.defaults["weight_decay"] == 0.1
    with pytest.raises(OptionalPackageMissing, match="no_such_package.*cannot be imported"):
        build_optimizer("no_such_package.Opt", [{"params": [param]}], 1e-2)
    with pytest.raises(OptionalPackageMissing, match="has no NoSuchOptimizer"):
        build_optimizer("torch.optim.NoSuchOptimizer", [{"params": [param]}], 1e-2)


@pytest.mark.parametrize("name, package, pip", [("DAdaptAdam", "dadaptation", "pip install dadaptation"),
                                                ("prodigy", "prodigyopt", "pip install prodigyopt"),
                                                ("AdamWScheduleFree", "schedulefree", "pip install schedulefree"),
                                                ("PagedLion8bit", "bitsandbytes", "pip install bitsandbytes")])
def test_a_missing_package_is_named_with_its_pip_command(monkeypatch, tmp_path, name, package, pip):
    real_import = importlib.import_module

    def no_package(module, *args):
        if module.split(".")[0] == package:
            raise ImportError(f"No module named {package!r}")
        return real_import(module, *args)

    monkeypatch.setattr(importlib, "import_module", no_package)
    with pytest.raises(OptionalPackageMissing, match=pip):
        build_optimizer(name, [{"params": [torch.nn.Parameter(torch.zeros(2))]}], 1.0)
    # --check names it too, before building anything
    from engine.config.problems import ProblemList
    from engine.config.schema import RunConfig
    from engine.preflight.checks import _check_packages

    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else object())
    config = RunConfig()
    config.optimizer.type = registry.find(name).name
    problems = ProblemList(file="run.toml")
    _check_packages(config, problems, torch.device("cpu"))
    assert [(p.key, p.hint) for p in problems.items if p.severity == "error"] == [("optimizer.type", pip)]


# ---------------------------------------------------------------- Adafactor, as kohya sets it up


def _adafactor(args, lr=1e-3):
    param = torch.nn.Parameter(torch.randn(16, 16))
    groups = [{"params": [param], "lr": lr}]
    return param, build_optimizer("adafactor", groups, lr, args)


def test_adafactor_relative_step_takes_no_lr_and_the_adafactor_schedule_reports_its_own():
    from types import SimpleNamespace

    param, optimizer = _adafactor({"relative_step": True})
    assert optimizer.param_groups[0]["lr"] is None, "no learning rate reaches it (kohya: lr = None)"
    o = SimpleNamespace(type="Adafactor", lr_scheduler="constant", lr_scheduler_type=None, learning_rate=1e-3,
                        lr_warmup_steps=0, lr_scheduler_num_cycles=1, lr_scheduler_power=1.0, lr_decay_steps=0,
                        lr_scheduler_min_lr_ratio=None, lr_scheduler_timescale=None, lr_scheduler_args={})
    scheduler = schedule_for(o, optimizer, 10)   # constant (unset) becomes adafactor, as in kohya
    assert type(scheduler).__name__ == "AdafactorSchedule"
    rates = []
    for _ in range(3):
        param.grad = torch.randn_like(param)
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    # Adafactor's relative step: min(1e-2, 1/sqrt(step)) times the parameter's RMS (scale_parameter off)
    assert rates[0] == pytest.approx(1e-2) and rates[2] == pytest.approx(1e-2)
    with pytest.raises(ScheduleMismatch, match="adafactor"):
        schedule_for(SimpleNamespace(**{**vars(o), "lr_scheduler": "cosine"}), optimizer, 10)


def test_warmup_init_turns_relative_step_on_and_the_adafactor_schedule_needs_it():
    _param, optimizer = _adafactor({"relative_step": False, "warmup_init": True})
    assert optimizer.defaults["relative_step"] is True, "kohya: warmup_init needs relative_step"
    _param, fixed = _adafactor({})
    assert fixed.defaults["relative_step"] is False and fixed.param_groups[0]["lr"] == 1e-3
    with pytest.raises(ScheduleMismatch, match="relative_step"):
        build_scheduler("adafactor", fixed, ScheduleInputs(10))


# ---------------------------------------------------------------- schedule-free


def test_evaluation_weights_switch_a_schedule_free_optimizer_and_back():
    pytest.importorskip("schedulefree")
    param = torch.nn.Parameter(torch.randn(4))
    optimizer = build_optimizer("adamwschedulefree", [{"params": [param]}], 1e-2)
    assert optimizer.param_groups[0]["train_mode"] is True, "built in train mode, as kohya"
    for _ in range(3):
        param.grad = torch.randn_like(param)
        optimizer.step()
    train_weights = param.detach().clone()
    with evaluation_weights(optimizer):
        assert optimizer.param_groups[0]["train_mode"] is False
        assert not torch.equal(param.detach(), train_weights), "eval() swaps in the averaged weights"
    assert optimizer.param_groups[0]["train_mode"] is True
    torch.testing.assert_close(param.detach(), train_weights)


def test_a_schedule_free_run_samples_and_saves_in_eval_mode_and_trains_in_train_mode(
        tmp_path, tiny_sd1, monkeypatch):
    pytest.importorskip("schedulefree")
    from train_helpers import make_run

    import engine.models.save as save_module
    import engine.train.sampling as sampling
    from engine.runner import run_training
    from engine.train import trainer as trainer_module

    modes: list[tuple[str, bool]] = []
    seen: dict = {}

    def mode():
        return seen["optimizer"].param_groups[0]["train_mode"]

    real_build = trainer_module.build_bundle

    def build_bundle(*args, **kwargs):
        bundle = real_build(*args, **kwargs)
        seen["optimizer"] = getattr(bundle.optimizer, "optimizer", bundle.optimizer)
        return bundle

    real_step = trainer_module.Trainer.train_step

    def train_step(self, batches):
        modes.append(("step", mode()))
        return real_step(self, batches)

    real_save = save_module.save_model

    def save_model(*args, **kwargs):
        modes.append(("save", mode()))
        return real_save(*args, **kwargs)

    def one(self, ctx, unet, index, prompt):
        from PIL import Image

        modes.append(("sample", mode()))
        path = tmp_path / f"sample{index}.png"
        Image.new("RGB", (8, 8)).save(path)     # the sampling point's grid reads it back
        return str(path)

    monkeypatch.setattr(trainer_module, "build_bundle", build_bundle)
    monkeypatch.setattr(trainer_module.Trainer, "train_step", train_step)
    monkeypatch.setattr(save_module, "save_model", save_model)
    monkeypatch.setattr(sampling.Sampler, "_one", one)
    config = make_run(tmp_path, tiny_sd1, steps=3, optimizer_extra='type = "AdamWScheduleFree"\n',
                      save_extra="every_n_steps = 2\n")
    text = config.read_text().replace("[logging]", '[sample]\nevery_n_steps = 2\nprompts = ["a cat --w 64 --h 64 '
                                      '--s 1"]\n\n[logging]')
    config.write_text(text)
    result = run_training(config)
    assert result.status == "completed", result.message
    kinds = [k for k, _m in modes]
    assert kinds == ["step", "step", "save", "sample", "step", "save"], kinds
    assert all(m is (k == "step") for k, m in modes), modes


# ---------------------------------------------------------------- what --check says


def _check(type_name, **optimizer):
    from engine.config.problems import ProblemList
    from engine.config.schema import RunConfig
    from engine.preflight.optimizer import check_optimizer

    config = RunConfig()
    config.optimizer.type = type_name
    for key, value in optimizer.items():
        setattr(config.optimizer, key, value)
    problems = ProblemList(file="run.toml")
    check_optimizer(config, problems, torch.device("cpu"), 10)
    return {(p.key, p.severity): p.message for p in problems.items}


def test_check_says_what_a_cpu_does_with_a_paged_optimizer_and_what_kohya_advises():
    pytest.importorskip("bitsandbytes")
    said = _check("PagedAdamW8bit")
    assert "nothing to page" in said[("optimizer.type", "warning")]
    pytest.importorskip("prodigyopt")
    assert "learning_rate = 1e-05" in _check("Prodigy", learning_rate=1e-5)[("optimizer.learning_rate", "warning")]
    assert _check("Prodigy", learning_rate=1.0) == {}


def test_check_refuses_a_schedule_the_optimizer_cannot_take():
    pytest.importorskip("schedulefree")
    said = _check("AdamWScheduleFree", lr_scheduler="cosine")
    assert "schedule-free" in said[("optimizer.lr_scheduler", "error")]
    said = _check("Adafactor", args={"relative_step": True})
    assert "adafactor schedule" in said[("optimizer.lr_scheduler", "note")]
    said = _check("Adafactor", args={"relative_step": True}, lr_scheduler="linear")
    assert "relative_step" in said[("optimizer.lr_scheduler", "error")]
    said = _check("AdamW", lr_scheduler="adafactor")
    assert "relative_step" in said[("optimizer.lr_scheduler", "error")]
    assert "cannot be imported" in _check("no_such_package.Opt")[("optimizer.type", "error")]
