"""Groups: images that must stay in one split. Several photos of one patient, specimen or session (named by
`--group-by REGEX` on each file's relative path, or listed in `--groups FILE.csv`), and every cluster of
duplicates (a copy in train and its original in test would make the test score a memory test).

A group id is a string; an image in no group has none of its own until `merge_groups` gives it one.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cnnlab.errors import CnnlabError


def user_groups(source, *, group_by: str | None, groups_file: str | None) -> np.ndarray | None:
    """One group id per image of `source` from `--group-by` or `--groups`, or None when neither is given."""
    if group_by is None and groups_file is None:
        return None
    if source.fingerprints is None:
        raise CnnlabError(f"--group-by and --groups name files of a folder; {source.name} is a named dataset")
    if group_by is not None and groups_file is not None:
        raise CnnlabError("give --group-by or --groups, not both")
    if group_by is not None:
        return groups_from_pattern(source.keys, group_by)
    return groups_from_csv(source.keys, Path(groups_file))


def groups_from_pattern(keys: list[str], pattern: str) -> np.ndarray:
    """The group of each relative path: the pattern's first capture group (or its whole match), searched in the
    path. `--group-by 'patient(\\d+)'` puts `cat/patient07_a.jpg` in group `07`.

    >>> groups_from_pattern(["a/p1_x.jpg", "b/p1_y.jpg", "a/p2_x.jpg"], r"p(\\d+)_").tolist()
    ['1', '1', '2']
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise CnnlabError(f"--group-by '{pattern}' is not a regular expression ({exc}; e.g. 'patient(\\d+)')") from None
    found = []
    misses = []
    for key in keys:
        match = regex.search(key)
        if match is None:
            misses.append(key)
            continue
        found.append(match.group(1) if regex.groups else match.group(0))
    if misses:
        raise CnnlabError(
            f"--group-by '{pattern}' matches no part of {len(misses)} file name(s), first: {misses[0]} (change the "
            "pattern so every file's relative path holds its group, or list the groups in --groups FILE.csv)"
        )
    return np.asarray(found, dtype=object)


def groups_from_csv(keys: list[str], path: Path) -> np.ndarray:
    """The group of each relative path from a CSV of `file,group` rows (a header row is allowed); every file of
    the folder must be listed."""
    if not path.is_file():
        raise CnnlabError(f"--groups file not found: {path} (a CSV of file,group rows)")
    table: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for row in csv.reader(fh):
            if len(row) >= 2 and row[0].strip() and row[0].strip().lower() != "file":
                table[Path(row[0].strip()).as_posix()] = row[1].strip()
    missing = [k for k in keys if k not in table]
    if missing:
        raise CnnlabError(
            f"{path} gives no group for {len(missing)} of the folder's {len(keys)} files, first: {missing[0]} "
            f"(add a row `{missing[0]},GROUP`; files are named by their path inside the folder)"
        )
    return np.asarray([table[k] for k in keys], dtype=object)


def identical_files(fingerprints: list[str] | None) -> list[tuple[int, int]]:
    """Pairs of files with the same bytes (same fingerprint): the exact duplicates known without decoding."""
    if fingerprints is None:
        return []
    members: dict[str, list[int]] = defaultdict(list)
    for i, fp in enumerate(fingerprints):
        members[fp].append(i)
    return [(m[0], other) for m in members.values() for other in m[1:]]


def merge_groups(n: int, groups: np.ndarray | None, pairs: list[tuple[int, int]]) -> np.ndarray | None:
    """One group id per image: the user's groups joined through every duplicate pair (a duplicate of one patient's
    photo filed under another brings the two together). None when there is nothing to keep together.

    >>> merge_groups(4, None, [(0, 2)]).tolist()
    ['dup0', 'dup1', 'dup0', 'dup2']
    """
    if groups is None and not pairs:
        return None
    rows, cols = [], []
    if pairs:
        a, b = np.asarray(pairs, dtype=np.int64).T
        rows, cols = list(a), list(b)
    if groups is not None:  # chain each group's members: a path through the group
        order = np.argsort(groups, kind="stable")
        same = groups[order][1:] == groups[order][:-1]
        rows += list(order[:-1][same])
        cols += list(order[1:][same])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    if groups is None:
        return np.asarray([f"dup{c}" for c in component], dtype=object)
    first = {}  # a component keeps the name of its first member's group
    for i, c in enumerate(component):
        first.setdefault(c, str(groups[i]))
    return np.asarray([first[c] for c in component], dtype=object)
