"""Which kohya script a command (or a kohya_ss GUI config) runs, and whether sdft converts it.

``fine_tune.py`` and ``train_db.py`` are full fine-tunes of SD 1.x/2.x, ``sdxl_train.py`` of
SDXL: they convert (``train_db.py`` on kohya's folder datasets, engine/kohya/dreambooth.py, and
``sdxl_train.py`` too when it has no metadata file, as kohya's "DreamBooth method"). Every other
trainer of kohya-ss/sd-scripts trains something sdft does not (a LoRA, an embedding, a
ControlNet) or a model family it does not load (SD3, FLUX, ...), and is refused as a whole with
the reason, rather than converted as if it were fine_tune.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FINE_TUNE = "fine_tune.py"
TRAIN_DB = "train_db.py"
SDXL_TRAIN = "sdxl_train.py"

# A model family sdft does not load, by the scripts' name prefix (SDXL's full fine-tune,
# sdxl_train.py, converts; its LoRA, embedding and ControlNet trainers do not).
FAMILIES = {"sdxl_": "SDXL", "sd3_": "SD3", "flux_": "FLUX.1", "lumina_": "Lumina", "anima_": "Anima",
            "hunyuan_image_": "HunyuanImage"}
# What a script trains instead of the model's own weights, by a word in its name.
METHODS = {"network": "a LoRA-style network added to the model (kohya's networks: LoRA, LoCon, LoHa, ...)",
           "textual_inversion": "a textual-inversion embedding",
           "control_net": "a ControlNet", "controlnet": "a ControlNet"}
NOT_TRAINERS = ("gen_img", "minimal_inference", "XTI_hijack", "setup")


class NotConvertible(ValueError):
    """A command or config of a kohya script sdft does not convert; the message says why."""


@dataclass(frozen=True)
class Script:
    name: str
    folders: bool = False      # train_db.py: train_data_dir holds kohya's N_name folders
    note: str | None = None    # said in the table (an unknown script read as fine_tune.py)
    family: str | None = None  # the model family the script trains, when only one (sdxl_train.py)

    def reads_folders(self, options) -> bool:
        """Whether train_data_dir holds kohya's N_name folders: train_db.py's always; sdxl_train.py's
        without --in_json (kohya's sdxl_train.py picks the DreamBooth method then)."""
        return self.folders or (self.name == SDXL_TRAIN and "in_json" not in options)


def recognise(name: str) -> Script:
    """The script by its file name; NotConvertible for a kohya script sdft does not convert."""
    name = Path(name.replace("\\", "/")).name
    if name == FINE_TUNE:
        return Script(name)
    if name == TRAIN_DB:
        return Script(name, folders=True)
    if name == SDXL_TRAIN:
        return Script(name, family="sdxl")
    refusal = refusal_of(name)
    if refusal:
        raise NotConvertible(refusal)
    return Script(name, note=f"{name} is not one of kohya's scripts: its options are read as fine_tune.py's")


def refusal_of(name: str) -> str | None:
    """Why sdft does not convert kohya's ``name`` (None: not one of kohya's other scripts)."""
    stem = name.removesuffix(".py")
    if any(word in stem for word in NOT_TRAINERS):
        return f"{name} is not a trainer (it generates images or sets up kohya); give a training command"
    family = next((label for prefix, label in FAMILIES.items() if stem.startswith(prefix)), None)
    method = next((what for word, what in METHODS.items() if word in stem), None)
    if method:
        return (f"{name} trains {method}{f' for {family}' if family else ''}, not a full fine-tune: sdft "
                "fine-tunes a model's own weights, as kohya's fine_tune.py, train_db.py and sdxl_train.py do")
    if family:
        return (f"{name} fine-tunes {family}, which sdft does not train yet: it trains SD 1.x, 2.x and SDXL, as "
                "kohya's fine_tune.py, train_db.py and sdxl_train.py do")
    return None
