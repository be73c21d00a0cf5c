"""Start-up imports only what a run needs: diffusers' model classes without bitsandbytes."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from engine.quiet import quiet_libraries
quiet_libraries()
from diffusers import AutoencoderKL, UNet2DConditionModel  # what every run loads
assert "bitsandbytes" not in sys.modules, "diffusers imported bitsandbytes"
import torch
from engine.train.optimizers import build_optimizer
p = torch.nn.Parameter(torch.ones(4))
opt = build_optimizer("AdamW8bit", [{"params": [p]}], 1e-3, {}, "cpu")
p.grad = torch.ones(4)
opt.step()
assert float(p.detach()[0]) < 1.0       # the 8-bit optimizer still imports and steps
print("ok")
"""


def test_diffusers_models_load_without_bitsandbytes_and_8bit_adam_still_works():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
