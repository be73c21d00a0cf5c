"""NovelAI-style hypernetworks, compatible with AUTOMATIC1111 and kohya's old files.

A hypernetwork holds, per context width ``d``, a *pair* of residual MLPs: index 0 transforms
the input of an attention's ``to_k``, index 1 the input of its ``to_v``:
``f(x) = x + m·(W2·(W1·x + b1) + b2)`` with ``W1: d→2d`` and ``W2: 2d→d`` (layer structure
``[1, 2, 1]``, no activation, norm or dropout). In self-attention the input is the hidden
states (320/640/1280 wide in SD), in cross-attention the text context (768 SD1, 1024 SD2).

It is hooked into the U-Net by :class:`HypernetworkAttnProcessor`, which wraps whatever
processor diffusers had installed (SDPA, xformers, plain) instead of copying the U-Net, so
the attention kernel stays the user's choice. The hypernetwork is not a sub-module of the
U-Net: the U-Net's state dict, dtype and ``requires_grad`` are untouched.

Files: the AUTOMATIC1111 ``.pt`` layout (a pickle of plain dicts, read with
``weights_only=True``; NovelAI's old ``linear1``/``linear2`` names accepted) or a
``.safetensors`` file with flat keys ``<width>.<0|1>.linear.<0|1>.<weight|bias>`` and the
descriptive keys as string metadata.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from engine.atomic import atomic_path

# Context widths of the real models (what plan.py counts); other sizes come from the U-Net.
WIDTHS = {"sd1": (320, 640, 768, 1280), "sd2": (320, 640, 1024, 1280)}
LAYER_STRUCTURE = [1, 2, 1]
INIT_STD = 0.01
# A1111's descriptive keys, as sdft writes them (values of the only structure supported).
DESCRIPTIVE = {
    "layer_structure": LAYER_STRUCTURE,
    "activation_func": "linear",
    "is_layer_norm": False,
    "use_dropout": False,
    "weight_initialization": "Normal",
}
_OLD_NAMES = {"linear1": "linear.0", "linear2": "linear.1"}   # NovelAI's leaked files
_FLAT_KEY = re.compile(r"^(\d+)\.([01])\.(.+)$")


class HypernetworkError(ValueError):
    """A hypernetwork file that sdft cannot use; the message names the file and the fix."""


Warn = Callable[[str], None]


def _no_warn(_text: str) -> None:
    pass


class HypernetworkModule(nn.Module):
    """One residual MLP ``x + m·linear(x)`` for width ``dim`` (state dict ``linear.0.*``, ``linear.1.*``)."""

    def __init__(self, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.dim = dim
        self.linear = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim))
        with torch.no_grad():
            for layer in self.linear:
                layer.weight.normal_(0.0, INIT_STD, generator=generator)
                layer.bias.zero_()

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        # The MLP runs in the hypernetwork's dtype (fp32 in training; autocast may lower it);
        # the result goes back to the dtype the attention works in.
        weight = self.linear[0].weight
        delta = self.linear(x.to(weight.dtype) if not torch.is_autocast_enabled(x.device.type) else x)
        return x + (multiplier * delta).to(x.dtype)


class Hypernetwork(nn.Module):
    """Pairs of :class:`HypernetworkModule` keyed by width, plus the file's descriptive fields."""

    def __init__(self, widths: Iterable[int] = WIDTHS["sd1"], *, name: str = "hypernetwork",
                 generator: torch.Generator | None = None):
        super().__init__()
        self.name = name
        self.step = 0
        self.sd_checkpoint_name: str | None = None
        self.multiplier = 1.0
        self.pairs = nn.ModuleDict()
        # Widths a loaded file had that this U-Net never uses: kept (and saved back), not trained.
        self.unused: dict[int, list[dict[str, torch.Tensor]]] = {}
        for width in sorted(set(int(w) for w in widths)):
            self.add_width(width, generator)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(int(w) for w in self.pairs))

    def add_width(self, width: int, generator: torch.Generator | None = None) -> None:
        self.pairs[str(width)] = nn.ModuleList([HypernetworkModule(width, generator),
                                                HypernetworkModule(width, generator)])

    def transform(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """``f_index(x)`` for the pair of ``x``'s width; ``x`` unchanged when there is none."""
        pair = self.pairs[str(x.shape[-1])] if str(x.shape[-1]) in self.pairs else None
        return x if pair is None else pair[index](x, self.multiplier)

    def fit_to_widths(self, widths: Iterable[int], *, generator: torch.Generator | None = None,
                      warn: Warn = _no_warn) -> None:
        """Match a loaded hypernetwork to a U-Net: create missing widths, set extra ones aside."""
        wanted = set(int(w) for w in widths)
        extra = [w for w in self.widths if w not in wanted]
        if extra:
            warn(f"hypernetwork {self.name!r} has widths {extra} that this model does not use: "
                 "they are kept in the saved file but not trained")
            for width in extra:
                self.unused[width] = [m.state_dict() for m in self.pairs.pop(str(width))]
        missing = sorted(wanted - set(self.widths))
        if missing:
            for width in missing:
                if width in self.unused:
                    self._load_pair(width, self.unused.pop(width), "set-aside width")
                else:
                    self.add_width(width, generator)
            warn(f"hypernetwork {self.name!r} had no layers for widths {missing}: created them "
                 "(they start as an identity)")

    def _load_pair(self, width: int, pair: list[Mapping[str, torch.Tensor]], origin: str) -> None:
        if str(width) not in self.pairs:
            self.add_width(width)
        for module, sd in zip(self.pairs[str(width)], pair, strict=True):
            try:
                module.load_state_dict(sd)
            except RuntimeError as exc:
                raise HypernetworkError(f"{origin}: width {width} has tensors of the wrong shape ({exc})") from None

    # ---- flat tensors (safetensors files and resume states use the same names)
    def flat_state(self, *, include_unused: bool = True) -> dict[str, torch.Tensor]:
        out = {}
        pairs = {w: [m.state_dict() for m in self.pairs[str(w)]] for w in self.widths}
        if include_unused:
            pairs.update(self.unused)
        for width, pair in sorted(pairs.items()):
            for index, sd in enumerate(pair):
                for key, tensor in sd.items():
                    out[f"{width}.{index}.{key}"] = tensor
        return out


# ================================================================ the U-Net hook

def unet_kv_widths(unet) -> tuple[int, ...]:
    """Input widths of every attention's ``to_k`` in ``unet``: the widths a hypernetwork needs.

    Real SD1 gives (320, 640, 768, 1280), SD2 (320, 640, 1024, 1280); tiny test models other
    numbers, which is why widths are read from the model rather than assumed.
    """
    from diffusers.models.attention_processor import Attention

    return tuple(sorted({m.to_k.in_features for m in unet.modules() if isinstance(m, Attention)}))


class _KVView:
    """``attn`` as the wrapped processor sees it: ``to_k``/``to_v`` get the hypernetwork first.

    Every other attribute (heads, norms, to_q, to_out, masks, scores) is the real module's.
    """

    def __init__(self, attn, hypernetwork: Hypernetwork):
        self._attn = attn
        self._hn = hypernetwork

    def to_k(self, x: torch.Tensor) -> torch.Tensor:
        return self._attn.to_k(self._hn.transform(x, 0))

    def to_v(self, x: torch.Tensor) -> torch.Tensor:
        return self._attn.to_v(self._hn.transform(x, 1))

    def __getattr__(self, name: str):
        return getattr(self._attn, name)


class HypernetworkAttnProcessor:
    """Wraps a diffusers attention processor so K and V see ``f_0(kv_in)`` and ``f_1(kv_in)``.

    ``kv_in`` is whatever the inner processor passes to ``to_k``/``to_v``: the normalised
    hidden states in self-attention, the text context in cross-attention. Q is unchanged.
    Not an ``nn.Module`` on purpose, so the hypernetwork never joins the U-Net's parameters.
    """

    def __init__(self, inner, hypernetwork: Hypernetwork):
        self.inner = inner
        self.hypernetwork = hypernetwork

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        return self.inner(_KVView(attn, self.hypernetwork), hidden_states,
                          encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs)


def install_hypernetwork(unet, hypernetwork: Hypernetwork) -> None:
    """Hook ``hypernetwork`` into every attention of ``unet`` (replacing one installed before).

    Set the attention kernel (SDPA, xformers, plain) first: this wraps whatever is there.
    """
    processors = {name: HypernetworkAttnProcessor(_inner(p), hypernetwork)
                  for name, p in unet.attn_processors.items()}
    unet.set_attn_processor(processors)


def remove_hypernetwork(unet) -> None:
    """Put back the processors :func:`install_hypernetwork` wrapped."""
    unet.set_attn_processor({name: _inner(p) for name, p in unet.attn_processors.items()})


def _inner(processor):
    return processor.inner if isinstance(processor, HypernetworkAttnProcessor) else processor


# ================================================================ files

def save_hypernetwork(path: str | Path, hypernetwork: Hypernetwork, *, fmt: str | None = None,
                      name: str | None = None, step: int | None = None, sd_checkpoint_name: str | None = None,
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``hypernetwork`` atomically as A1111 ``.pt`` or ``.safetensors`` (``fmt`` or the suffix).

    Tensors are saved in fp32 (A1111 loads them into fp32 modules). ``metadata`` (string
    values, e.g. sdft.*) goes into a safetensors header; the ``.pt`` layout has no room for it.
    """
    path = Path(path)
    fmt = fmt or ("safetensors" if path.suffix == ".safetensors" else "pt")
    if fmt not in ("pt", "safetensors"):
        raise HypernetworkError(f"hypernetwork.save_format = {fmt!r}: use \"pt\" or \"safetensors\"")
    descriptive = {
        **DESCRIPTIVE,
        "name": name or hypernetwork.name,
        "step": int(step if step is not None else hypernetwork.step),
        "sd_checkpoint_name": sd_checkpoint_name if sd_checkpoint_name is not None else hypernetwork.sd_checkpoint_name,
    }
    flat = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in hypernetwork.flat_state().items()}
    with atomic_path(path) as tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in descriptive.items() if v is not None}
            header.update({k: str(v) for k, v in (metadata or {}).items()})
            save_file(flat, str(tmp), metadata=header)
        else:
            data: dict = {}
            for key, tensor in flat.items():
                width, index, rest = _FLAT_KEY.match(key).groups()
                pair = data.setdefault(int(width), [{}, {}])
                pair[int(index)][rest] = tensor
            data.update(descriptive)
            torch.save(data, tmp)
    return path


def load_hypernetwork(path: str | Path, *, warn: Warn = _no_warn) -> Hypernetwork:
    """Read a hypernetwork file in any supported layout (sniffed from the bytes, not the name).

    kohya wrote pickles even under a ``.safetensors`` name, so the content decides.
    """
    path = Path(path)
    if not path.is_file():
        raise HypernetworkError(f"hypernetwork file {path} does not exist; check hypernetwork.weights")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if _looks_like_safetensors(head):
        pairs, info = _read_safetensors(path)
    else:
        pairs, info = _read_pickle(path)
    _check_structure(path, info)
    if not pairs:
        raise HypernetworkError(f"{path} holds no hypernetwork layers (no integer width keys)")
    hn = Hypernetwork(widths=(), name=str(info.get("name") or path.stem))
    hn.step = _as_int(info.get("step"), 0)
    hn.sd_checkpoint_name = info.get("sd_checkpoint_name") or None
    for width, pair in sorted(pairs.items()):
        hn._load_pair(width, [_normalise_names(path, width, sd) for sd in pair], str(path))
    return hn


def hypernetwork_for_unet(unet, *, weights: str | Path | None = None, seed: int | None = None,
                          name: str = "hypernetwork", warn: Warn = _no_warn) -> Hypernetwork:
    """A hypernetwork that fits ``unet``: loaded from ``weights`` (to continue) or new.

    A new one is initialised from ``seed`` with its own generator, so the global RNG (and a
    run's reproducibility) is not disturbed.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    widths = unet_kv_widths(unet)
    if weights:
        hn = load_hypernetwork(weights, warn=warn)
        hn.fit_to_widths(widths, generator=generator, warn=warn)
        return hn
    return Hypernetwork(widths, name=name, generator=generator)


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object. Torch zips start with "PK",
    # legacy pickles with 0x80.
    return len(head) > 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    pairs: dict[int, list[dict]] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        for key in fh.keys():
            match = _FLAT_KEY.match(key)
            if not match:
                raise HypernetworkError(
                    f"{path}: tensor {key!r} is not a hypernetwork key "
                    "(expected <width>.<0|1>.linear.<0|1>.<weight|bias>)")
            width, index, rest = match.groups()
            pairs.setdefault(int(width), [{}, {}])[int(index)][rest] = fh.get_tensor(key)
    info: dict = {}
    for key, value in meta.items():
        if key in ("layer_structure", "is_layer_norm", "use_dropout", "step"):
            try:
                info[key] = json.loads(value)
            except ValueError:
                raise HypernetworkError(f"{path}: metadata {key} = {value!r} is not valid JSON") from None
        else:
            info[key] = value
    return pairs, info


def _read_pickle(path: Path) -> tuple[dict, dict]:
    import pickle

    try:
        # A file object, since torch.load hands paths named *.safetensors to safetensors.
        with open(path, "rb") as fh:
            data = torch.load(fh, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise HypernetworkError(
            f"{path} is not a hypernetwork file sdft can read safely ({str(exc).splitlines()[0]}). "
            "Hypernetworks must be plain A1111/NovelAI .pt files (tensors and simple values) or .safetensors"
        ) from None
    if not isinstance(data, dict):
        raise HypernetworkError(f"{path} does not hold a dict of layers; it is not a hypernetwork file")
    pairs: dict[int, list[dict]] = {}
    info: dict = {}
    for key, value in data.items():
        if isinstance(key, int):
            if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, dict) for v in value):
                raise HypernetworkError(f"{path}: width {key} must hold a pair of state dicts (key, value)")
            pairs[key] = [dict(value[0]), dict(value[1])]
        else:
            info[key] = value
    return pairs, info


def _check_structure(path: Path, info: Mapping) -> None:
    """Only NovelAI's structure is supported; say so clearly for anything else."""
    structure = info.get("layer_structure")
    if structure is not None and _as_floats(structure) != [float(x) for x in LAYER_STRUCTURE]:
        raise HypernetworkError(
            f"{path}: layer_structure {structure!r} is not supported; sdft trains and loads only "
            "NovelAI's [1, 2, 1] (one hidden layer twice as wide)")
    activation = info.get("activation_func")
    if activation not in (None, "linear"):
        raise HypernetworkError(
            f"{path}: activation_func {activation!r} is not supported; sdft supports only \"linear\" (none)")
    if info.get("is_layer_norm") in (True, "true", "True"):
        raise HypernetworkError(f"{path}: layer norm (is_layer_norm = true) is not supported by sdft")
    # activate_output and dropout need no check: with a linear activation A1111 adds no
    # output activation, and dropout only shifts layer indices (see _normalise_names).


def _normalise_names(path: Path, width: int, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``linear.0/1.*`` names from NovelAI's ``linear1/2.*`` or A1111's dropout-shifted indices."""
    renamed = {}
    for key, tensor in sd.items():
        head, _, leaf = key.rpartition(".")
        renamed[f"{_OLD_NAMES.get(head, head)}.{leaf}"] = tensor
    indices = sorted({int(m.group(1)) for k in renamed if (m := re.match(r"^linear\.(\d+)\.weight$", k))})
    unknown = [k for k in renamed if not re.match(r"^linear\.\d+\.(weight|bias)$", k)]
    if unknown or len(indices) != 2:
        raise HypernetworkError(
            f"{path}: width {width} has layers {sorted(sd)}; sdft expects two linear layers "
            "(linear.0, linear.1) as NovelAI's [1, 2, 1] structure has")
    # A1111 numbers layers with dropout in between (linear.0, linear.2): renumber in order.
    out = {}
    for new, old in enumerate(indices):
        for leaf in ("weight", "bias"):
            key = f"linear.{old}.{leaf}"
            if key not in renamed:
                raise HypernetworkError(f"{path}: width {width} lacks {key}")
            out[f"linear.{new}.{leaf}"] = renamed[key]
    return out


def _as_floats(values) -> list[float] | None:
    """A numeric list as floats; None for anything else (then reported as unsupported)."""
    try:
        return [float(x) for x in values]
    except (TypeError, ValueError):
        return None


def _as_int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


__all__ = [
    "WIDTHS", "Hypernetwork", "HypernetworkModule", "HypernetworkError", "HypernetworkAttnProcessor",
    "unet_kv_widths", "install_hypernetwork", "remove_hypernetwork", "save_hypernetwork",
    "load_hypernetwork", "hypernetwork_for_unet",
]
