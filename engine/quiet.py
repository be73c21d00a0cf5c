"""Keep third-party chatter out of sdft's output.

transformers, diffusers and bitsandbytes log notices at import (optional backends they
cannot find, progress bars for tiny writes) that mean nothing to an sdft user; real
problems still surface as exceptions, which sdft turns into clear messages.
"""

from __future__ import annotations

import logging
import os


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("bitsandbytes", "transformers", "diffusers", "accelerate", "huggingface_hub", "xformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        _keep_diffusers_off_bitsandbytes()
    except (ImportError, AttributeError):
        pass


def _keep_diffusers_off_bitsandbytes() -> None:
    """diffusers imports bitsandbytes with its model classes whenever it is installed, for
    loading 4/8-bit quantized models, which sdft never does (its 8-bit optimizers import
    bitsandbytes themselves when chosen). That import costs about a second of every start and
    prints a CPU-kernel notice; telling diffusers the package is absent skips both. It must run
    before diffusers.models is imported, and only changes what diffusers believes."""
    import sys

    if "diffusers.quantizers" in sys.modules:
        return  # too late: the models are already imported
    from diffusers.utils import import_utils

    if hasattr(import_utils, "_bitsandbytes_available"):
        import_utils._bitsandbytes_available = False
