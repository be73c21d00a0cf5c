"""Hardware probe: nvidia-smi parsing, CPU fallback, no torch import."""

from __future__ import annotations

from fresh_process import snippet

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


def test_compute_capability_says_whether_bf16_is_in_hardware():
    gpus = hardware.parse_nvidia_smi_csv("0, Tesla T4, 15360, 7.5\n1, NVIDIA A100-SXM4-80GB, 81920, 8.0\n"
                                         "2, Odd, GPU, 1024, [N/A]\n", with_capability=True)
    assert [(g.name, g.compute_capability, g.bf16) for g in gpus] == [
        ("Tesla T4", (7, 5), False), ("NVIDIA A100-SXM4-80GB", (8, 0), True), ("Odd,GPU", None, False)]
    assert hardware.capabilities(hardware.HardwareInfo(gpus=gpus[:1], packages=frozenset())).bf16 is False
    assert hardware.capabilities(hardware.HardwareInfo(gpus=gpus[1:2], packages=frozenset())).bf16 is True
    assert hardware.capabilities(hardware.HardwareInfo(packages=frozenset())).bf16 is True   # a CPU has bf16


def test_an_old_driver_without_compute_cap_is_asked_again(monkeypatch):
    calls = []

    class Done:
        def __init__(self, query):
            old = "compute_cap" not in query
            self.returncode = 0 if old else 2
            self.stdout = "0, Quadro P5000, 16384\n" if old else ""
            self.stderr = "" if old else 'Field "compute_cap" is not a valid field to query.'

    def run(args, **kwargs):
        calls.append(args[1])
        return Done(args[1])

    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(hardware.subprocess, "run", run)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus, note = hardware.probe_gpus_nvidia_smi()
    assert len(calls) == 2 and [g.name for g in gpus] == ["Quadro P5000"] and note == ""
    assert gpus[0].compute_capability is None and not gpus[0].bf16


def test_bf16_choices_need_bf16_hardware():
    old_gpu = hardware.Capabilities(cuda=True, packages=frozenset(), bf16=False)
    assert "compute capability 8.0" in old_gpu.why_not("memory.mixed_precision", "bf16")
    assert old_gpu.why_not("memory.full_bf16", True).startswith("memory.full_bf16 = true needs a GPU with bf16")
    assert old_gpu.runs("memory.full_bf16", False) and old_gpu.runs("memory.mixed_precision", "fp16")


def test_missing_nvidia_smi_falls_back(monkeypatch):
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    info = hardware.probe_hardware()
    assert info.gpus == [] and info.best_gpu is None
    assert "nvidia-smi not found" in info.summary()
    assert info.cpu_count >= 1


def test_cuda_visible_devices_filters(monkeypatch):
    class Done:
        returncode = 0
        stdout = "0, A, 1000, 7.5\n1, B, 2000, 8.6\n"
        stderr = ""

    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(hardware.subprocess, "run", lambda *a, **k: Done())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    gpus, note = hardware.probe_gpus_nvidia_smi()
    assert [g.name for g in gpus] == ["B"] and note == ""


def test_ram_is_read():
    ram = hardware.ram_bytes()
    assert ram is None or ram > 100 * 2**20


PROBE = snippet("probe_hardware", "import sys; from engine import hardware, plan; hardware.probe_hardware(); "
                "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(bad)")


def test_probe_hardware_does_not_import_torch(in_fresh_process):
    out = in_fresh_process(PROBE)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


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


LOOKUP = snippet("installed_packages", "import sys; from engine import hardware; "
                 "hardware.installed_packages(('torch', 'bitsandbytes')); print('torch' in sys.modules)")


def test_package_lookup_imports_nothing(in_fresh_process):
    out = in_fresh_process(LOOKUP)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
