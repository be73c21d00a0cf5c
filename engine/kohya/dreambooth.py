"""What ``train_db.py`` does differently from ``fine_tune.py``, for ``sdft from-kohya``.

Its data are kohya's folder datasets: without ``--dataset_config``, ``--train_data_dir`` and
``--reg_data_dir`` hold ``N_name`` sub-folders, each a subset (engine/data/kohya_folders.py), so
the converted file lists them as ``[[datasets.subsets]]`` tables. And it trains the text encoder
unless ``--stop_text_encoder_training`` is negative (train_db.py: ``stop is None or stop >= 0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FOLDERS = ("train_data_dir", "reg_data_dir")
# train_db.py's options that fine_tune.py has not
OWN_OPTIONS = ("reg_data_dir", "prior_loss_weight", "no_token_padding", "stop_text_encoder_training")


def folder_rows(options: dict[str, Any], base: Path, text_encoder: bool = True) -> tuple[list, dict[str, Any]]:
    """(rows, values) for train_db.py's folders and (``text_encoder``) its text encoder; the
    options they read are removed from ``options``. ``base``: where relative folders are looked
    for besides the current folder (the config file's folder). sdxl_train.py reads the same
    folders without --in_json, and trains the text encoders only with --train_text_encoder."""
    from engine.kohya.convert import Row

    rows, values = [], {}
    given = {name: options.pop(name) for name in FOLDERS if options.get(name)}
    if "dataset_config" in options:
        for name, value in given.items():
            rows.append(Row(name, value, dropped="kohya ignores it when --dataset_config is given (the dataset "
                                                       "TOML says where the images are)"))
    elif given:
        rows += _layout_rows(given, base, values)
    if text_encoder:
        rows.append(_text_encoder_row(options.pop("stop_text_encoder_training", None), values))
    return rows, values


def _layout_rows(given: dict[str, str], base: Path, values: dict) -> list:
    from engine.data.kohya_folders import layout_subsets
    from engine.kohya.convert import Row

    rows, subsets = [], []
    for name, text in given.items():
        folder = _found(text, base)
        row = Row(name, text)
        rows.append(row)
        if folder is None:
            row.refused = (f"{text} is not here to read its N_name sub-folders from (kohya makes one subset of "
                           "each): convert where the data is, or write the [[datasets.subsets]] tables yourself")
            continue
        found = layout_subsets(folder) if name == "train_data_dir" else layout_subsets(None, folder)
        if not found:
            row.refused = f"{text} holds no N_name sub-folder (N repeats, then the class tokens), as kohya needs"
            continue
        for table in found:   # written with the folder as given, so the run file stays portable
            table["image_dir"] = str(Path(text) / Path(table["image_dir"]).name)
        subsets += found
        row.went = [f"[[datasets.subsets]] image_dir = {t['image_dir']!r}, num_repeats = {t['num_repeats']}"
                    + (", is_reg = true" if t.get("is_reg") else "") for t in found]
        row.note = "kohya's folder layout: one subset per N_name sub-folder"
    if subsets:
        values["datasets.subsets"] = subsets
    return rows


def _found(text: str, base: Path) -> Path | None:
    """The folder as the current folder, else the config file's folder, finds it."""
    path = Path(text).expanduser()
    for candidate in (path, base / path):
        if candidate.is_dir():
            return candidate
    return None


def _text_encoder_row(stop: Any, values: dict):
    """train_db.py trains the text encoder unless told to stop before the first step."""
    from engine.kohya.convert import Row

    label = "stop_text_encoder_training" if stop is not None else "(train_db.py)"
    row = Row("stop_text_encoder_training", stop, label=None if stop is not None else label)
    try:
        steps = None if stop is None else int(stop)
    except (TypeError, ValueError):
        row.refused = f"{stop!r} is not a whole number of steps"
        return row
    if steps is not None and steps <= 0:
        row.dropped = "train_db.py then never trains the text encoder, which is sdft's default"
        return row
    values["train.train_text_encoder"] = True
    row.went = ["train.train_text_encoder = true"]
    if steps is not None:
        values["train.stop_text_encoder_training"] = steps
        row.went.append(f"train.stop_text_encoder_training = {steps}")
    row.note = "train_db.py trains the text encoder unless --stop_text_encoder_training is -1"
    return row
