"""The learning-rate schedule counts the optimizer steps that were taken (docs/precision.md).

Under fp16 the gradient scaler skips a step whose gradients hold inf or NaN (the first steps
often do, while it finds its scale). accelerate's ``AcceleratedScheduler`` then leaves the
schedule where it was; sdft does the same. The scaler's verdict is a flag on the GPU, and reading
it at once would make the CPU wait for the step to finish every step; so the schedule reads it
when it is next needed: just before the next optimizer step, or when anything looks at the
schedule (the logged learning rate, a saved state).
"""

from __future__ import annotations


class ScheduleOnTakenSteps:
    """Wraps an LR scheduler: :meth:`step_after` instead of ``step()``; every other attribute is
    the scheduler's, read after the steps still pending are settled."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.pending: list = []     # device flags, True where that step was skipped
        self.skipped = 0            # steps the scaler skipped, among those settled
        self.skipped_in_a_row = 0   # the latest settled steps that were all skipped (divergence.py)

    def step_after(self, outcome) -> None:
        """After an optimizer step: advance, or note its skip flag to settle later."""
        if outcome.skipped is None and not self.pending:
            self.scheduler.step()
        else:
            self.pending.append(outcome.skipped)

    def settle(self) -> None:
        """Advance once for each pending step that was taken (reads their flags)."""
        pending, self.pending = self.pending, []
        for skipped in pending:
            if skipped is None or not bool(skipped):
                self.scheduler.step()
                self.skipped_in_a_row = 0
            else:
                self.skipped += 1
                self.skipped_in_a_row += 1

    def __getattr__(self, name: str):
        if name in ("scheduler", "pending", "skipped", "skipped_in_a_row"):     # not set yet (copying, unpickling)
            raise AttributeError(name)
        self.settle()
        return getattr(self.scheduler, name)
