"""Regularization images (``is_reg = true`` subsets) as kohya's ``train_db.py`` uses them.

kohya repeats the regularization images until they are as many per epoch as the training
images (``DreamBoothDataset``: the first pass takes each image with its subset's
``num_repeats``, later passes add one repeat each, in order, until the count is reached; images
past it are not used), and weighs their loss by ``--prior_loss_weight``, 1.0 by default, which is
the one weight sdft has. The training images are counted after the validation split (held-out
images do not train), and regularization images are never held out. docs/formats.md, "Folder
datasets".
"""

from __future__ import annotations

from typing import Callable

from engine.data.holdout import validation_count


def training_count(items: list, spec) -> int:
    """Training images × repeats of one dataset, as kohya counts them (after the validation split)."""
    by_subset: dict[int, list] = {}
    for item in items:
        if not item.subset.is_reg and not item.subset.is_val:
            by_subset.setdefault(id(item.subset), []).append(item)
    total = 0
    for members in by_subset.values():
        kept = len(members) - validation_count(len(members), spec.validation_split)
        total += kept * members[0].subset.num_repeats
    return total


def regularization_repeats(reg_repeats: list[int], target: int) -> list[int]:
    """How often each regularization image is seen per epoch (0: not used), by kohya's rule."""
    repeats = [0] * len(reg_repeats)
    if not reg_repeats:
        return repeats
    count, first = 0, True
    while count < target:
        for i, own in enumerate(reg_repeats):
            added = own if first else 1
            repeats[i] += added
            count += added
            if count >= target:
                break
        first = False
    return repeats


def balance_regularization(items: list, spec, log: Callable[[str], None]) -> list:
    """The dataset's items with each regularization image's repeats set (``item.reg_repeats``);
    regularization images kohya would not use are left out."""
    reg = [it for it in items if it.subset.is_reg]
    if not reg:
        return items
    target = training_count(items, spec)
    repeats = regularization_repeats([it.subset.num_repeats for it in reg], target)
    for item, count in zip(reg, repeats, strict=True):
        item.reg_repeats = count
    if not target:
        log(f"{spec.key}: no training images beside the regularization images, so they are not used either "
            "(kohya's train_db.py)")
        return [it for it in items if not it.subset.is_reg]
    unused = sum(1 for count in repeats if count == 0)
    log(f"{spec.key}: {len(reg) - unused} regularization image(s) repeated to {target} per epoch, as many as the "
        f"training images (kohya's train_db.py)" + (f"; {unused} not used, there are more than needed"
                                                     if unused else ""))
    return [it for it in items if not it.subset.is_reg or it.reg_repeats]
