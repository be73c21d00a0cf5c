"""Sharded training: the trained weights, their gradients and the optimizer states split across the
GPUs of a run (``memory.sharding``, PyTorch's FSDP2 ``fully_shard``; docs/many-gpus.md).

A run that does not fit one GPU with a whole copy of its optimizer states fits N of them with a
share each. ``full`` keeps only each GPU's share of the weights between layers as well (the least
memory: each block's weights are gathered for its forward and again for its backward);
``grad_op`` keeps a block's gathered weights from its forward to its backward (faster, more
memory). The rest of sdft sees ordinary modules; where it needs whole tensors (a saved model or
state, a resume) every process takes part in gathering them and the main one writes, so this
module holds every place where sharding changes what happens.
"""

from __future__ import annotations

import torch

OPTIONS = ("none", "full", "grad_op")


def is_sharded(module) -> bool:
    """Whether ``module``'s parameters are shards (DTensors) of a sharded model."""
    return any(hasattr(p, "full_tensor") for p in module.parameters())


def shard(module, mode: str) -> None:
    """Shard ``module`` in place, smallest units first (FSDP2 takes them bottom-up), then the whole."""
    from torch.distributed.fsdp import fully_shard

    _propagate_strided_flag_once_per_op()
    reshard = mode == "full"
    before = type(module)
    for unit in units_of(module):
        fully_shard(unit, reshard_after_forward=reshard)
    fully_shard(module, reshard_after_forward=reshard)
    _keep_output_capture(module, before)


def _keep_output_capture(module, before: type) -> None:
    """FSDP2 swaps a sharded module's class for a subclass (``FSDPCLIPTextModel``); transformers 5
    looks up which outputs a model can record (``output_hidden_states``, which clip skip and SDXL's
    layers read) by the class's name, so a sharded text encoder returned no hidden states. The
    subclass gets its original class's entry (a private registry of transformers: no public way)."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:   # transformers 4 reads the flag in the model's own forward
        return
    entry = dict.get(_CAN_RECORD_REGISTRY, str(before))
    if entry and not dict.get(_CAN_RECORD_REGISTRY, str(type(module))):
        _CAN_RECORD_REGISTRY[module] = entry


# The torch release whose private ``_propagate_use_strided_shard_flag`` the wrapper below was
# checked against: its signature and what it reads may change in any other.
CHECKED_TORCH = "2.13."


def _propagate_strided_flag_once_per_op() -> None:
    """Make the first optimizer step and gradient clip of a sharded run linear in its tensors.

    The optimizer (fused AdamW) and the clip run one op over the list of every shard (684 of them
    in SD 1.5's U-Net, as many in the tiny one). The first time such an op meets its list, DTensor
    works out how each output is laid out, and for every output torch 2.13's
    ``_propagate_use_strided_shard_flag`` walks every input of the op again, looking for
    ``_StridedShard`` layouts: quadratic, some 6 CPU seconds per process in a tiny U-Net's first
    step. An op's inputs are the same for all its outputs, so here they are walked once per op and
    the function sees only the ones it looks for (FSDP2's ``Shard(0)`` shards are none of them);
    it fixes the layouts it fixed before. The function is torch's private one, so the wrapper is
    installed only on the torch release it was checked against (2.13); any other runs torch's own."""
    import torch

    if not torch.__version__.startswith(CHECKED_TORCH):
        return
    try:
        from torch.distributed.tensor import _sharding_prop as propagation
        from torch.distributed.tensor.placement_types import _StridedShard
    except ImportError:
        return
    walk = getattr(propagation, "_propagate_use_strided_shard_flag", None)
    if walk is None or getattr(walk, "once_per_op", False):
        return
    last: list = [None, None]     # the op's inputs seen last, and the strided ones among them

    def once_per_op(strategy, op_schema) -> None:
        if last[0] is not op_schema:
            strided = tuple(spec for spec in op_schema.args_spec
                            if any(isinstance(p, _StridedShard) for p in spec.placements))
            last[:] = [op_schema, _StridedInputs(op_schema, strided)]
        walk(strategy, last[1])

    once_per_op.once_per_op = True   # type: ignore[attr-defined]
    propagation._propagate_use_strided_shard_flag = once_per_op


class _StridedInputs:
    """An op's inputs as ``_propagate_use_strided_shard_flag`` reads them: only the strided
    layouts among them; anything else it might read is the op's own."""

    def __init__(self, op_schema, args_spec: tuple) -> None:
        self.op_schema, self.args_spec = op_schema, args_spec

    def __getattr__(self, name: str):
        return getattr(self.op_schema, name)


def units_of(module) -> list:
    """What is gathered at a time, in the order to shard it: each resnet and attention of a U-Net's
    down, mid and up blocks, then the blocks (their samplers); a text encoder's layers. Units of at
    most ~49 M parameters for SD 1.5 (its up blocks hold up to 258 M): the gathered weights of the
    unit at work and the next stay small (engine/plan/estimate.py counts them)."""
    blocks = [*(getattr(module, "down_blocks", None) or []),
              *([module.mid_block] if getattr(module, "mid_block", None) is not None else []),
              *(getattr(module, "up_blocks", None) or [])]
    found = []
    for block in blocks:
        for name in ("resnets", "attentions"):
            found += list(getattr(block, name, None) or [])
        found.append(block)
    # transformers 4 keeps a CLIP text model's encoder under .text_model, transformers 5 on the model
    encoder = getattr(getattr(module, "text_model", module), "encoder", None)
    found += list(getattr(encoder, "layers", None) or [])
    # SDXL's pooled text goes through TE2's projection outside the model's forward (kohya's pooling
    # at the first EOS, engine/families/sdxl/text_encoding.py): as a unit of its own it gathers
    # its weight, and reduces its gradient, when it is called.
    if getattr(module, "text_projection", None) is not None:
        found.append(module.text_projection)
    return found


def requires_sync(module, sync: bool) -> None:
    """Gradient accumulation: a sharded module reduces its gradients only on the last micro-batch."""
    module.set_requires_gradient_sync(sync)


def local(value):
    """A whole tensor from a sharded one (every process must call it: it gathers), else itself."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def every_process_agrees(flag: bool, mesh) -> bool:
    """True when ``flag`` is true on every process of ``mesh`` (a collective: each calls it). The
    divergence watch asks it with each process's answer for its own shards, which spares DTensor's
    layout work for two ops per weight every logging interval."""
    import torch.distributed as dist

    agreed = torch.tensor(int(flag), dtype=torch.int32, device=mesh.device_type)   # NCCL reduces on the GPU
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN, group=mesh.get_group())
    return bool(agreed)


def full_state(module) -> dict:
    """The module's whole state dict on the CPU (a collective: every process calls it; the main
    process gets the tensors, the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(module, state: dict) -> None:
    """Load a whole state dict (read by every process) into the sharded module."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(modules: list, optimizer) -> dict:
    """The optimizer's state dict with whole tensors, keyed as an unsharded run keys it (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    return get_optimizer_state_dict(_joined(modules), inner,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(modules: list, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    set_optimizer_state_dict(_joined(modules), inner, state, options=StateDictOptions(full_state_dict=True))


def joined_names(modules: list) -> list[str]:
    """The trained parameters' names as the optimizer's state dict keys them, in their order."""
    return [name for name, p in _joined(modules).named_parameters() if p.requires_grad]


def _joined(modules: list):
    """The trained modules as one (the state-dict helpers take one model)."""
    if len(modules) == 1:
        return modules[0]
    return torch.nn.ModuleList(modules)


def whole_copy(module, state: dict):
    """An unsharded copy of ``module`` on the CPU holding ``state`` (the main process writes a
    saved model from it)."""
    config = getattr(module, "config", None)
    if hasattr(type(module), "from_config"):
        copy = type(module).from_config(config)
    else:
        copy = type(module)(config)
    copy.load_state_dict(state)
    return copy


def shard_like(reference, whole: torch.Tensor) -> torch.Tensor:
    """This process's shard of ``whole``, laid out as the sharded tensor ``reference``."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(reference.device, reference.dtype), reference.device_mesh,
                             reference.placements)
