"""Keep third-party chatter out of sdft's output.

transformers, diffusers and bitsandbytes log notices at import (optional backends they
cannot find, progress bars for tiny writes) that mean nothing to an sdft user; real
problems still surface as exceptions, which sdft turns into clear messages. It also trims
what diffusers imports (engine/import_trim.py), since it is the one call made before any
model is loaded.
"""

from __future__ import annotations

import logging
import os

# The model libraries' loggers: quiet here, and into the run's sdft.log during a run (engine/run_log.py).
LIBRARY_LOGGERS = ("bitsandbytes", "transformers", "diffusers", "accelerate", "huggingface_hub", "xformers")


def quiet_logs() -> None:
    """The libraries' notices off, importing none of them: the light commands (``sdft buckets``,
    ``sdft tokens``, ...) start in well under a second and load no model library."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")   # read when transformers first logs
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """:func:`quiet_logs`, then transformers and diffusers imported and trimmed: for commands
    that load a model."""
    quiet_logs()
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        import diffusers

        from engine.import_trim import trim_diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        trim_diffusers()   # before any model class is imported: see engine/import_trim.py
    except (ImportError, AttributeError):
        pass
