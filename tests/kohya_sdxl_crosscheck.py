"""Run kohya's own SDXL functions against sdft's SDXL foundations (docs/sdxl.md).

Not collected by pytest (kohya's code is not a dependency):
    OMP_NUM_THREADS=1 python tests/kohya_sdxl_crosscheck.py /path/to/sd-scripts
kohya's ``library.utils`` (torchvision, cv2) is replaced by a stub; its functions that need
heavy modules are taken out of their files one by one with ``ast``. Last run: sd-scripts
48d368f, everything identical except TE2's text_projection (kohya does not transpose it);
kohya's files load in sdft and kohya's loader reads sdft's full-size layout.
"""
# ruff: noqa: E402  (kohya's modules import after the stub is installed)
import ast
import math
import random
import sys
import types
from pathlib import Path

import torch

KOHYA = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(KOHYA))
utils = types.ModuleType("library.utils")
utils.setup_logging = lambda *a, **k: None
sys.modules["library.utils"] = utils
import library  # noqa: E402,F401
from library import strategy_sdxl

from engine.families.sdxl import conditioning as cond
from engine.families.sdxl.keys import diffusers_to_single_file
from engine.families.sdxl.text_encoding import SdxlPromptEncoder
from engine.families.sdxl.tiny import TinySdxlSpec, build_tiny_sdxl_components
from engine.models.tokenizer import build_clip_tokenizer


def extract(path, names, glb):
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in names:
            exec(compile(ast.Module([node], []), str(path), "exec"), glb)
    return glb

parts = build_tiny_sdxl_components(TinySdxlSpec(seed=11))
te1, te2 = parts["text_encoder"].eval(), parts["text_encoder_2"].eval()
caps = ["", "1girl, solo", ", ".join(f"tag{i}" for i in range(40)), ", ".join(f"w{i}" for i in range(120))]
for n in (75, 150, 225):
    tok = strategy_sdxl.SdxlTokenizeStrategy.__new__(strategy_sdxl.SdxlTokenizeStrategy)
    tok.tokenizer1, tok.tokenizer2 = build_clip_tokenizer(False), build_clip_tokenizer(True)
    tok.tokenizer2.pad_token_id = 0
    tok.max_length = 77 if n == 75 else n + 2
    k1, k2 = tok.tokenize(caps)
    enc = SdxlPromptEncoder(te1, te2, max_token_length=n)
    ours_tok = enc.tokenize(caps)
    assert torch.equal(k1, ours_tok.ids1) and torch.equal(k2, ours_tok.ids2), n
    with torch.no_grad():
        h1, h2, pool = strategy_sdxl.SdxlTextEncodingStrategy().encode_tokens(tok, [te1, te2], [k1, k2])
        ours = enc.encode(ours_tok, "cpu")
    assert torch.equal(h1, ours.states1) and torch.equal(h2, ours.states2) and torch.equal(pool, ours.pooled), n
    print(f"tokens+encoding {n}: identical to kohya's SdxlTokenizeStrategy / SdxlTextEncodingStrategy")

g = extract(KOHYA / "library/train_util.py", {"get_crop_ltrb"}, {"Tuple": tuple})
g = extract(KOHYA / "library/sdxl_train_util.py", {"timestep_embedding", "get_timestep_embedding", "get_size_embeddings"}, dict(g, math=math, torch=torch))
from engine.data.buckets import make_bucket_list, nearest_buckets

buckets = make_bucket_list((1024, 1024), 256, 2048, 64)
rng = random.Random(0)
sizes = [(rng.randint(200, 4000), rng.randint(200, 4000)) for _ in range(3000)] + [(1, 49)]
assigned = nearest_buckets(sizes[:-1], buckets)
count = 0
for a in assigned:
    for flipped in (False, True):
        left, t, r, b = g["get_crop_ltrb"](a.bucket, a.size)
        target = a.bucket
        left_top = (left, t) if not flipped else (target[0] - r, t)
        kohya = ((int(a.size[1]), int(a.size[0])), (int(left_top[1]), int(left_top[0])), (int(target[1]), int(target[0])))
        c = cond.size_conditioning(a.size, a.bucket, flipped=flipped)
        assert (c.original_hw, c.crop_top_left, c.target_hw) == kohya, (a, flipped)
        count += 1
print(f"size conditioning: {count} image/flip cases identical to kohya's get_crop_ltrb + __getitem__ recording")
conds = [cond.size_conditioning(a.size, a.bucket) for a in assigned[:64]]
ids = cond.add_time_ids(conds)
k = g["get_size_embeddings"](ids[:, :2].long(), ids[:, 2:4].long(), ids[:, 4:].long(), "cpu")
from diffusers.models.embeddings import Timesteps

proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
d = proj(ids.flatten()).reshape(len(conds), -1)
print("size embeddings max |kohya - diffusers(add_time_ids)|:", (k - d).abs().max().item())

# Key conversion: kohya's converters on the tiny model's state dicts.
g = extract(KOHYA / "library/sdxl_model_util.py", {"make_unet_conversion_map", "convert_diffusers_unet_state_dict_to_sdxl", "convert_unet_state_dict", "convert_text_encoder_2_state_dict_to_sdxl"}, {"torch": torch})
import diffusers

g2 = extract(KOHYA / "library/model_util.py", {"convert_vae_state_dict", "reshape_weight_for_sd"}, {"torch": torch, "diffusers": diffusers})
sds = {n: parts[n].state_dict() for n in ("unet", "vae", "text_encoder", "text_encoder_2")}
kohya = {}
kohya.update({"model.diffusion_model." + k: v for k, v in g["convert_diffusers_unet_state_dict_to_sdxl"](sds["unet"]).items()})
kohya.update({"conditioner.embedders.0.transformer." + k: v for k, v in sds["text_encoder"].items()})
kohya.update({"conditioner.embedders.1.model." + k: v for k, v in g["convert_text_encoder_2_state_dict_to_sdxl"](sds["text_encoder_2"], None).items()})
kohya.update({"first_stage_model." + k: v for k, v in g2["convert_vae_state_dict"](sds["vae"]).items()})
ours = diffusers_to_single_file(sds["unet"], sds["vae"], sds["text_encoder"], sds["text_encoder_2"])


def norm(key):
    # transformers 5 drops CLIPTextModel's text_model. level; kohya's pinned 4.x keeps it, as sdft does
    return key.replace("conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.0.transformer.")


ko = {norm(k): v for k, v in kohya.items()}
ou = {norm(k): v for k, v in ours.items()}
print("keys: only kohya", sorted(set(ko) - set(ou))[:5], "only ours", sorted(set(ou) - set(ko))[:5], "count", len(ko), len(ou))
diff = [k for k in ko if k in ou and not torch.equal(ko[k].reshape(ou[k].shape), ou[k])]
print("tensors that differ:", diff)

# Files: kohya's file (its converters' tensors, in save_stable_diffusion_checkpoint's two
# layouts) loads in sdft; sdft's saved file has exactly kohya's keys.
import tempfile

from safetensors.torch import save_file

from engine.families.sdxl.adapter import SDXL

with tempfile.TemporaryDirectory() as tmp:
    save_file({k: v.contiguous() for k, v in kohya.items()}, f"{tmp}/kohya.safetensors")
    torch.save({"state_dict": kohya, "epoch": 1, "global_step": 10}, f"{tmp}/kohya.ckpt")
    for name in ("kohya.safetensors", "kohya.ckpt"):
        loaded = SDXL.load(f"{tmp}/{name}")
        same = {}
        for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
            got = {k.removeprefix("text_model."): v for k, v in getattr(loaded, part).state_dict().items()}
            want = {k.removeprefix("text_model."): v for k, v in sds[part].items() if "position_ids" not in k}
            same[part] = [k for k in want if not torch.equal(got[k], want[k])]
        print(f"{name} loaded by sdft: tensors that differ: {same}")
    SDXL.save(f"{tmp}/sdft.safetensors", loaded, v_prediction=False, fmt="safetensors", precision="float")
    from safetensors import safe_open

    with safe_open(f"{tmp}/sdft.safetensors", "pt") as f:
        written = {norm(k) for k in f.keys()}
    print("sdft's saved file: only kohya", sorted(set(ko) - written)[:5], "only sdft", sorted(written - set(ko))[:5])

# kohya's own loader (load_models_from_sdxl_checkpoint) on sdft's full-size layout: the file's
# tensors on the meta device (SDXL base 1.0's shapes, no 7 GB file), read through kohya's code,
# which builds its U-Net and text encoders and loads every part with its strict key check.
sys.modules.setdefault("einops", types.SimpleNamespace(rearrange=None))
from library import sdxl_model_util

from engine.families.sdxl.configs import builtin_config
from engine.models.load import empty_model, text_ctor, unet_ctor, vae_ctor

full = {"unet": empty_model(unet_ctor(builtin_config("unet"))).state_dict(), "vae": empty_model(vae_ctor(builtin_config("vae"))).state_dict(),
        "text_encoder": empty_model(text_ctor(builtin_config("text_encoder"))).state_dict(),
        "text_encoder_2": empty_model(text_ctor(builtin_config("text_encoder_2"), with_projection=True)).state_dict()}
full_file = diffusers_to_single_file(full["unet"], full["vae"], full["text_encoder"], full["text_encoder_2"])
sdxl_model_util.load_file = lambda path, device=None: dict(full_file)
kohya_load_on_device = sdxl_model_util._load_state_dict_on_device


def load_on_device(model, state_dict, device, dtype=None):
    # kohya pins transformers 4.x, whose CLIP models keep the text_model. level; 5.x drops it
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        state_dict = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    return kohya_load_on_device(model, state_dict, device, dtype)


sdxl_model_util._load_state_dict_on_device = load_on_device
k_te1, k_te2, k_vae, k_unet, _, _ = sdxl_model_util.load_models_from_sdxl_checkpoint(None, "sdft.safetensors", "meta")
print(f"kohya's loader read sdft's full-size layout ({len(full_file)} tensors): U-Net, both text encoders and "
      f"the VAE matched its models key for key ({sum(p.numel() for p in k_unet.parameters()):,} U-Net parameters)")
