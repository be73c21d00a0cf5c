"""What --check says of the speed options that need more than a switch: torch.compile's backend
exists and can build here (inductor needs a C++ compiler on a CPU and Triton on a GPU)."""

from __future__ import annotations

import importlib.util
import shutil

from engine.config.problems import ProblemList
from engine.config.schema import RunConfig

CPP_COMPILERS = ("g++", "c++", "clang++", "cl")


def check_speed_options(config: RunConfig, problems: ProblemList, device) -> None:
    memory = config.memory
    if not memory.torch_compile:
        return
    import torch._dynamo

    backend = memory.dynamo_backend.lower()
    known = sorted(torch._dynamo.list_backends(exclude_tags=()))
    if backend not in known:
        problems.add("memory.dynamo_backend", f"torch.compile has no backend {memory.dynamo_backend!r}",
                     f"use one of {', '.join(known)} (inductor is the usual one)")
        return
    if backend != "inductor":
        return
    on_gpu = device is not None and device.type == "cuda"
    if on_gpu and importlib.util.find_spec("triton") is None:
        problems.add("memory.dynamo_backend", "inductor on a GPU needs the package 'triton', which is not installed",
                     "pip install triton (it comes with Linux CUDA builds of torch)")
    elif not on_gpu and not any(shutil.which(name) for name in CPP_COMPILERS):
        problems.add("memory.dynamo_backend", "inductor on a CPU builds C++ kernels and no C++ compiler was found",
                     'install g++ (e.g. apt install g++), or use dynamo_backend = "aot_eager"')
    elif not on_gpu:
        problems.warn("memory.torch_compile", "on a CPU, compiling the U-Net takes minutes before the first step "
                      "(and again for each new bucket shape)", "it pays only on long runs; leave it off to start at once")
