"""Whether horizontal flips keep a folder's labels, decided from the data once the model beats chance.

A flipped 2 is not a 2, a flipped shoe is still a shoe. For a folder nobody has labelled in that respect,
training starts without flips; after each epoch, once the model is clearly better than chance (valid
accuracy at least halfway from chance to 100%), it scores the validation images as they are and mirrored.
If mirroring costs more than FLIP_DROP of the accuracy (relative), the classes depend on orientation and
flips stay off; otherwise they are switched on for the remaining epochs. A model that never gets there
trains without flips (the safe side). The decision is printed and saved in config.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Relative drop measured after one epoch of the default CNN, seeds 0-2: Fashion-MNIST as a folder (10k train
# PNGs) 18-27% (its shoes all face one way; mirrored they are still shoes, but unseen), LFW faces 0-8%,
# scikit-learn digits 47-60% (mirrored digits read as other digits). 35% sits between the two groups.
FLIP_DROP = 0.35


@dataclass
class FlipCheck:
    """The decision rule; `fit` asks `ready` after each epoch and, when ready, measures the mirrored accuracy
    (with its own validation pass, summed over processes) and calls `decide`, which calls `record` once."""

    num_classes: int
    record: Callable[[bool, str], None]
    max_drop: float = FLIP_DROP
    decided: bool = False

    def ready(self, valid_acc: float) -> bool:
        """Undecided and the model clearly beats chance (valid accuracy halfway from chance to 100%)."""
        chance = 1 / self.num_classes
        return not self.decided and valid_acc >= chance + 0.5 * (1 - chance)

    def decide(self, epoch: int, accuracy: float, mirrored: float) -> bool:
        """Flips on when mirroring the validation images costs at most `max_drop` of the accuracy (relative)."""
        drop = (accuracy - mirrored) / max(accuracy, 1e-9)
        flips = drop <= self.max_drop
        self.decided = True
        self.record(flips, (
            f"after epoch {epoch} (no flips) valid accuracy {100 * accuracy:.1f}% as is, {100 * mirrored:.1f}% "
            f"mirrored ({100 * drop:+.0f}% relative drop, limit {100 * self.max_drop:.0f}%): flips "
            + (f"keep the labels, on from epoch {epoch + 1}" if flips else "change the labels, kept off")
        ))  # fmt: skip
        return flips
