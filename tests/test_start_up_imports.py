"""Start-up imports only what a run needs: diffusers' model classes without bitsandbytes and
without the model families sdft never loads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.import_trim import exported_names

CODE = """
import sys
from engine.quiet import quiet_libraries
quiet_libraries()
from diffusers import AutoencoderKL, UNet2DConditionModel  # what every run loads
assert "bitsandbytes" not in sys.modules, "diffusers imported bitsandbytes"
unused = [m for m in ("diffusers.models.autoencoders.autoencoder_dc", "diffusers.models.transformers.sana_transformer",
                      "diffusers.models.unets.unet_3d_condition", "diffusers.models.autoencoders.autoencoder_asym_kl")
          if m in sys.modules]
assert not unused, unused
import diffusers.models.autoencoders as autoencoders
from diffusers.models.unets import UNet2DConditionModel as Same
assert Same is UNet2DConditionModel and autoencoders.AutoencoderKL is AutoencoderKL
assert "AutoencoderDC" in dir(autoencoders)
from diffusers.models.autoencoders import AutoencoderDC  # any class still imports where diffusers puts it
from diffusers import StableDiffusionPipeline
import torch
from engine.train.optimizers import build_optimizer
p = torch.nn.Parameter(torch.ones(4))
opt = build_optimizer("AdamW8bit", [{"params": [p]}], 1e-3, {}, "cpu")
p.grad = torch.ones(4)
opt.step()
assert float(p.detach()[0]) < 1.0       # the 8-bit optimizer still imports and steps
print("ok")
"""


@pytest.mark.slow
def test_diffusers_models_load_without_unused_families_and_8bit_adam_still_works():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_an_unfamiliar_package_init_is_left_to_diffusers(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text('"""doc"""\nfrom ...utils import is_torch_available\nif is_torch_available():\n'
                    "    from .vae import AutoencoderKL\n    from .dc import DC as AutoencoderDC\n")
    assert exported_names(init) == {"AutoencoderKL": "vae", "AutoencoderDC": "dc"}
    init.write_text("from .vae import AutoencoderKL\nREGISTRY = {}\n")
    assert exported_names(init) is None
    init.write_text("from .vae import (\n")
    assert exported_names(init) is None
