"""`BudgetClock`: a --budget-minutes plan corrected after every epoch from the epochs' own measured time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cnnlab.training.progressive import epoch_cost, epochs_that_fit

RECENT_EPOCHS = 3  # the re-plan's speed: the mean wall time of the last few epochs (speed drifts on shared VMs)
SLACK = 0.5  # of an epoch: a plan ending this little after the deadline stands (epoch times vary by +-10% here)


@dataclass
class BudgetClock:
    """The budget's deadline while training. The probe's few steps misjudge sustained speed on shared VMs (a
    30-minute plan overran by 4.5 minutes, another left 2 unused: bench/RESULTS.md), so after every epoch the
    epochs in all are planned again from the epochs' measured wall time (`replan`); `epochs` is the plan in force.
    """

    deadline: float  # time.perf_counter() by which the last epoch should have ended
    epochs: int  # the plan in force
    most: int | None = None  # a search candidate's cap (see `plan_budget`'s epoch_limits)
    epoch_seconds: float = 0.0  # the speed the last re-plan used (seconds per full-size epoch)
    progressive_size: int | None = None  # the image side, under progressive resizing (training/progressive.py)
    fixed_share: float = 0.0  # of a full-size epoch, what does not shrink with the side (see `epoch_cost`)

    def cost(self, epoch: int, epochs: int) -> float:
        """Epoch `epoch` of `epochs`' cost in full-size epochs (1 without progressive resizing)."""
        return epoch_cost(epoch, epochs, self.progressive_size, self.fixed_share)

    def replan(self, done: int, epoch_seconds: list[float]) -> int:
        """Epochs in all after `done` finished ones that took `epoch_seconds` (in full-size epochs' time under
        progressive resizing: each wall time divided by its epoch's cost): as many more as the recent epochs'
        mean time fits before the deadline, and at least one while the plan is unfinished (the schedule's last
        steps anneal the rate); the plan in force stands while it ends less than an epoch early or SLACK of one
        late; the last epoch ends the run as planned. The first epoch pays one-off costs (2 s of a 3-s budget on
        digits), so the plan stands until a second one has been timed."""
        if done >= self.epochs or len(epoch_seconds) < 2:
            return self.epochs
        recent = epoch_seconds[1:][-RECENT_EPOCHS:]
        self.epoch_seconds = sum(recent) / len(recent)
        left = max(self.deadline - time.perf_counter(), 0.0)
        planned = sum(self.cost(e, self.epochs) for e in range(done + 1, self.epochs + 1))
        late = planned * self.epoch_seconds - left  # > 0: the plan in force ends after the deadline
        if -self.epoch_seconds < late <= SLACK * self.epoch_seconds:
            return self.epochs  # close enough: a plan that changes every epoch jolts the schedule for nothing
        fit = epochs_that_fit(
            left, self.epoch_seconds, progressive_size=self.progressive_size, fixed=self.fixed_share, done=done
        )
        total = max(fit, done + 1)
        self.epochs = min(total, self.most) if self.most is not None else total
        return self.epochs
