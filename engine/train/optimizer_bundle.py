"""The optimizer side of a run, built once: parameter groups, optimizer, LR schedule, EMA, and
the modules as the accelerator prepared them (wrapped for DDP on several GPUs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.families import family_of
from engine.families.base import text_encoder_rate
from engine.registry.optimizers import entry_for
from engine.train.components import Components
from engine.train.ema import EMA
from engine.train.lr_schedules import schedule_for
from engine.train.lr_steps import ScheduleOnTakenSteps
from engine.train.optimizers import build_optimizer
from engine.train.weight_update import FUSED_ONE_PROCESS, weight_update_for


@dataclass(frozen=True)
class OptimizerBundle:
    optimizer: Any
    lr_scheduler: Any           # lr_steps.ScheduleOnTakenSteps: advances on taken steps only
    update: Any                 # weight_update.WeightUpdate: how the optimizer's step reaches the weights
    ema: EMA | None
    trained_params: list
    lr_group_names: list[str]   # for the per-group learning rates logged
    unet: Any                   # as prepared by the accelerator (the forward goes through it)
    text_encoder: Any
    text_encoders: dict = field(default_factory=dict)   # the trained ones as prepared, by name on the model


def lr_scale(cfg, processes: int) -> float:
    """``optimizer.scale_lr``: the learning rates times the global batch (the largest dataset batch
    size x processes x accumulation), or its square root; 1 for "none"."""
    if cfg.optimizer.scale_lr == "none":
        return 1.0
    datasets = getattr(cfg.datasets, "datasets", None) or []
    batch = max((d.batch_size for d in datasets), default=1)
    size = batch * processes * cfg.train.gradient_accumulation_steps
    return float(size) if cfg.optimizer.scale_lr == "linear" else size ** 0.5


def parameter_groups(cfg, components: Components, scale: float = 1.0) -> list[dict]:
    """U-Net (learning_rate), the trained text encoders (each its family's key: learning_rate_te,
    SDXL's learning_rate_te1 and learning_rate_te2) or hypernetwork, each with its parameters'
    names (the EMA is keyed by them); ``scale`` multiplies every rate (lr_scale)."""
    o = cfg.optimizer

    def group(name: str, module, lr: float) -> dict:
        named = [(f"{name}.{key}", p) for key, p in module.named_parameters() if p.requires_grad]
        return {"params": [p for _key, p in named], "named": named, "lr": lr * scale, "name": name}

    groups = []
    if cfg.train.mode == "full" and o.block_lr is not None:
        groups += block_groups(components, o.block_lr, scale)
    elif cfg.train.mode == "full":
        groups.append(group("unet", components.model.unet, o.learning_rate))
    rates = dict(family_of(components.model).text_encoder_rates)
    for role in components.trained_text_encoders:
        groups.append(group(role, getattr(components.model, role), text_encoder_rate(cfg, rates[role])))
    if components.hypernetwork is not None:
        lr_h = cfg.hypernetwork.learning_rate
        groups.append(group("hypernetwork", components.hypernetwork, lr_h if lr_h is not None else o.learning_rate))
    return groups


def block_groups(components: Components, rates: list[float], scale: float) -> list[dict]:
    """optimizer.block_lr: one group per U-Net block with a rate above 0, named as kohya logs them
    ("block0" ... "block22"); the parameters keep their "unet." names (EMA, states)."""
    model = components.model
    family = family_of(model)
    blocks: dict[int, list] = {}
    for key, param in model.unet.named_parameters():
        if param.requires_grad:   # blocks at rate 0 were frozen (components.prepare_modules)
            blocks.setdefault(family.unet_block_of(model, key), []).append((f"unet.{key}", param))
    return [{"params": [p for _k, p in named], "named": named, "lr": rates[index] * scale, "name": f"block{index}"}
            for index, named in sorted(blocks.items())]


def trained_modules(components: Components) -> list:
    """The U-Net and the text encoders that train (a hypernetwork run has neither)."""
    model = components.model
    return [model.unet] + [getattr(model, role) for role in components.trained_text_encoders]


def shards(cfg, accelerator) -> bool:
    """memory.sharding applies: several processes (one has nothing to share with)."""
    return cfg.memory.sharding != "none" and accelerator.num_processes > 1


def build_bundle(cfg, components: Components, accelerator, total_steps: int) -> OptimizerBundle:
    o, t = cfg.optimizer, cfg.train
    scale = lr_scale(cfg, accelerator.num_processes)
    sharded = shards(cfg, accelerator)
    if sharded:   # before the groups: sharding replaces the parameters with their shards
        from engine.train.sharding import shard

        for module in trained_modules(components):
            shard(module, cfg.memory.sharding)
    groups = parameter_groups(cfg, components, scale)
    if not groups:
        raise ValueError("nothing to train: check train.mode and train.train_text_encoder")
    optimizer = build_optimizer(o.type, [{"params": g["params"], "lr": g["lr"]} for g in groups],
                                o.learning_rate * scale, o.args, accelerator.device.type)
    lr_scheduler = schedule_for(o, optimizer, total_steps)
    model = components.model
    roles = components.trained_text_encoders
    if components.hypernetwork is not None or sharded:
        # Nothing trainable for DDP to wrap (the step averages a hypernetwork's gradients), or the
        # shards reduce their own gradients.
        unet, text_encoders = model.unet, {role: getattr(model, role) for role in roles}
        optimizer = accelerator.prepare(optimizer)
    else:
        prepared = accelerator.prepare(*trained_modules(components), optimizer)
        unet, text_encoders, optimizer = prepared[0], dict(zip(roles, prepared[1:-1], strict=True)), prepared[-1]
    for role, module in text_encoders.items():   # the prompt encoder runs the prepared (wrapped) ones
        setattr(components.prompt_encoder, role, module)
    text_encoder = text_encoders.get("text_encoder", model.text_encoder)
    ema = None
    if t.ema:
        ema = EMA([pair for g in groups for pair in g["named"]], t.ema_decay, t.ema_update_every, t.ema_cpu_offload)
    trained = [p for g in groups for p in g["params"]]
    if cfg.memory.fused_backward_pass and accelerator.num_processes > 1:
        raise ValueError(FUSED_ONE_PROCESS)
    update = weight_update_for(cfg.memory, entry_for(o.type), optimizer, trained, o.max_grad_norm,
                               accelerator.clip_grad_norm_, accelerator.scaler)
    return OptimizerBundle(optimizer, ScheduleOnTakenSteps(lr_scheduler), update, ema, trained,
                           [g["name"] for g in groups], unet, text_encoder, text_encoders)
