"""Progressive resizing (fast.ai's DAWNBench recipe): the first two thirds of the epochs train on images scaled
down to 5/7 and 6/7 of their side (20 and 24 px for Fashion-MNIST's 28), the last third at full size, and
validation always at full size. An epoch at 20 px costs about half of one at 28, so more epochs fit a budget.

Measured on 2 cores of a Zen 4 (bench/RESULTS.md): `cnnlab train --data fashion-mnist --budget-minutes 30` trains
41-42 epochs of resnet_small and scores 94.36-94.43% (seeds 0, 1), against 35-37 epochs and 93.92-94.22% at full
size.

A budget plans in full-size epochs: an epoch at `side` costs its fixed share (the validation pass at full size,
the checkpoints: measured by the budget's probe) plus (side / full)^2 of the rest (`epoch_cost`). On Fashion-MNIST
that estimates 0.56 and 0.76 of a 28-px epoch at 20 and 24 px, measured 0.55-0.57 and about 0.8 (the augmentation
runs at full size before the batch is scaled); the clock (training/clock.py) corrects the plan from the epochs' wall
times divided by these costs.
"""

from __future__ import annotations

SIDE_FRACTIONS = (5 / 7, 6 / 7, 1.0)  # of the image side, one per third of the epochs


def side_for(epoch: int, epochs: int, image_size: int) -> int:
    """The side epoch `epoch` (1-based) of `epochs` trains at."""
    third = min((epoch - 1) * len(SIDE_FRACTIONS) // max(epochs, 1), len(SIDE_FRACTIONS) - 1)
    return max(1, round(image_size * SIDE_FRACTIONS[third]))


def smallest_side(image_size: int) -> int:
    """The side of the first third's epochs (a model must take it: runner checks before training)."""
    return max(1, round(image_size * SIDE_FRACTIONS[0]))


def sides_text(image_size: int) -> str:
    """The sides by thirds, as the logs say them: '20/24/28' for 28-px images."""
    return "/".join(str(side_for(e, len(SIDE_FRACTIONS), image_size)) for e in range(1, len(SIDE_FRACTIONS) + 1))


def epoch_cost(epoch: int, epochs: int, image_size: int | None, fixed: float = 0.0) -> float:
    """Epoch `epoch` of `epochs`' cost in full-size epochs, `fixed` of which does not shrink with the side (1
    without progressive resizing: `image_size` None)."""
    if image_size is None:
        return 1.0
    return fixed + (1.0 - fixed) * (side_for(epoch, epochs, image_size) / image_size) ** 2


def epochs_that_fit(
    seconds: float, epoch_s: float, *, progressive_size: int | None = None, fixed: float = 0.0, done: int = 0
) -> int:
    """The most epochs in all whose epochs after the `done` ones fit `seconds` at `epoch_s` seconds per full-size
    epoch (at least `done`); with `progressive_size` (the image side), at progressive resizing's cheaper sides
    (`fixed`: see `epoch_cost`)."""
    if epoch_s <= 0 or seconds <= 0:
        return done
    if progressive_size is None:
        return done + int(seconds // epoch_s)

    def fits(total: int) -> bool:  # every epoch's side moves with the total, so each total is summed afresh
        costs = (epoch_cost(e, total, progressive_size, fixed) for e in range(done + 1, total + 1))
        return sum(costs) * epoch_s <= seconds

    # the cost grows with the total (an added epoch costs >= 0.51, a moved third boundary saves <= 0.27 each)
    cheapest = epoch_cost(1, 1 + len(SIDE_FRACTIONS), progressive_size, fixed)
    lo, hi = done, done + 1 + int(seconds // (epoch_s * cheapest))  # fits(lo); no total from hi on fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
