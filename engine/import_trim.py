"""Import only the parts of diffusers a run uses.

diffusers' top level is lazy, but three of its model packages are not: importing
``diffusers.models.autoencoders`` (for AutoencoderKL) runs an ``__init__`` that imports every
autoencoder it ships, whose ``vae`` module pulls in ``diffusers.models.unets`` and
``diffusers.models.transformers``, each importing every model of its kind (video, audio, DiT
families ...). sdft needs three classes. ``trim_diffusers`` registers
those packages as lazy ones before diffusers imports them: a package's names resolve on first use
from the submodule its own ``__init__`` names, so every class stays importable where diffusers
puts it, and only what is used is loaded (measured in README, Performance).

It also tells diffusers that bitsandbytes is absent: diffusers imports it with its model classes
to load 4/8-bit quantized models, which sdft never does (its 8-bit optimizers import bitsandbytes
themselves when chosen); the import costs about a second and prints a CPU-kernel notice.

Both must run before ``diffusers.models`` is first used, and both only change what diffusers
imports, never what a class does. An ``__init__`` of a shape this module does not recognise is left
to diffusers (the only cost is the time).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

LAZY_PACKAGES = ("autoencoders", "unets", "transformers", "controlnets")


def trim_diffusers() -> None:
    """Make diffusers' eager model packages lazy and keep it off bitsandbytes (see above)."""
    if "diffusers.quantizers" in sys.modules:
        return  # too late: the models are already imported
    from diffusers.utils import import_utils

    if hasattr(import_utils, "_bitsandbytes_available"):
        import_utils._bitsandbytes_available = False
    import diffusers.models as models  # a lazy module itself: imports no model

    for package in LAZY_PACKAGES:
        _register_lazy(models, package)


def exported_names(init_file: Path) -> dict[str, str] | None:
    """{name: submodule} for a package ``__init__`` made only of ``from .sub import Name`` lines
    (optionally under ``if is_..._available():``); None for any other shape."""
    names: dict[str, str] = {}

    def plain(body) -> bool:
        for node in body:
            if isinstance(node, ast.If):
                if not (plain(node.body) and plain(node.orelse)):
                    return False
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    names.update({alias.asname or alias.name: node.module for alias in node.names})
            elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
                return False     # a statement with an effect: let diffusers run it
        return True

    try:
        tree = ast.parse(init_file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    return names if plain(tree.body) and names else None


def _register_lazy(parent, package: str) -> None:
    name = f"{parent.__name__}.{package}"
    if name in sys.modules:
        return
    init_file = Path(parent.__path__[0]) / package / "__init__.py"
    names = exported_names(init_file)
    if names is None:
        return
    spec = importlib.util.spec_from_file_location(name, init_file, submodule_search_locations=[str(init_file.parent)])
    module = importlib.util.module_from_spec(spec)

    def lazy_attribute(attribute: str):
        if attribute not in names:
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
        value = getattr(importlib.import_module(f"{name}.{names[attribute]}"), attribute)
        setattr(module, attribute, value)
        return value

    module.__getattr__ = lazy_attribute
    module.__dir__ = lambda: sorted(set(names) | set(vars(module)))
    sys.modules[name] = module
    setattr(parent, package, module)
