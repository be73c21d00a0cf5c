"""The learning benchmark's model: a tiny SD model with random weights whose VAE behaves like a
trained one where training can tell.

A random VAE has three faults for this purpose (docs/learning-bench.md):

* its latents are tiny: times SD's scaling factor 0.18215 they spread about 0.05, so unit
  noise drowns every image. The encoder's output is rescaled per channel (centred, then scaled
  so that latents x 0.18215 have unit spread on the benchmark's images, as a real SD VAE's
  do); the decoder's first layer takes the inverse, so it decodes as before. The config keeps
  SD's scaling_factor 0.18215, so no trainer warns.
* its log-variance is as large as the mean, so a posterior sample is mostly noise (and the
  v-prediction target with it). The log-variance is pinned at diffusers' floor (-30): the
  posterior is a point, and "sample", "mean" and kohya's one draw give the same latent.
* its decoder is meaningless, so pictures cannot tell concepts apart. Nothing is done about
  it: the benchmark scores in latent space (scoring.py).

The text encoder is random too, and its captions all look alike to a tiny U-Net: with
attention heads 4 wide, unit-scale embeddings give nearly uniform cross-attention. Its final
LayerNorm's gain is raised to 8 (the clip-skip layers go through the same norm), so the U-Net
can tell captions apart; measured with a bare training loop on SD1, 400 steps: adherence 14%
with gain 1, 80% with 8 (docs/learning-bench.md).

The U-Net keeps SD's 32 GroupNorm groups so kohya's own U-Net class can load the same folder.

SDXL (engine/families/sdxl/tiny.py's model) reads its text states before any final LayerNorm
(layer 11 of TE1, the penultimate layer of TE2), so there the gain goes on the residual stream
itself: the embeddings and every layer's two output projections are scaled by 8. Each layer
normalises its input first, so every hidden state comes out 8 times larger (to 0.3%: the
LayerNorms' epsilon), as SD's normed states do, and the pooled embedding (after the final
LayerNorm) stays as it was (to 0.4%). At the CI size, adherence 54% with gain 1, 83% with 8
(docs/learning-bench.md). Its VAE is calibrated to SDXL's scale 0.13025.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.families.sd.adapters import SD_VAE_SCALE

# diffusers clamps a posterior's log-variance to [-30, 20]; -30 makes its std 3e-7.
POINT_LOG_VARIANCE = -30.0
UNET_NORM_GROUPS = 32   # kohya's original_unet.NORM_GROUPS, fixed in its U-Net class
TEXT_GAIN = 8.0         # the text encoder's final LayerNorm weight (the module docstring says why)


@dataclass(frozen=True)
class Family:
    """A model family the benchmark trains: SD1, SD2 (512-base, epsilon), SD2 768-v or SDXL."""

    name: str
    flavour: str            # "sd1" | "sd2" (engine.models.tiny) | "sdxl" (engine.families.sdxl.tiny)
    v_prediction: bool
    clip_skip: int          # the family's usual training recipe: NovelAI's 2 on SD1, 1 on SD2
    label: str


FAMILIES: tuple[Family, ...] = (
    Family("sd1", "sd1", False, 2, "SD1 (epsilon, CLIP skip 2)"),
    Family("sd2", "sd2", False, 1, "SD2-base (epsilon)"),
    Family("sd2-v", "sd2", True, 1, "SD2 768-v (v-prediction)"),
    Family("sdxl", "sdxl", False, 1, "SDXL (epsilon)"),   # SDXL reads fixed layers: no clip skip
)


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown model family {name!r}: use {', '.join(f.name for f in FAMILIES)}")


def calibrate_vae(vae, pixels, scaling_factor: float = SD_VAE_SCALE) -> dict:
    """Rescale ``vae`` in place so that its posterior is a point and ``scaling_factor`` x its
    latents of ``pixels`` (N, 3, H, W in [-1, 1]) have zero mean and unit spread per channel.
    Returns the spread before and after, for the report."""
    import torch

    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(pixels))
        channels = moments.shape[1] // 2
        mean = moments[:, :channels].double()
        centre, spread = mean.mean(dim=(0, 2, 3)), mean.std(dim=(0, 2, 3))
        gain = 1.0 / (scaling_factor * spread)
        encode, decode = vae.quant_conv, vae.post_quant_conv
        # New mean m' = gain * (m - centre): scale the mean rows of the encoder's last 1x1 conv.
        encode.weight[:channels] *= gain.view(-1, 1, 1, 1).to(encode.weight.dtype)
        encode.bias[:channels] = ((encode.bias[:channels].double() - centre) * gain).to(encode.bias.dtype)
        encode.weight[channels:] = 0.0
        encode.bias[channels:] = POINT_LOG_VARIANCE
        # The decoder's first 1x1 conv sees m = m' / gain + centre, as before.
        decode.bias += (decode.weight[:, :, 0, 0].double() @ centre).to(decode.bias.dtype)
        decode.weight /= gain.view(1, -1, 1, 1).to(decode.weight.dtype)
        after = vae.encode(pixels).latent_dist
    return {"scaled_latent_std_before": float(spread.mean() * scaling_factor),
            "scaled_latent_std_after": float((after.mean * scaling_factor).std()),
            "posterior_std_after": float(after.std.mean())}


def load_pixels(paths, side: int):
    """Images as a (N, 3, side, side) tensor in [-1, 1], as the VAE takes them."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB").resize((side, side)), dtype=np.float32) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def scale_residual_stream(text_encoder, gain: float) -> None:
    """Multiply every hidden state of a pre-LayerNorm CLIP text model by ``gain``: what enters the
    residual stream (the embeddings, each layer's attention and MLP outputs) is scaled; each
    layer's own LayerNorm then sees its input as before."""
    import torch

    model = getattr(text_encoder, "text_model", text_encoder)   # transformers 4.x keeps the level
    stream = [model.embeddings.token_embedding, model.embeddings.position_embedding]
    for layer in model.encoder.layers:
        stream += [layer.self_attn.out_proj, layer.mlp.fc2]
    with torch.no_grad():
        for module in stream:
            for tensor in (module.weight, getattr(module, "bias", None)):
                if tensor is not None:
                    tensor.mul_(gain)


def build_bench_model(family: Family, out_dir: str | Path, calibration_images, side: int, seed: int = 0) -> dict:
    """A random ``family`` model, its VAE calibrated on ``calibration_images``, saved as a diffusers
    folder at ``out_dir`` by sdft's own writer (its text encoder in the layout every transformers
    version reads: kohya's pinned 4.x loads a 5.x ``save_pretrained`` folder's text encoder as
    random weights, with only a warning). Returns the calibration figures."""
    if family.flavour == "sdxl":
        return _build_sdxl(family, out_dir, calibration_images, side, seed)
    import torch
    from diffusers import UNet2DConditionModel

    from engine.models.save import save_model
    from engine.models.text_encoding import final_layer_norm
    from engine.models.tiny import TinySpec, build_tiny_components, tiny_unet_config

    spec = TinySpec(family.flavour, seed=seed)
    parts = build_tiny_components(spec)
    unet = UNet2DConditionModel(**{**tiny_unet_config(spec), "norm_num_groups": UNET_NORM_GROUPS})
    vae = parts["vae"].eval()
    figures = calibrate_vae(vae, load_pixels(calibration_images, side))
    with torch.no_grad():
        final_layer_norm(parts["text_encoder"]).weight.mul_(TEXT_GAIN)
    save_model(out_dir, unet=unet, text_encoder=parts["text_encoder"], vae=vae, v2=family.flavour == "sd2",
               v_parameterization=family.v_prediction, fmt="diffusers_safetensors", precision="float",
               tokenizer=parts["tokenizer"])
    return figures


def _build_sdxl(family: Family, out_dir: str | Path, calibration_images, side: int, seed: int) -> dict:
    """The tiny SDXL model (engine/families/sdxl/tiny.py), its VAE calibrated to SDXL's scale and
    its text states raised by TEXT_GAIN, saved as a diffusers folder by the SDXL adapter."""
    from types import SimpleNamespace

    from engine.families import family as family_adapter
    from engine.families.sdxl.conditioning import VAE_SCALE_FACTOR
    from engine.families.sdxl.tiny import TinySdxlSpec, build_tiny_sdxl_components

    parts = build_tiny_sdxl_components(TinySdxlSpec(seed=seed, v_prediction=family.v_prediction))
    vae = parts["vae"].eval()
    figures = calibrate_vae(vae, load_pixels(calibration_images, side), VAE_SCALE_FACTOR)
    for name in ("text_encoder", "text_encoder_2"):
        scale_residual_stream(parts[name], TEXT_GAIN)
    model = SimpleNamespace(**parts, scheduler_config=dict(parts["scheduler"].config), logit_scale=None,
                            zero_terminal_snr=False)
    family_adapter("sdxl").save(out_dir, model, v_prediction=family.v_prediction, fmt="diffusers_safetensors",
                                precision="float")
    return figures
