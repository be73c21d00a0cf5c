"""What --check says of how updates reach the weights (docs/precision.md): bf16 weights rounded
to nearest at a learning rate whose updates mostly vanish (engine/plan/learning.py), and a fused
backward pass in a run of several processes.

Pure Python at import: the wizard imports this module before training.
"""

from __future__ import annotations

import os

from engine.config.problems import ProblemList
from engine.plan.learning import updates_round_away


def check_precision(config, problems: ProblemList) -> None:
    m, o = config.memory, config.optimizer
    lr = max(o.learning_rate, o.learning_rate_te or 0.0)
    reason = updates_round_away(m.full_bf16, m.stochastic_rounding, lr, o.type)
    if reason:
        problems.warn("memory.stochastic_rounding", reason, "leave memory.stochastic_rounding = true (the default)")
    if m.fused_backward_pass and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from engine.train.weight_update import FUSED_ONE_PROCESS

        problems.add("memory.fused_backward_pass", FUSED_ONE_PROCESS.removeprefix("memory.fused_backward_pass "),
                     "turn it off for a multi-GPU run")
