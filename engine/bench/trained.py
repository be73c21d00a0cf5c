"""A trained model as the evaluator sees it: the base model's architecture with a trained file's
weights, whoever wrote the file.

The base folder (a diffusers folder) says the architecture; a single file alone may not: a file
kohya saves from a small model carries no config, and guessing one from tensor shapes (SD's
head counts and GroupNorm groups) builds a different model from the same weights. So every
trained file, sdft's or kohya's, is read onto the base model's modules, strictly: a tensor
that is missing or the wrong shape is an error, never skipped.
"""

from __future__ import annotations

from pathlib import Path


class TrainedModelError(ValueError):
    """The trained file does not fit the base model."""


def load_trained(base_folder: str | Path, trained: str | Path | None = None):
    """The base model (a LoadedModel, fp32 on the CPU) with the U-Net, text encoder and VAE
    weights of ``trained``: a single file, or a diffusers folder (what diffusers' training
    scripts save); ``trained`` None gives the untrained base."""
    from engine.models.load import load_model

    model = load_model(str(base_folder), hash_file=False)
    if trained is not None and Path(trained).is_dir():
        _copy_weights_onto(model, load_model(str(trained), hash_file=False), Path(trained))
    elif trained is not None:
        _read_weights_onto(model, Path(trained))
    return model


def _copy_weights_onto(model, other, path: Path) -> None:
    _load_strictly(path, model, {"U-Net": other.unet.state_dict(), "text encoder": other.text_encoder.state_dict(),
                                 "VAE": other.vae.state_dict()})


def _load_strictly(path: Path, model, states: dict) -> None:
    """Each part's tensors into the base model's module; a missing, extra or misshapen one is an error."""
    for name, module in (("U-Net", model.unet), ("text encoder", model.text_encoder), ("VAE", model.vae)):
        try:
            module.load_state_dict({k: v.float() for k, v in states[name].items()}, strict=True)
        except RuntimeError as exc:
            raise TrainedModelError(f"{path}: its {name} does not fit the base model {model.source}: "
                                    f"{str(exc)[:300]}") from exc


def _read_weights_onto(model, path: Path) -> None:
    from engine.models import convert as cv
    from engine.models.checkpoint_io import read_state_dict
    from engine.models.errors import ModelLoadError
    from engine.models.load import text_state_from_parts

    sd, metadata, _ = read_state_dict(path)
    parts = cv.split_original(sd)
    if not parts["unet"]:
        raise TrainedModelError(f"{path}: no U-Net tensors (model.diffusion_model.*): not a Stable Diffusion "
                                "checkpoint in the original layout; save it as .safetensors or .ckpt")
    try:
        unet = cv.unet_from_original(parts["unet"], model.unet.state_dict().keys())
        text, _extras = text_state_from_parts(parts, is_v2=model.v2, metadata=metadata, path=path,
                                              sd2_layers=model.text_encoder.config.num_hidden_layers)
        text = cv.adapt_text_keys(text, model.text_encoder.state_dict().keys())
        vae = cv.vae_from_original(parts["vae"], model.vae.state_dict())
    except (cv.ConversionError, ModelLoadError) as exc:
        raise TrainedModelError(f"{path} does not fit the base model {model.source} "
                                f"({'SD2' if model.v2 else 'SD1'}): {exc}") from exc
    _load_strictly(path, model, {"U-Net": unet, "text encoder": text, "VAE": vae})
