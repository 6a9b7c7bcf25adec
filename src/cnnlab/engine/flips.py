"""Whether horizontal flips keep a folder's labels, decided from the data after the first epoch.

A flipped 2 is not a 2, a flipped shoe is still a shoe. For a folder nobody has labelled in that respect,
training starts without flips; after each epoch, once the model is clearly better than chance (valid
accuracy at least halfway from chance to 100%), it scores the validation images as they are and mirrored.
If mirroring costs more than FLIP_DROP of the accuracy (relative), the classes depend on orientation and
flips stay off; otherwise they are switched on for the remaining epochs. A model that never gets there
trains without flips (the safe side). The decision is printed and saved in config.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

# Relative drop measured after one epoch of the default CNN, seeds 0-2: Fashion-MNIST as a folder (10k train
# PNGs) 18-27% (its shoes all face one way; mirrored they are still shoes, but unseen), LFW faces 0-8%,
# scikit-learn digits 47-60% (mirrored digits read as other digits). 35% sits between the two groups.
FLIP_DROP = 0.35


@dataclass
class FlipCheck:
    """Called by `fit` after each epoch until it decides; `record(flips, reason)` stores the decision."""

    num_classes: int
    record: Callable[[bool, str], None]
    max_drop: float = FLIP_DROP
    decided: bool = False

    def decide(self, model, valid_batches: Iterable, epoch: int, valid_acc: float) -> bool | None:
        """True/False once decided (this epoch), None while the model is too weak to tell."""
        chance = 1 / self.num_classes
        if valid_acc < chance + 0.5 * (1 - chance):
            return None
        accuracy, mirrored = flipped_accuracy(model, valid_batches)
        drop = (accuracy - mirrored) / max(accuracy, 1e-9)
        flips = drop <= self.max_drop
        self.decided = True
        self.record(flips, (
            f"after epoch {epoch} (no flips) valid accuracy {100 * accuracy:.1f}% as is, {100 * mirrored:.1f}% "
            f"mirrored ({100 * drop:+.0f}% relative drop, limit {100 * self.max_drop:.0f}%): flips "
            + (f"keep the labels, on from epoch {epoch + 1}" if flips else "change the labels, kept off")
        ))  # fmt: skip
        return flips


@torch.inference_mode()
def flipped_accuracy(model, batches: Iterable) -> tuple[float, float]:
    """Accuracy on `batches` as they are and horizontally mirrored."""
    model.eval()
    correct = mirrored = seen = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        mirrored += int((model(x.flip(-1)).argmax(1) == y).sum())
        seen += len(y)
    return correct / max(seen, 1), mirrored / max(seen, 1)
