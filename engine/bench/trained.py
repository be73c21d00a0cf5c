"""A trained model as the evaluator sees it: the base model's architecture with a trained file's
weights, whoever wrote the file.

The base folder (a diffusers folder, SD or SDXL) says the architecture; a single file alone
may not: a file kohya saves from a small model carries no config, and guessing one from tensor
shapes (SD's head counts and GroupNorm groups) builds a different model from the same weights. So every
trained file, sdft's or kohya's, is read onto the base model's modules, strictly: a tensor
that is missing or the wrong shape is an error, never skipped.
"""

from __future__ import annotations

from pathlib import Path


class TrainedModelError(ValueError):
    """The trained file does not fit the base model."""


def load_trained(base_folder: str | Path, trained: str | Path | None = None):
    """The base model (a LoadedModel, fp32 on the CPU) with the U-Net, text encoder(s) and VAE
    weights of ``trained``: a single file, or a diffusers folder (what diffusers' training
    scripts save); ``trained`` None gives the untrained base."""
    from engine.families.sources import load_base

    model = load_base(str(base_folder), hash_file=False)
    if trained is not None and Path(trained).is_dir():
        _copy_weights_onto(model, load_base(str(trained), hash_file=False), Path(trained))
    elif trained is not None:
        _read_weights_onto(model, Path(trained))
    return model


def _parts(model) -> list[tuple[str, object]]:
    """The base model's weighted parts by name (SDXL adds its second text encoder)."""
    parts = [("U-Net", model.unet), ("text encoder", model.text_encoder), ("VAE", model.vae)]
    if getattr(model, "text_encoder_2", None) is not None:
        parts.insert(2, ("second text encoder", model.text_encoder_2))
    return parts


def _copy_weights_onto(model, other, path: Path) -> None:
    theirs = dict(_parts(other))
    states = {name: theirs[name].state_dict() for name, _ in _parts(model) if name in theirs}
    _load_strictly(path, model, states)


def _load_strictly(path: Path, model, states: dict) -> None:
    """Each part's tensors into the base model's module; a missing, extra or misshapen one is an error."""
    for name, module in _parts(model):
        if name not in states:
            raise TrainedModelError(f"{path}: it has no {name}, which the base model {model.source} has "
                                    "(a model of another family?)")
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
    if getattr(model, "family", None) == "sdxl":
        _load_strictly(path, model, _sdxl_states(sd, model, path))
        return
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


def _sdxl_states(sd: dict, model, path: Path) -> dict:
    """An SDXL single file (kohya's keys, as sdft and kohya save it) in the base model's names."""
    from engine.families.sdxl import keys as sk
    from engine.families.sdxl.single_file import te2_state_for
    from engine.models import convert as cv

    try:
        states = sk.single_file_to_diffusers(sd, unet_keys=model.unet.state_dict().keys(),
                                             vae_state=model.vae.state_dict(),
                                             te2_keys=model.text_encoder_2.state_dict().keys())
    except cv.ConversionError as exc:
        raise TrainedModelError(f"{path} does not fit the base model {model.source} (SDXL): {exc}") from exc
    return {"U-Net": states.unet, "VAE": states.vae,
            "text encoder": cv.adapt_text_keys(states.text_encoder, model.text_encoder.state_dict().keys()),
            "second text encoder": te2_state_for(model.text_encoder_2.state_dict().keys(), states.text_encoder_2)}
