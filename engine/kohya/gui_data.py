"""The data fields of a kohya_ss GUI config and the length of its run, as the GUI reads them.

The fine-tune tab names its metadata file as ``train_dir`` + ``caption_metadata_filename`` (or
``latent_metadata_filename`` with ``use_latent_files``) and its images ``image_folder``; with
``create_caption`` it rebuilds that file from the caption files before each run, and it always
buckets. Both tabs turn ``epoch`` into ``--max_train_steps`` from the image count (the DreamBooth
tab: the ``N_name`` folders' repeats, doubled with regularization images; the fine-tune tab:
images × ``dataset_repeats``, halved with ``flip_aug``), unless a dataset config, the steps or
``max_train_epochs`` are given. (kohya_gui/finetune_gui.py, dreambooth_gui.py, ``train_model``.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

DATA_NAMES = ("train_dir", "caption_metadata_filename", "latent_metadata_filename", "use_latent_files")


def data_fields(read) -> None:
    """The fine-tune tab's folders and metadata names as --train_data_dir and --in_json."""
    from engine.kohya.convert import Row

    fields, options = read.fields, read.options
    if not read.fine_tune_tab:
        return
    if "dataset_config" not in options:
        options["enable_bucket"] = True
        read.notes["enable_bucket"] = "the GUI's fine-tune tab always buckets"
    latent = fields.get("use_latent_files") == "Yes"
    name = fields.get("latent_metadata_filename" if latent else "caption_metadata_filename")
    in_json = f"{fields['train_dir']}/{name}" if fields.get("train_dir") and name else name
    images = fields.get("image_folder")
    rebuilds = bool(fields.get("create_caption") or fields.get("generate_caption_database"))
    for key in DATA_NAMES:
        if key in fields:
            read.rows.append(Row(key, fields[key], label=key, dropped=f"the GUI's --in_json is {in_json}"))
    if images:
        options["train_data_dir"] = images
        read.labels["train_data_dir"] = "image_folder"
    if rebuilds and images and not latent:
        # the GUI rewrites in_json from image_folder's caption files before each run: read those
        extension = options.get("caption_extension") or ".caption"
        options["caption_extension"] = extension
        note = (f"the GUI writes {in_json} from the {extension} files before each run (create_caption); "
                "sdft reads them directly: a folder subset")
        read.rows.append(Row("create_caption", True, label="create_caption", dropped=note))
        return
    if in_json:
        options["in_json"] = in_json
        read.labels["in_json"] = "train_dir + " + ("latent" if latent else "caption") + "_metadata_filename"
    if rebuilds and in_json:
        read.rows.append(Row("create_caption", True, label="create_caption", dropped=(
            f"the GUI refreshes the caption file it builds {in_json} from before each run; `sdft prepare {images} "
            f"--out {in_json}` rebuilds it")))


def length(read) -> None:
    """``epoch`` as the GUI uses it: the steps from the image count, else epochs."""
    from engine.kohya.convert import Row

    fields, options = read.fields, read.options
    if "epoch" not in fields:
        return
    epoch = _whole(fields.get("epoch"))
    row = Row("epoch", fields.get("epoch"), label="epoch")
    read.rows.append(row)
    if options.get("max_train_steps"):
        row.dropped = "max_train_steps is set: the GUI trains that many steps"
    elif options.get("dataset_config"):
        row.dropped = ("with a dataset config the GUI does not turn epochs into steps: kohya trains max_train_steps "
                       "(1600 unless set)")
    elif options.get("max_train_epochs"):
        row.dropped = "max_train_epochs is set: kohya trains that many epochs"
    elif not epoch:
        row.dropped = "0 epochs: kohya trains max_train_steps (1600 unless set)"
    else:
        read.rows.remove(row)   # the option it becomes has the row
        _steps_or_epochs(read, epoch)


def _steps_or_epochs(read, epoch: int) -> None:
    options = read.options
    counted = _image_count(read)
    if counted is None:
        options["max_train_epochs"] = epoch
        read.labels["max_train_epochs"] = "epoch"
        read.notes["max_train_epochs"] = ("the GUI turns epochs into steps from the image count, and the images "
                                          "are not here to count: sdft counts the epochs itself")
        return
    count, how = counted
    batch = max(1, _whole(options.get("train_batch_size")) or 1)
    accumulation = max(1, _whole(options.get("gradient_accumulation_steps")) or 1)
    steps = math.ceil(count / batch / accumulation * epoch)
    how += f" / batch {batch} / accumulation {accumulation} × {epoch} epoch(s)"
    if read.fine_tune_tab and options.get("flip_aug"):
        steps, how = math.ceil(steps / 2), how + ", halved for flip_aug"
    elif not read.fine_tune_tab and options.get("reg_data_dir"):
        steps, how = math.ceil(count / batch / accumulation * epoch * 2), how + ", doubled for regularization images"
    options["max_train_steps"] = steps
    read.labels["max_train_steps"] = "epoch"
    read.notes["max_train_steps"] = f"the GUI's count: {how}"


def _image_count(read) -> tuple[int, str] | None:
    """(images × repeats, how) as the GUI counts them, or None when the folders are not here."""
    from engine.data.kohya_folders import repeats_and_tokens

    fields, options = read.fields, read.options
    if read.fine_tune_tab:
        folder = _folder(fields.get("image_folder"), read.base)
        if folder is None:
            return None
        repeats = max(1, _whole(options.get("dataset_repeats")) or 1)
        images = _images_in(folder)
        return images * repeats, f"{images} images × {repeats} repeats"
    folder = _folder(options.get("train_data_dir"), read.base)
    if folder is None:
        return None
    total = 0
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        parsed = repeats_and_tokens(sub.name)
        if parsed is not None:
            total += parsed[0] * _images_in(sub)
    return total, f"{total} images × repeats in the N_name folders"


def _images_in(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.name.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))


def _folder(text: Any, base: Path) -> Path | None:
    if not text:
        return None
    path = Path(str(text)).expanduser()
    for candidate in (path, base / path):
        if candidate.is_dir():
            return candidate
    return None


def _whole(value: Any) -> int:
    try:
        return int(float(value or 0))
    except (TypeError, ValueError):
        return 0
