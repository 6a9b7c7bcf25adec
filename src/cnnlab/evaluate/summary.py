"""eval.json as typed objects: what the Python API returns for a run's evaluation (`Run.evaluation`).

Every field is read from eval.json as written; `raw` keeps the whole dict, so nothing is lost or recomputed and
`Evaluation.from_dict(json.load(f)).raw == json.load(f)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassScores:
    """One class against the rest, on the test split."""

    accuracy: float
    precision: float
    recall: float
    specificity: float
    f1: float
    support: int
    auc: float | None


@dataclass(frozen=True)
class BinaryScores:
    """The `positive` class vs the rest (`--positive`): AUC with its bootstrap 95% interval, and the test metrics
    at the threshold chosen on validation by `threshold_rule`."""

    positive: str
    auc: float
    auc_ci95: tuple[float, float]
    threshold: float
    threshold_rule: str
    sensitivity: float
    specificity: float


@dataclass(frozen=True)
class Evaluation:
    """A run's best checkpoint scored on its test split (RUN/eval.json)."""

    accuracy: float
    balanced_accuracy: float
    test_loss: float
    n_test: int
    macro_auc: float | None
    ece: float
    tta: bool
    per_class: dict[str, ClassScores]
    confusion_matrix: np.ndarray  # [true, predicted] counts, in class order
    binary: BinaryScores | None
    raw: dict[str, Any] = field(repr=False)  # eval.json itself

    @classmethod
    def from_dict(cls, ev: dict[str, Any]) -> Evaluation:
        per_class = {
            name: ClassScores(
                c["accuracy"], c["precision"], c["recall"], c["specificity"], c["f1"], c["support"], c.get("auc")
            )  # fmt: skip
            for name, c in ev["per_class"].items()
        }
        b = ev.get("binary")
        binary = None
        if b:
            binary = BinaryScores(b["positive"], b["auc"], tuple(b["auc_ci95"]), b["threshold"], b["threshold_rule"],
                                  b["sensitivity"], b["specificity"])  # fmt: skip
        return cls(
            accuracy=ev["accuracy"], balanced_accuracy=ev["balanced_accuracy"], test_loss=ev["test_loss"],
            n_test=ev["n_test"], macro_auc=ev.get("macro_auc"), ece=ev["ece"], tta=bool(ev.get("tta")),
            per_class=per_class, confusion_matrix=np.asarray(ev["confusion_matrix"]), binary=binary, raw=ev,
        )  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Evaluation) and self.raw == other.raw

    __hash__ = None  # mutable raw dict inside: not hashable

    def headline(self) -> str:
        """One line: test accuracy (with the positive class's AUC where there is one)."""
        line = f"test accuracy {100 * self.accuracy:.2f}% on {self.n_test:,} images"
        if self.binary is not None:
            lo, hi = self.binary.auc_ci95
            line += f"; {self.binary.positive} vs rest AUC {self.binary.auc:.3f} (95% CI {lo:.3f}-{hi:.3f})"
        return line
