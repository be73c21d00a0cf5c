"""The base model as ``--check`` sees it: found, supported, and its kind read from headers.

Nothing here loads weights. A ``.safetensors`` file is opened for its header only (tensor
names, shapes and metadata); a diffusers folder for its ``config.json`` files. The rules
that decide SD1/SD2 and v-prediction are the loader's own (``engine.models.detect``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine import families
from engine.config.problems import ProblemList

MODEL_KEY = "model.pretrained_model_name_or_path"
_SD1_TEXT_LAYER = re.compile(r"^cond_stage_model\.transformer\.(?:text_model\.)?encoder\.layers\.(\d+)\.")


@dataclass
class ModelProbe:
    """What the headers say; None where only loading can tell."""

    v2: bool | None = None
    v_prediction: bool | None = None
    text_layers: int | None = None     # layers of the text encoder (clip_skip must not exceed them)
    context_dim: int | None = None     # the U-Net's cross-attention width (768 SD1, 1024 SD2, 2048 SDXL)
    kind: str = ""                     # "diffusers folder", "single file", ...: what was looked at
    error: str | None = None           # why the model cannot be used, when it cannot
    lines: list[str] = field(default_factory=list)
    family_name: str | None = None     # a family told by its layout (SDXL); SD1/SD2 follow from v2

    @property
    def family(self) -> str | None:
        if self.family_name is not None:
            return self.family_name
        return None if self.v2 is None else "sd2" if self.v2 else "sd1"

    @property
    def small(self) -> bool:
        """A text width other than the family's full size (SD 768/1024, SDXL 2048): a tiny test model."""
        full = (2048,) if self.family == "sdxl" else (768, 1024)
        return self.context_dim is not None and self.context_dim not in full

    def label(self) -> str:
        """One line for the wizard, e.g. "SD 2.x, v-prediction (diffusers folder)"."""
        if self.error or self.family is None:
            return self.error or self.kind or "not detected"
        name = families.family(self.family).label
        pred = {True: ", v-prediction", False: ", epsilon", None: ""}[self.v_prediction]
        kind = f"cross_attention_dim {self.context_dim}: a small test model" if self.small else self.kind
        return name + pred + (f" ({kind})" if kind else "")

    @property
    def default_side(self) -> int:
        """The resolution training falls back to: the family's native side (768 for SD 2.x 768-v)."""
        return 512 if self.family is None else families.family(self.family).native_side(bool(self.v_prediction))


def probe_model(config, problems: ProblemList) -> ModelProbe:
    """Check model.pretrained_model_name_or_path (and model.vae, model.tokenizer_dir)."""
    from engine.models import load
    from engine.models.checkpoint_io import is_safetensors
    from engine.models.errors import ModelLoadError

    m = config.model
    probe = ModelProbe()
    _check_optional_path(config, problems, "model.vae", m.vae, folder_ok=True, file_ok=True)
    _check_optional_path(config, problems, "model.tokenizer_dir", m.tokenizer_dir, folder_ok=True, file_ok=False)
    if not m.pretrained_model_name_or_path:
        problems.add(MODEL_KEY, "no base model given", "a .safetensors/.ckpt file, a diffusers folder or a hub id")
        return probe
    source = config.resolve(m.pretrained_model_name_or_path)
    path = Path(os.path.expanduser(str(source)))
    try:
        if _is_sdxl(path):
            _probe_sdxl(path, config, probe)
        elif path.is_dir():
            _probe_folder(path, config, probe)
        elif path.is_file() and is_safetensors(path):
            _probe_safetensors(path, config, probe)
        elif path.is_file():
            _probe_pickle(path, config, probe)
        elif load._HUB_ID.match(str(source)) and not str(source).lower().endswith(load.SINGLE_FILE_EXT):
            _probe_hub_id(str(source), probe)
        else:
            problems.add(MODEL_KEY, f"no such file or folder: {source} (looked beside the run file and in the "
                         "current folder)", "give a .safetensors/.ckpt file, a diffusers folder or a hub id")
            return probe
    except ModelLoadError as exc:
        problems.add(MODEL_KEY, str(exc), "point it to a full SD 1.x, 2.x or SDXL model")
        return probe
    for line in probe.lines:
        problems.add(MODEL_KEY, line, "", "note")
    return probe


def look_at_model(source: str, base_dir: Path | str = ".") -> ModelProbe:
    """The wizard's quick look at a model: the probe ``--check`` runs, on the model alone."""
    from engine.config.schema import RunConfig

    if not (source or "").strip():
        return ModelProbe(kind="no model chosen")
    config = RunConfig(base_dir=str(base_dir))
    config.model.pretrained_model_name_or_path = source.strip()
    problems = ProblemList(file="")
    probe = probe_model(config, problems)
    errors = [p.message for p in problems.items if p.severity == "error"]
    probe.error = errors[0] if errors else None
    return probe


def _check_optional_path(config, problems, key, value, *, folder_ok, file_ok) -> None:
    if not value:
        return
    from engine.models import load

    path = Path(os.path.expanduser(str(config.resolve(value))))
    if (folder_ok and path.is_dir()) or (file_ok and path.is_file()):
        return
    if key == "model.vae" and load._HUB_ID.match(str(value)) and not str(value).lower().endswith(load.SINGLE_FILE_EXT):
        return
    what = "folder" if not file_ok else "file or folder"
    problems.add(key, f"no such {what}: {value}", "check the path (relative paths start at the run file's folder)")


def _probe_folder(folder: Path, config, probe: ModelProbe) -> None:
    from engine.models.config_check import check_component_config
    from engine.models.detect import check_supported_folder, detect_v2_folder, resolve_v2, resolve_v_parameterization
    from engine.models.errors import ModelLoadError

    if not (folder / "unet").is_dir() and not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{folder}: a folder, but not a diffusers model (no model_index.json or unet/); "
                             "point to a diffusers folder or to a .safetensors/.ckpt file")
    needed = ["unet", "text_encoder"] + ([] if config.model.vae else ["vae"])
    missing = [p for p in needed if not (folder / p / "config.json").is_file()]
    if missing:
        raise ModelLoadError(f"{folder}: the diffusers folder lacks {', '.join(p + '/' for p in missing)}; "
                             "a base model needs unet/, vae/ and text_encoder/ with config.json and weights")
    ucfg = check_component_config(folder, "unet")
    tcfg = check_component_config(folder, "text_encoder")
    for component in needed:
        if component == "vae":
            check_component_config(folder, "vae")
        _check_component_weights(folder / component, config)
    try:
        sched_path = folder / "scheduler" / "scheduler_config.json"
        sched = json.loads(sched_path.read_text("utf-8")) if sched_path.is_file() else None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{sched_path}: cannot be read: {exc}") from None
    check_supported_folder(folder, ucfg)
    probe.kind = "diffusers folder"
    probe.context_dim = ucfg.get("cross_attention_dim")
    probe.text_layers = tcfg.get("num_hidden_layers")
    detected, why = detect_v2_folder(ucfg.get("cross_attention_dim", 768), tcfg.get("hidden_act", ""))
    v2 = resolve_v2(config.model.v2, detected, why)
    probe.v2 = v2.value
    probe.lines.append(v2.line)
    _probe_prediction(config, probe, resolve_v_parameterization(config.model.v_parameterization, v2=v2.value,
                                                                 scheduler_config=sched))


def _check_component_weights(component: Path, config) -> None:
    """Each weights file of a diffusers component, read as training reads it: a safetensors
    header's layout, a pickle (``.bin``) by the weights-only unpickler (engine/models/checkpoint_io.py)."""
    for weights in sorted(component.glob("*.safetensors")):
        _checked_header(weights)
    for weights in sorted(component.glob("*.bin")):
        _scanned_pickle(weights, config)


def _checked_header(path: Path):
    from engine.models.checkpoint_io import unreadable_safetensors
    from engine.models.errors import ModelLoadError
    from engine.models.safetensors_header import HeaderError, check_layout

    try:
        return check_layout(path)
    except (OSError, HeaderError) as exc:
        raise ModelLoadError(unreadable_safetensors(path, exc)) from None


def _scanned_pickle(path: Path, config):
    """The tensors of a pickle checkpoint, or None when only the (allowed) unsafe unpickler
    reads it; --check never runs a pickle's code."""
    from engine.models.checkpoint_io import scan_state_dict

    return scan_state_dict(path, allow_unsafe_pickle=config.model.allow_unsafe_pickle)


def _probe_pickle(path: Path, config, probe: ModelProbe) -> None:
    scanned = _scanned_pickle(path, config)
    if scanned is None:
        probe.kind = "pickle checkpoint: loaded as an unsafe pickle, as allowed"
        probe.lines.append(f"{path.name}: needs the unsafe unpickler (model.allow_unsafe_pickle = true); --check "
                           "does not run it, so SD 1.x/2.x and v-prediction are detected when it loads")
        return
    tensors, metadata, _info = scanned
    _probe_shapes(path, tensors, metadata, config, probe, "pickle checkpoint")


def _probe_safetensors(path: Path, config, probe: ModelProbe) -> None:
    header = _checked_header(path)
    _probe_shapes(path, header.tensors, header.metadata, config, probe, "single file")


def _probe_shapes(path: Path, shapes, metadata, config, probe: ModelProbe, kind: str) -> None:
    """SD 1.x/2.x, v-prediction and the text encoder's depth from a file's tensor shapes."""
    from engine.models.detect import check_supported, detect_v2_single_file, resolve_v2, resolve_v_parameterization

    check_supported(shapes, str(path))
    probe.kind = kind
    probe.context_dim = next((info.shape[-1] for name, info in shapes.items()
                              if name.endswith("attn2.to_k.weight")), None)
    detected, why = detect_v2_single_file(shapes)
    if not detected:   # SD1's CLIP: count its layers (SD2's layer count depends on how it loads)
        found = {int(m.group(1)) for k in shapes if (m := _SD1_TEXT_LAYER.search(k))}
        probe.text_layers = len(found) or None
    v2 = resolve_v2(config.model.v2, detected, why)
    probe.v2 = v2.value
    probe.lines.append(v2.line)
    _probe_prediction(config, probe, resolve_v_parameterization(config.model.v_parameterization, v2=v2.value,
                                                                 metadata=metadata))


def _probe_prediction(config, probe: ModelProbe, found) -> None:
    if found.source == "default" and probe.v2:
        # The loader runs AUTOMATIC1111's test forward pass here; --check loads no weights.
        probe.lines.append("prediction: not in the file's metadata; a test forward pass decides when the model "
                           "loads (set model.v_parameterization to skip it)")
        return
    probe.v_prediction = found.value
    probe.lines.append(found.line)


def _is_sdxl(path: Path) -> bool:
    """An SDXL folder or file, told by its layout (engine/families/sources.py)."""
    from engine.families.sources import detect_family

    found = detect_family(path) if path.exists() else None
    return found is not None and found.name == "sdxl"


def _probe_sdxl(path: Path, config, probe: ModelProbe) -> None:
    """An SDXL folder or single file: its parts, weights' headers and prediction, as the SDXL
    loader reads them (engine/families/sdxl/load.py, detect.py)."""
    from engine.families.sdxl.detect import detect_zero_terminal_snr, resolve_prediction
    from engine.families.sdxl.load import _check_folder

    probe.family_name = "sdxl"
    setting = config.model.v_parameterization
    if path.is_dir():
        ucfg = _check_folder(path, config.model.vae)
        parts = ["unet", "text_encoder", "text_encoder_2"] + ([] if config.model.vae else ["vae"])
        for part in parts:
            _check_component_weights(path / part, config)
        sched_path = path / "scheduler" / "scheduler_config.json"
        try:
            sched = json.loads(sched_path.read_text("utf-8")) if sched_path.is_file() else None
        except (OSError, ValueError):
            sched = None
        sched = sched if isinstance(sched, dict) else None
        probe.kind, probe.context_dim = "diffusers folder", ucfg.get("cross_attention_dim")
        found = [resolve_prediction(setting, scheduler_config=sched), detect_zero_terminal_snr(scheduler_config=sched)]
    else:
        header = _checked_header(path)
        probe.kind = "single file"
        probe.context_dim = next((info.shape[-1] for name, info in header.tensors.items()
                                  if name.endswith("attn2.to_k.weight")), None)
        found = [resolve_prediction(setting, tensors=header.tensors, metadata=header.metadata),
                 detect_zero_terminal_snr(tensors=header.tensors, metadata=header.metadata)]
    probe.lines.append("model: SDXL, detected from its layout")
    probe.v_prediction = found[0].value
    probe.lines += [d.line for d in found]


def _probe_hub_id(repo_id: str, probe: ModelProbe) -> None:
    from engine.models.errors import ModelLoadError

    probe.kind = "hub id: detected when loading"
    from engine.models.hub import is_offline, offline_model_message

    if is_offline():   # the loader downloads nothing when offline (see engine.models.load)
        raise ModelLoadError(offline_model_message(repo_id))
    probe.lines.append(f"{repo_id}: a Hugging Face hub id, downloaded (or taken from the cache) when "
                       "training starts")
