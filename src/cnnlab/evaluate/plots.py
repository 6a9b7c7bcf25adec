"""Figures for evaluation, each drawn from predictions or metrics; `ax=` accepted, matplotlib lazy.

Every function returns the matplotlib Axes (or Figure for multi-panel plots) it drew on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnlab.figures import figure_png_base64, new_figure  # noqa: F401  (plots.X for the report)


def _axes(ax, figsize=(5, 4)):
    if ax is not None:
        return ax
    return new_figure(figsize).subplots()


def plot_training_curves(rows: Sequence[dict], *, axes=None):
    """Loss and accuracy per epoch (train and valid) from metrics.csv rows; marks the best epoch."""
    if axes is None:
        axes = new_figure((10, 3.6)).subplots(1, 2)
    epochs = [int(r["epoch"]) for r in rows]
    best = epochs[int(np.argmin([float(r["valid_loss"]) for r in rows]))]
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [float(r[f"train_{key}"]) for r in rows], "o-", label="train")
        ax.plot(epochs, [float(r[f"valid_{key}"]) for r in rows], "o-", label="valid")
        ax.axvline(best, color="grey", ls=":", label=f"best (epoch {best})")
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.legend()
    return axes[0].figure


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], *, normalize: bool = True, ax=None):
    """Row-normalised (or raw count) confusion matrix with the values written in each cell."""
    ax = _axes(ax, figsize=(1 + 0.6 * len(class_names), 0.6 * len(class_names) + 0.8))
    cm = np.asarray(cm, dtype=float)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix" + (" (row-normalised)" if normalize else ""))
    for i in ticks:
        for j in ticks:
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(shown[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if shown[i, j] > 0.5 else "black")
    return ax


def plot_roc(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]], *, readers=None, operating_point=None, ax=None
):
    """ROC curves [(label, fpr, tpr, auc)], optional human readers [(name, sens, spec)] as points and
    the model's frozen operating point (fpr, tpr)."""
    ax = _axes(ax)
    for label, fpr, tpr, auc in curves:
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    if operating_point is not None:
        ax.plot(*operating_point, "k*", ms=12, label="model at threshold")
    for name, sens, spec in readers or []:
        ax.plot(1 - spec, sens, "o", ms=7, label=name)
    ax.set(
        xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01)
    )
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_precision_recall(label: str, precision: np.ndarray, recall: np.ndarray, ap: float, *, ax=None):
    ax = _axes(ax)
    ax.plot(recall, precision, label=f"{label} (AP {ap:.3f})")
    ax.set(
        xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="precision-recall", xlim=(0, 1), ylim=(0, 1.01)
    )
    ax.legend(fontsize=8)
    return ax


def plot_regularisation_path(path: Sequence[dict], chosen_l2: float, *, axes=None):
    """A frozen head's training: validation loss and accuracy for every L2 strength tried (head.json), the
    chosen one marked. It replaces the epoch curves, which a head fit to convergence in one step does not have."""
    if axes is None:
        axes = new_figure((10, 3.6)).subplots(1, 2)
    l2 = [p["l2"] for p in path]
    for ax, key, label in ((axes[0], "valid_loss", "validation loss"), (axes[1], "valid_acc", "validation accuracy")):
        ax.semilogx(l2, [p[key] for p in path], "o-", color="tab:orange")
        ax.axvline(chosen_l2, color="grey", ls=":", label=f"chosen (L2 {chosen_l2:g})")
        ax.set(xlabel="L2 strength (weaker to the left)", ylabel=label, title=f"{label} per L2")
        ax.legend()
    return axes[0].figure


def plot_candidates(rows: Sequence[dict], *, ax=None):
    """The model search's table (config.yaml `model.strategy_candidates`): validation accuracy per candidate (bars),
    the cross-validated mean and spread where measured (points), the chosen one in colour, skipped ones named."""
    ax = _axes(ax, figsize=(8, 0.45 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    scores = [100 * (r.get("valid_accuracy") or 0.0) for r in rows]
    colours = ["tab:green" if r.get("status") == "chosen" else "tab:grey" for r in rows]
    low = max(0.0, min([s for s in scores if s > 0] or [0.0]) - 15)
    ax.barh(y, scores, color=colours)
    crossed = [(yi, 100 * r["cv_accuracy"], 100 * r["spread"]) for yi, r in zip(y, rows, strict=True)
               if r.get("cv_accuracy") is not None]  # fmt: skip
    if crossed:
        cy, cx, cerr = zip(*crossed, strict=True)
        ax.errorbar(cx, cy, xerr=cerr, fmt="o", color="black", label="cross-validated mean +- std")
        ax.legend(loc="lower left", fontsize=8)
    for yi, r, score in zip(y, rows, scores, strict=True):
        note = "skipped" if str(r.get("status", "")).startswith("skipped") else f"{score:.1f}%"
        ax.text(max(score, low), yi, f" {note}", va="center", fontsize=8)
    ax.set_yticks(y, [r["candidate"].replace("efficientnet_lite0 frozen", "frozen") for r in rows], fontsize=8)
    ax.set(xlabel="validation accuracy (%)", xlim=(low, 100), title="model search: the candidates (frozen: the "
           "backbone's features with a linear head)")  # fmt: skip
    return ax


def plot_per_class_accuracy(class_names: Sequence[str], accuracy: Sequence[float], *, ax=None):
    ax = _axes(ax, figsize=(max(5, 0.6 * len(class_names)), 3.5))
    ax.bar(range(len(class_names)), [100 * a for a in accuracy], color="tab:blue")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), title="per-class accuracy")
    return ax


def plot_reliability(reliability: dict, ece: float, *, ax=None):
    """Reliability diagram: accuracy against mean confidence per bin; the diagonal is perfect calibration."""
    ax = _axes(ax)
    used = reliability["count"] > 0
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.plot(reliability["confidence"][used], reliability["accuracy"][used], "o-", label=f"model (ECE {ece:.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", title="calibration", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8)
    return ax


def plot_image_grid(images: np.ndarray, titles: Sequence[str], correct: Sequence[bool], *, ncols: int = 8):
    """Images titled `pred (true)`, green when right and red when wrong, as the course draws them."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig = new_figure((1.5 * ncols, 1.75 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title, ok in zip(axes.flat, images, titles, correct, strict=False):
        img = np.asarray(img).transpose(1, 2, 0)
        ax.imshow(img[:, :, 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
        ax.set_title(title, fontsize=7, color="green" if ok else "red")
    fig.tight_layout()
    return fig


def plot_run_comparison(runs: Sequence[tuple[str, Sequence[dict]]]):
    """Valid loss and valid accuracy per epoch of several runs, overlaid."""
    axes = new_figure((10, 3.6)).subplots(1, 2)
    for name, rows in runs:
        epochs = [int(r["epoch"]) for r in rows]
        axes[0].plot(epochs, [float(r["valid_loss"]) for r in rows], "o-", label=name)
        axes[1].plot(epochs, [100 * float(r["valid_acc"]) for r in rows], "o-", label=name)
    axes[0].set(xlabel="epoch", ylabel="valid loss", title="validation loss")
    axes[1].set(xlabel="epoch", ylabel="valid accuracy (%)", title="validation accuracy")
    for ax in axes:
        ax.legend(fontsize=7)
    return axes[0].figure
