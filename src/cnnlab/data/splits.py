"""Train/valid/test splits as pure functions of labels and a seed (a local generator, no global state)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.files import write_text_atomic


def stratified_split(
    labels: np.ndarray, indices: np.ndarray, fraction: float, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (rest, taken) with `fraction` of every class in `taken`.

    Each class contributes round(fraction * count) images, so class proportions agree across the two
    parts up to rounding. Both parts come back sorted; the same seed gives the same split.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)[indices]
    taken = []
    for cls in np.unique(labels):
        members = indices[labels == cls]
        k = int(round(fraction * len(members)))
        taken.append(rng.permutation(members)[:k])
    taken_idx = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=np.int64)
    rest = np.setdiff1d(indices, taken_idx, assume_unique=True)
    return rest, taken_idx


def make_splits(
    labels: np.ndarray,
    partitions: dict[str, np.ndarray],
    *,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    train_limit: int | None = None,
) -> dict[str, np.ndarray]:
    """Return {"train", "valid", "test"} index arrays into the source.

    The source's own partitions win (an official test set, a folder's valid/ subfolder); what is missing
    is carved out of the training pool, stratified: test first (`test_fraction`), then valid
    (`valid_fraction` of what remains, the course's SubsetRandomSampler idea).
    """
    pool = np.asarray(partitions["train"])
    test = partitions.get("test")
    if test is None:
        pool, test = stratified_split(labels, pool, test_fraction, seed=seed)
    valid = partitions.get("valid")
    if valid is None:
        pool, valid = stratified_split(labels, pool, valid_fraction, seed=seed + 1)
    if train_limit is not None and train_limit < len(pool):
        _, pool = stratified_split(labels, pool, train_limit / len(pool), seed=seed + 2)
    splits = {"train": pool, "valid": np.asarray(valid), "test": np.asarray(test)}
    for name, idx in splits.items():
        if len(idx) == 0:
            raise CnnlabError(
                f"the {name} split is empty ({len(labels)} images in all; add images or change the fractions)"
            )
    return splits


def save_splits(
    splits: dict[str, np.ndarray], path: Path, *, seed: int, dropped: dict[str, dict[str, list[int]]] | None = None
) -> None:
    """splits.json; `dropped`: what training left out, by why ("deduplicated": held-out copies of training images,
    --dedupe; "degenerate": --drop-degenerate) and split (indices into the source), so the run says it."""
    payload = {"seed": seed, **{k: v.tolist() for k, v in splits.items()}}
    for why, per_split in (dropped or {}).items():
        payload[why] = per_split
    write_text_atomic(Path(path), json.dumps(payload))


def load_splits(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CnnlabError(f"{path} is missing (the run folder is incomplete; train it again)")
    raw = json.loads(path.read_text())
    return {k: np.asarray(raw[k], dtype=np.int64) for k in ("train", "valid", "test")}
