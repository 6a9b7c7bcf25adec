"""Train/valid/test splits: pure functions of labels, groups and a seed (a local generator, no global state), and
the run's record of them, `splits.json`, by file identity.

A split stored as positions in a listing is not a split: 20 images added to one class folder made `cnnlab evaluate`
score another test set (40.00% -> 44.17%, training images inside) with no word. So a folder's run records every
file of every split by its relative path and fingerprint (data/identity.py), and `read_run_splits` finds exactly
those files again: files added since are named and never join a split, a recorded file gone or changed is an
error (or, asked for, left out and counted). A named dataset keeps its fixed order and records its checksum.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.files import write_text_atomic

SPLIT_NAMES = ("train", "valid", "test")
FORMAT = 2  # splits.json: 1 (no "format" key) recorded positions, 2 file identities
DROPPED = ("deduplicated", "degenerate")  # what training may leave out, by why


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


def grouped_split(
    labels: np.ndarray, indices: np.ndarray, groups: np.ndarray, fraction: float, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (rest, taken) so that no group spans both parts and every class's share in `taken` is
    as close to `fraction` as whole groups allow.

    Groups are visited in a seeded random order; a group is taken when it brings the per-class counts of `taken`
    no farther from their targets (round(fraction * count), as `stratified_split`), summed over classes: a tie
    takes, so 3 patients of 4 images with a target of 2 give one patient, not none. With one image per group this
    takes exactly the target of every class. scikit-learn's StratifiedGroupKFold makes k folds of
    1/k each, not a fraction such as 0.15, hence this greedy pass.
    """
    rng = np.random.default_rng(seed)
    labels, groups = np.asarray(labels)[indices], np.asarray(groups)[indices]
    names, member_of = np.unique(groups, return_inverse=True)
    classes = int(labels.max()) + 1 if len(labels) else 0
    counts = np.zeros((len(names), classes), dtype=np.int64)
    np.add.at(counts, (member_of, labels), 1)
    target = np.round(fraction * counts.sum(0))
    taken_counts, taken = np.zeros(classes), np.zeros(len(names), dtype=bool)
    for g in rng.permutation(len(names)):
        after = taken_counts + counts[g]
        if np.abs(target - after).sum() <= np.abs(target - taken_counts).sum():  # a tie takes: no empty part
            taken_counts, taken[g] = after, True
    mask = taken[member_of]
    return np.sort(indices[~mask]), np.sort(indices[mask])


def _split(labels, indices, groups, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified by class; by whole groups where any group holds two or more of `indices`."""
    if groups is not None and len(np.unique(np.asarray(groups)[indices])) < len(indices):
        return grouped_split(labels, indices, groups, fraction, seed=seed)
    return stratified_split(labels, indices, fraction, seed=seed)


def make_splits(
    labels: np.ndarray,
    partitions: dict[str, np.ndarray],
    *,
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    train_limit: int | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Return {"train", "valid", "test"} index arrays into the source.

    The source's own partitions win (an official test set, a folder's valid/ subfolder); what is missing
    is carved out of the training pool, stratified: test first (`test_fraction`), then valid
    (`valid_fraction` of what remains, the course's SubsetRandomSampler idea). With `groups` (one id per image:
    a patient, a source photo, a cluster of duplicates), no group is cut across the parts carved here.
    """
    pool = np.asarray(partitions["train"])
    test = partitions.get("test")
    if test is None:
        pool, test = _split(labels, pool, groups, test_fraction, seed=seed)
    valid = partitions.get("valid")
    if valid is None:
        pool, valid = _split(labels, pool, groups, valid_fraction, seed=seed + 1)
    if train_limit is not None and train_limit < len(pool):
        _, pool = stratified_split(labels, pool, train_limit / len(pool), seed=seed + 2)
    splits = {"train": pool, "valid": np.asarray(valid), "test": np.asarray(test)}
    for name, idx in splits.items():
        if len(idx) == 0:
            raise CnnlabError(
                f"the {name} split is empty ({len(labels)} images in all; add images or change the fractions)"
            )
    return splits


# ---- splits.json: the run's record ------------------------------------------------------------------------


def save_splits(
    splits: dict[str, np.ndarray], path: Path, *, source, seed: int,
    dropped: dict[str, dict[str, list[int]]] | None = None, groups: np.ndarray | None = None,
) -> None:  # fmt: skip
    """splits.json, by identity. A folder's run records each split's files by relative path, every file's
    fingerprint, the files of the folder in no split (--train-limit) and the group of every image that shares
    one; a named dataset its indices and checksum. `dropped`: what training left out, by why ("deduplicated":
    held-out copies of training images, --dedupe; "degenerate": --drop-degenerate) and split."""
    keys = source.keys
    payload: dict[str, Any] = {"format": FORMAT, "seed": seed, "source": source.name}
    by_file = source.fingerprints is not None

    def record(idx) -> list:
        return [keys[int(i)] for i in idx] if by_file else [int(i) for i in idx]

    payload.update({name: record(idx) for name, idx in splits.items()})
    dropped = dropped or {}
    for why, per_split in dropped.items():
        payload[why] = {s: record(idx) for s, idx in per_split.items()}
    if by_file:
        used = np.unique(np.concatenate([np.asarray(i, dtype=np.int64) for i in _all_parts(splits, dropped)]))
        payload["unused"] = [keys[i] for i in np.setdiff1d(np.arange(len(keys)), used)]
        payload["fingerprints"] = {keys[i]: source.fingerprints[i] for i in used}
    else:
        payload["checksum"] = source.checksum
    if groups is not None:
        size = Counter(groups.tolist())
        payload["groups"] = {str(keys[i]): str(g) for i, g in enumerate(groups.tolist()) if size[g] > 1}
    write_text_atomic(Path(path), json.dumps(payload))


def _all_parts(splits, dropped) -> list:
    return list(splits.values()) + [idx for per_split in dropped.values() for idx in per_split.values()]


@dataclass
class RunSplits:
    """A run's splits found again in the data as it is now."""

    splits: dict[str, np.ndarray]  # train/valid/test indices into the source as loaded now
    dropped: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # why -> split -> indices
    groups: dict[str, str] = field(default_factory=dict)  # identity key -> group, for images that share one
    changes: dict[str, Any] = field(default_factory=dict)  # what changed in the folder since training (eval.json)
    note: str | None = None  # the one line to print about it, None when nothing changed

    def group_ids(self, source, indices: np.ndarray) -> np.ndarray:
        """The group of each image at `indices` (an image in no recorded group is its own)."""
        return np.asarray([self.groups.get(source.keys[int(i)], f"#{source.keys[int(i)]}") for i in indices])


def read_run_splits(
    path: Path, source, *, needed: tuple[str, ...] = SPLIT_NAMES, skip_changed: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> RunSplits:  # fmt: skip
    """The run's recorded splits as indices into `source` (loaded now). Files added since training join no split
    and are named; a recorded file of a `needed` split that is gone or changed is an error naming it, unless
    `skip_changed` (then it is left out and counted; None: the command has no --skip-changed to offer). Changed files
    of the other splits are left out. An older run's positional record is used as it is, with a note. `log` gets
    the one line about what changed."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path} is missing (the run folder is incomplete; train it again)")
    raw = json.loads(path.read_text())
    if raw.get("format") is None:
        return _positional(raw, path, log)
    if "fingerprints" not in raw:
        return _by_dataset(raw, source, path)
    return _by_file(raw, source, path, needed=needed, skip_changed=skip_changed, log=log)


def load_splits(path: Path, source) -> dict[str, np.ndarray]:
    """The run's train/valid/test indices into `source`, every recorded file required unchanged."""
    return read_run_splits(path, source).splits


def _positional(raw: dict, path: Path, log) -> RunSplits:
    note = (f"note: {path} records positions in the folder listing (a run made before cnnlab recorded files): if "
            "the folder changed since training, these are not the images it was split into (train again to record "
            "them by file)")  # fmt: skip
    if log is not None:
        log(note)
    splits = {k: np.asarray(raw[k], dtype=np.int64) for k in SPLIT_NAMES}
    dropped = {why: {s: np.asarray(v, dtype=np.int64) for s, v in (raw.get(why) or {}).items()} for why in DROPPED}
    return RunSplits(splits, dropped, note=note, changes={"positional": True})


def _by_dataset(raw: dict, source, path: Path) -> RunSplits:
    if source.checksum is not None and raw.get("checksum") not in (None, source.checksum):
        raise CnnlabError(
            f"{source.name} is not the data this run trained on (checksum {source.checksum} vs {raw['checksum']} in "
            f"{path}): restore the original files, or train a new run"
        )
    n = len(source.labels)
    splits = {k: np.asarray(raw[k], dtype=np.int64) for k in SPLIT_NAMES}
    if any(len(v) and int(v.max()) >= n for v in splits.values()):
        raise CnnlabError(f"{path} names images past the {n} of {source.name} (train a new run)")
    dropped = {why: {s: np.asarray(v, dtype=np.int64) for s, v in (raw.get(why) or {}).items()} for why in DROPPED}
    return RunSplits(splits, dropped, raw.get("groups") or {})


def _by_file(raw: dict, source, path: Path, *, needed, skip_changed: bool, log) -> RunSplits:
    if source.fingerprints is None:
        raise CnnlabError(f"{path} records a folder's files, but {source.name} is not a folder (check --data)")
    where = {key: i for i, key in enumerate(source.keys)}
    recorded: dict[str, str] = raw["fingerprints"]
    missing = [k for k in recorded if k not in where]
    modified = [k for k in recorded if k in where and source.fingerprints[where[k]] != recorded[k]]
    known = set(recorded) | set(raw.get("unused") or [])
    added = [i for i, key in enumerate(source.keys) if key not in known]
    changed = set(missing) | set(modified)
    split_of = {k: s for s in SPLIT_NAMES for k in raw[s]}
    blocking = [k for k in missing + modified if split_of.get(k) in needed]
    if blocking and not skip_changed:
        k = blocking[0]
        what = "was removed" if k in missing else "was changed"
        more = f" (and {len(blocking) - 1} more recorded file(s))" if len(blocking) > 1 else ""
        skip = "" if skip_changed is None else "pass --skip-changed to use the unchanged rest, "
        raise CnnlabError(
            f"{split_of[k]} file {k} {what} since training{more}: restore it, {skip}or train a new run on the "
            "folder as it is"
        )
    splits = {s: np.asarray([where[k] for k in raw[s] if k not in changed], dtype=np.int64) for s in SPLIT_NAMES}
    dropped = {
        why: {s: np.asarray([where[k] for k in keys if k not in changed], dtype=np.int64) for s, keys in per.items()}
        for why in DROPPED if (per := raw.get(why))
    }  # fmt: skip
    classes = Counter(source.class_names[int(source.labels[i])] for i in added)
    changes = {"added": len(added), "added_by_class": dict(classes), "missing": len(missing),
               "modified": len(modified),
               "left_out": {s: sum(1 for k in raw[s] if k in changed) for s in SPLIT_NAMES}}  # fmt: skip
    note = None
    if added or missing or modified:
        per_class = ", ".join(f"{n} {c}" if len(classes) > 1 else c for c, n in sorted(classes.items()))
        note = (f"folder changed since training: +{len(added)} file(s)" + (f" ({per_class})" if added else "")
                + f", -{len(missing)}, {len(modified)} modified; the run's recorded files are used"
                + (" (new files join no split)" if added else ""))  # fmt: skip
        if changed:
            left = ", ".join(f"{n} {s}" for s, n in changes["left_out"].items() if n)
            note += f"; left out as gone or changed: {left or 'none of a split'}"
        if log is not None:
            log(note)
    return RunSplits(splits, dropped, raw.get("groups") or {}, changes, note)
