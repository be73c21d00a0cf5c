"""Probe the machine: GPUs (name, memory), system RAM and CPU count.

``probe_gpus_nvidia_smi`` asks ``nvidia-smi`` and never imports torch, so the wizard can call it
(from a worker thread) at start-up and stay fast. Without a GPU everything falls back to the CPU with a clear reason.

``capabilities`` says which run-file choices can run on this machine (CUDA, optional packages),
without importing torch or the packages: the planner's presets and suggestions use it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass, field

NVIDIA_SMI_QUERY = ["--query-gpu=index,name,memory.total,compute_cap", "--format=csv,noheader,nounits"]
# Drivers older than about 510 do not know compute_cap: asked again without it.
NVIDIA_SMI_QUERY_OLD = ["--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
BF16_CAPABILITY = (8, 0)   # Ampere and newer have bf16 tensor cores; older GPUs only emulate bf16


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    compute_capability: tuple[int, int] | None = None   # None: the driver did not say

    @property
    def total_gib(self) -> float:
        return self.total_bytes / 2**30

    @property
    def bf16(self) -> bool:
        """bf16 in hardware (compute capability 8.0 or newer). Unknown counts as no: fp16 runs on
        every GPU, while bf16 on an older one is emulated and many times slower."""
        return self.compute_capability is not None and self.compute_capability >= BF16_CAPABILITY


@dataclass(frozen=True)
class HardwareInfo:
    """What the wizard shows: GPUs (may be empty), RAM, CPUs and where the facts came from."""

    gpus: list = field(default_factory=list)
    ram_bytes: int | None = None
    cpu_count: int = 1
    source: str = ""   # "nvidia-smi", "torch" or "none"
    note: str = ""     # why no GPU was found, for the UI
    packages: frozenset | None = None  # optional packages installed (OPTIONAL_PACKAGES); None: not looked up

    @property
    def best_gpu(self) -> GpuInfo | None:
        return max(self.gpus, key=lambda g: g.total_bytes) if self.gpus else None

    def summary(self) -> str:
        gpu = self.best_gpu
        if gpu is None:
            return f"no CUDA GPU ({self.note or 'not found'}); training would run on the CPU"
        extra = f" (+{len(self.gpus) - 1} more)" if len(self.gpus) > 1 else ""
        return f"{gpu.name}, {gpu.total_gib:.1f} GiB{extra}"


def parse_nvidia_smi_csv(text: str, with_capability: bool = False) -> list[GpuInfo]:
    """Parse ``index, name, memory.total[, compute_cap]`` lines (MiB, no units/header); bad lines
    are skipped, and a capability that is not a number is unknown."""
    gpus = []
    tail = 2 if with_capability else 1
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 + tail:
            continue
        try:
            index = int(parts[0])
            mib = float(parts[-tail].split()[0])
        except (ValueError, IndexError):
            continue
        name = ",".join(parts[1:-tail]).strip()
        capability = _capability(parts[-1]) if with_capability else None
        gpus.append(GpuInfo(index, name, int(mib * 2**20), capability))
    return gpus


def _capability(text: str) -> tuple[int, int] | None:
    major, dot, minor = text.strip().partition(".")
    return (int(major), int(minor)) if dot and major.isdigit() and minor.isdigit() else None


def probe_gpus_nvidia_smi(timeout: float = 5.0) -> tuple[list[GpuInfo], str]:
    """(GPUs, note). Runs ``nvidia-smi``; an empty list plus the reason when it is missing/fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    with_capability = True
    try:
        done = subprocess.run([exe, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 and "compute_cap" in (done.stderr + done.stdout):
            with_capability = False
            done = subprocess.run([exe, *NVIDIA_SMI_QUERY_OLD], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {exc}"
    if done.returncode != 0:
        return [], f"nvidia-smi failed: {(done.stderr or done.stdout).strip()[:200]}"
    gpus = parse_nvidia_smi_csv(done.stdout, with_capability)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() != "":
        keep = {v.strip() for v in visible.split(",")}
        gpus = [g for g in gpus if str(g.index) in keep]
    elif visible is not None:
        return [], "CUDA_VISIBLE_DEVICES is empty"
    return gpus, "" if gpus else "nvidia-smi lists no GPU"


def ram_bytes() -> int | None:
    """Total system memory, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def probe_hardware(timeout: float = 5.0) -> HardwareInfo:
    """GPUs via nvidia-smi (no torch import), RAM and CPUs. Safe to call from a thread."""
    gpus, note = probe_gpus_nvidia_smi(timeout)
    return HardwareInfo(gpus=gpus, ram_bytes=ram_bytes(), cpu_count=cpu_count(),
                        source="nvidia-smi" if gpus else "none", note=note, packages=installed_packages())


# ------------------------------------------------------------------ what can run here


@dataclass(frozen=True)
class Need:
    """What one run-file choice needs to run as asked."""

    package: str | None = None   # import name of an optional package
    pip: str | None = None       # what to install
    cuda: bool = False           # needs a CUDA GPU
    bf16: bool = False           # needs bf16 in hardware: a CPU, or a GPU of compute capability 8.0+


def _optimizer_needs() -> dict[tuple[str, object], Need]:
    """Each optimizer's optional package and whether it is made for CUDA (engine/registry/optimizers.py)."""
    from engine.registry.optimizers import CORE_PACKAGES, OPTIMIZERS

    return {("optimizer.type", e.name): Need(None if e.package in CORE_PACKAGES else e.package,
                                             e.pip if e.package not in CORE_PACKAGES else None, cuda=e.cuda)
            for e in OPTIMIZERS if e.cuda or (e.package and e.package not in CORE_PACKAGES)}


# (run-TOML key, value) -> what it needs. Choices not listed run anywhere.
OPTION_NEEDS: dict[tuple[str, object], Need] = {
    **_optimizer_needs(),
    ("memory.mixed_precision", "fp16"): Need(cuda=True),     # a CPU trains in bf16 instead
    ("memory.mixed_precision", "bf16"): Need(bf16=True),     # an older GPU trains in fp16 instead
    ("memory.full_bf16", True): Need(bf16=True),
    ("memory.attention", "xformers"): Need("xformers", "xformers", cuda=True),  # else SDPA is used
}
OPTIONAL_PACKAGES = tuple(sorted({n.package for n in OPTION_NEEDS.values() if n.package}))


def package_installed(name: str) -> bool:
    """Whether ``name`` can be imported, found without importing it (so no torch either)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installed_packages(names=OPTIONAL_PACKAGES) -> frozenset:
    return frozenset(n for n in names if package_installed(n))


BF16_WORDS = "a GPU with bf16 (compute capability 8.0 or newer: RTX 30xx, A100 and later)"


@dataclass(frozen=True)
class Capabilities:
    """What this machine can run: a CUDA GPU or not, bf16 in hardware (a CPU has it; a GPU from
    compute capability 8.0), and which optional packages are installed."""

    cuda: bool
    packages: frozenset = frozenset()
    bf16: bool = True

    def why_not(self, key: str, value) -> str | None:
        """Why ``key = value`` cannot run here (with what to install), or None when it can."""
        need = OPTION_NEEDS.get((key, value)) if isinstance(value, (str, bool)) else None
        if need is None:
            return None
        missing = []
        if need.package and need.package not in self.packages:
            missing.append(f"the package {need.package} (pip install {need.pip})")
        if need.cuda and not self.cuda:
            missing.append("a CUDA GPU")
        if need.bf16 and not self.bf16:
            missing.append(BF16_WORDS)
        what = value if isinstance(value, str) else f"{key} = {str(value).lower()}"
        return f"{what} needs " + " and ".join(missing) if missing else None

    def runs(self, key: str, value) -> bool:
        return self.why_not(key, value) is None


def capabilities(hardware: HardwareInfo | None = None) -> Capabilities:
    """What can run here. ``hardware`` is a probe already made (its GPUs count as CUDA); without
    one the GPUs are probed now (nvidia-smi: call it from a thread in a UI)."""
    if hardware is None:
        hardware = probe_hardware()
    packages = hardware.packages if hardware.packages is not None else installed_packages()
    gpu = hardware.best_gpu
    return Capabilities(cuda=gpu is not None, packages=frozenset(packages), bf16=gpu is None or gpu.bf16)


def cuda_has_bf16(device=None) -> bool:
    """bf16 in the GPU's hardware. ``torch.cuda.is_bf16_supported()`` also counts emulation, which
    every CUDA GPU offers and which runs many times slower than fp16 on cards before Ampere."""
    import torch

    return torch.cuda.get_device_capability(device) >= BF16_CAPABILITY
