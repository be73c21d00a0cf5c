"""Hardware probe: nvidia-smi parsing, CPU fallback, no torch import."""

from __future__ import annotations

import subprocess
import sys

from engine import hardware


def test_parse_nvidia_smi_csv():
    text = "0, NVIDIA GeForce RTX 3090, 24576\n1, NVIDIA H100 80GB HBM3, 81559\ngarbage\n"
    gpus = hardware.parse_nvidia_smi_csv(text)
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "NVIDIA GeForce RTX 3090"
    assert gpus[0].total_bytes == 24576 * 2**20
    info = hardware.HardwareInfo(gpus=gpus, ram_bytes=1, cpu_count=2, source="nvidia-smi")
    assert info.best_gpu.index == 1
    assert "H100" in info.summary() and "+1 more" in info.summary()


def test_missing_nvidia_smi_falls_back(monkeypatch):
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    info = hardware.probe_hardware()
    assert info.gpus == [] and info.best_gpu is None
    assert "nvidia-smi not found" in info.summary()
    assert info.cpu_count >= 1


def test_cuda_visible_devices_filters(monkeypatch):
    class Done:
        returncode = 0
        stdout = "0, A, 1000\n1, B, 2000\n"
        stderr = ""

    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(hardware.subprocess, "run", lambda *a, **k: Done())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    gpus, note = hardware.probe_gpus_nvidia_smi()
    assert [g.name for g in gpus] == ["B"] and note == ""


def test_ram_is_read():
    ram = hardware.ram_bytes()
    assert ram is None or ram > 100 * 2**20


def test_probe_hardware_does_not_import_torch():
    code = ("import sys; from engine import hardware, plan; hardware.probe_hardware(); "
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_probe_torch_device_reports_something():
    info = hardware.probe_torch_device()
    assert info.device in ("cuda", "cpu")
    if info.device == "cpu":
        assert info.note


def test_capabilities_say_what_a_choice_needs_and_how_to_get_it(monkeypatch):
    caps = hardware.Capabilities(cuda=False, packages=frozenset())
    assert caps.why_not("optimizer.type", "AdamW") is None
    assert caps.why_not("optimizer.type", "AdamW8bit") == (
        "AdamW8bit needs the package bitsandbytes (pip install bitsandbytes) and a CUDA GPU")
    assert caps.why_not("memory.mixed_precision", "fp16") == "fp16 needs a CUDA GPU"
    assert caps.why_not("memory.mixed_precision", "bf16") is None
    gpu = hardware.Capabilities(cuda=True, packages=frozenset({"bitsandbytes"}))
    assert gpu.runs("optimizer.type", "AdamW8bit") and gpu.runs("memory.mixed_precision", "fp16")
    assert "pip install xformers" in gpu.why_not("memory.attention", "xformers")
    # from a probe: its GPUs and packages; packages not probed are looked up without importing them
    info = hardware.HardwareInfo(gpus=[hardware.GpuInfo(0, "G", 8 * 2**30)])
    monkeypatch.setattr(hardware, "package_installed", lambda name: name == "bitsandbytes")
    caps = hardware.capabilities(info)
    assert caps.cuda and caps.packages == frozenset({"bitsandbytes"})
    assert hardware.capabilities(hardware.HardwareInfo(packages=frozenset())).packages == frozenset()


def test_package_lookup_imports_nothing():
    code = ("import sys; from engine import hardware; hardware.installed_packages(('torch', 'bitsandbytes')); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
