"""Whether a precision choice can learn at a learning rate (docs/precision.md).

bf16 holds 8 bits of mantissa: at an ordinary weight (|w| = 0.03) one bf16 step is 2^-13, and
rounding to nearest keeps an update only above half of it, 6.1e-5. Fine-tune learning rates are
5e-6 to 2e-5, and Adam-type updates are about the learning rate, so rounding to nearest drops most
of them (measured: 3 % of weights move at lr 5e-6). Stochastic rounding keeps their average, which
is why sdft writes bf16 weights that way by default. Presets, the planner's suggestions and --check
all ask this module, so none of them picks or passes a setting that does not learn.

Pure Python: the wizard calls it on every keystroke.
"""

from __future__ import annotations

from engine.registry.optimizers import find

ORDINARY_WEIGHT = 0.03
HALF_BF16_STEP = 2.0 ** -14    # half the bf16 step of a weight between 2^-6 and 2^-5


def updates_round_away(full_bf16: bool, stochastic_rounding: bool, learning_rate: float,
                       optimizer: str) -> str | None:
    """Why most updates would vanish in the weights (None when they do not)."""
    if not full_bf16 or stochastic_rounding:
        return None
    entry = find(optimizer)
    if entry is not None and entry.adaptive_lr:
        size = "the optimizer's own step size"
    elif learning_rate >= 2 * HALF_BF16_STEP:
        return None
    else:
        size = f"about learning_rate = {learning_rate:g} (Adam-type; SGD's are smaller still)"
    return (f"bf16 weights rounded to nearest keep an update only when it exceeds half a bf16 step: "
            f"{HALF_BF16_STEP:.1e} at an ordinary weight (|w| = {ORDINARY_WEIGHT}). Updates here are {size}, "
            "so most of them round away and the model barely changes")
