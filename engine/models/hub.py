"""The Hugging Face hub, from sdft's side: are we offline, and what to tell a user who is.

One rule for every download sdft makes (base models, BLIP, the taggers). It is huggingface_hub's
own rule (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to one of its true values), read at each
call instead of once at import as huggingface_hub does, so a variable set after start-up (the
tests, a wizard session) counts.
"""

from __future__ import annotations

import os

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def is_offline() -> bool:
    """True when the user asked for no network: no download may be tried."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    return any(os.environ.get(name, "").upper() in ENV_VARS_TRUE_VALUES for name in OFFLINE_VARIABLES)


def download_advice(repo_id: str, flag: str) -> str:
    """How to bring a hub model to an offline machine, ending with where to point sdft at it."""
    return (f"on a machine with internet run `hf download {repo_id} --local-dir ./{repo_id.split('/')[-1]}`, "
            f"copy the folder here and pass it with {flag} FOLDER")


def offline_model_message(repo_id: str) -> str:
    """The base model names a hub id while offline: the one wording for --check and for loading."""
    return (f"{repo_id!r} is not a local file or folder and looks like a Hugging Face hub id, but sdft is "
            f"offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set): "
            f"{download_advice(repo_id, 'model.pretrained_model_name_or_path =')}")
