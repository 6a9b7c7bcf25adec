"""Can the data under a score be trusted? Duplicates and leakage across splits, likely label errors, outliers,
class imbalance (`cnnlab audit`, and the duplicate check inside `cnnlab train`).

Duplicates, measured choices (bench/RESULTS.md, issue 19):
- exact: the same decoded pixels (same bytes imply the same pixels), by hash;
- near (resized, re-encoded, slightly cropped copies): a 16x16 grey thumbnail per image, mean-centred and
  unit-length, compared by cosine; the thumbnail of the image's 92% centre crop is compared too, so a
  slightly cropped copy still meets its original. A pair is a near duplicate when its similarity is at least
  FLOOR and the pair passes Lowe's ratio test: (1 - s1) / (1 - s2) < RATIO, with s1 the best and s2 the
  second-best match. An absolute threshold alone cannot work on homogeneous sets: distinct Fashion-MNIST
  trousers reach 0.99 as 16x16 thumbnails and 0.994 as EfficientNet embeddings, above a JPEG'd copy's
  0.7-0.9 embedding similarity; the ratio asks instead "is this match far closer than any other?".
  EfficientNet-Lite0 embeddings failed the same test (recall 0-45% at 1% false alarms on 25-28 px images),
  so the backbone's features serve the label and outlier checks, not duplicates.
- a duplicate whose two images sit in different splits is leakage: the test score saw training images.

Label issues come from out-of-fold probabilities of cross-validated logistic regression on the pretrained
backbone's pooled features at every level (cached on disk; standardised, 256 principal components); the headline
names the images whose given label the classifier finds unlikely in every fold split, cleanlab's
`find_label_issues` the "possible" rest. Outliers: cleanlab's OutOfDistribution score on the final features
(128 principal components). No network training.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from cnnlab.audit.degenerate import degenerate_reasons
from cnnlab.data.batches import Normalization
from cnnlab.data.rowfile import RowFile
from cnnlab.errors import CnnlabError
from cnnlab.models.pretrained import (
    DEFAULT_BACKBONE,
    PretrainedClassifier,
    backbone_preprocessing,
    level_columns,
    load_pretrained,
)
from cnnlab.predict.features import backbone_feature_rows, backbone_features

THUMB = 16  # px: the near-duplicate thumbnail's side
CROP = 0.92  # the centre crop compared as well (a copy cropped by up to ~4% a side)
FLOOR = 0.9  # least cosine similarity of a near-duplicate pair's thumbnails
RATIO = 0.3  # Lowe's ratio test on (1 - similarity): the best match must be this much closer than the next
IMBALANCE = 0.2  # a class with under this share of the largest class's images is flagged
CANDIDATES = 8  # nearest thumbnails kept per image in the fast pass, then scored exactly
RETRIEVE = 48  # PCA dimensions of the fast all-pairs pass
REDUCED = 128  # principal components of the final features the outlier check works on
LABEL_COMPONENTS = 256  # principal components of the standardised all-level features the label check works on
LABEL_C = 0.003  # inverse L2 strength of the label check's logistic regression (standardised features)
BLOCK_ELEMENTS = 2**25  # similarities per block of the all-pairs search (128 MB as float32)
PROJECT_ELEMENTS = 2**23  # feature values per block standardised and projected (32 MB as float32; scikit-learn's
# float64 temporaries of 2**25 held 0.3 GB more at 100,000 photos)
PCA_SAMPLE = 20_000  # images the principal components are fitted on (all of them below this)
SPLITS = 2  # fold splits (seeds) whose out-of-fold probabilities must agree on a headline label error (1 above
# SMALL_SET images, where the check's cost is the logistic regressions and each fold holds thousands of images)
UNLIKELY = 0.5  # the headline: in every split, the given label's out-of-fold probability is at most this share
# of its prior (the label's share of the images): 6.25% for 8 balanced classes, 5% for 10
SMALL_SET = 20_000  # images up to which the label check uses 10 folds (more training data per fold), 5 above
FEATURE_SIZE_SMALL = 96  # px: the backbone's input for images up to 64 px (224 for larger ones)
OUTLIER_NEIGHBOURS = 10  # cleanlab OutOfDistribution's default k


@dataclass
class Finding:
    """One row of the audit table."""

    issue: str  # "leakage", "degenerate", "duplicate", "label", "outlier"
    score: float  # ranking within the issue: similarity, or how unlikely the label / how far out
    image: int  # index into the source
    other: int | None = None  # the other image of a pair
    suggested: int | None = None  # a label issue's likelier class
    exact: bool = False  # a duplicate with the same pixels
    reason: str = ""  # a degenerate image's kind and measure


@dataclass
class Audit:
    findings: list[Finding] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def of(self, issue: str) -> list[Finding]:
        return [f for f in self.findings if f.issue == issue]


def split_names(n: int, splits: dict[str, np.ndarray]) -> np.ndarray:
    names = np.full(n, "", dtype=object)
    for split, idx in splits.items():
        names[np.asarray(idx)] = split
    return names


Pair = tuple[int, int, float, bool]  # (image, other image, similarity, same pixels)


def duplicate_pairs(images: torch.Tensor, *, block: int = 1024) -> list[Pair]:
    """Exact and near-duplicate pairs among uint8 `images` [N, C, H, W], whatever their splits: what training
    keeps together when it splits (data/groups.py), and what the audit classifies."""
    groups = _exact_groups(images)
    pairs: dict[tuple[int, int], tuple[float, bool]] = {}
    for members in groups.values():
        for other in members[1:]:
            pairs[(members[0], other)] = (1.0, True)
    group_of = np.full(len(images), -1, dtype=np.int64)
    for g, members in enumerate(groups.values()):
        group_of[members] = g
    s1, s2, best = _best_two(images, torch.from_numpy(group_of), block=block)
    ratio = (1 - s1) / (1 - s2).clamp_min(1e-9)
    for i in np.flatnonzero(((s1 >= FLOOR) & (ratio < RATIO)).numpy()):
        a, b = sorted((int(i), int(best[i])))
        pairs.setdefault((a, b), (round(float(s1[i]), 4), False))
    return [(a, b, sim, exact) for (a, b), (sim, exact) in pairs.items()]


def find_duplicates(
    images: torch.Tensor, splits: dict[str, np.ndarray], *, pairs: list[Pair] | None = None, block: int = 1024
) -> list[Finding]:
    """Duplicate pairs (found here, or `pairs` found before splitting) as findings: a pair across splits is
    leakage."""
    where = split_names(len(images), splits)
    findings = []
    for a, b, sim, exact in duplicate_pairs(images, block=block) if pairs is None else pairs:
        if where[a] == "" or where[b] == "":
            continue  # an image in no split (--train-limit): nothing to leak into
        if where[a] != where[b]:  # keep the training image as `other`: the held-out one is what leaked
            a, b = (b, a) if where[a] == "train" else (a, b)
        issue = "leakage" if where[a] != where[b] else "duplicate"
        findings.append(Finding(issue, sim, a, b, exact=exact))
    return sorted(findings, key=lambda f: (f.issue != "leakage", -f.score))


def _exact_groups(images: torch.Tensor) -> dict[str, list[int]]:
    """Images with identical pixels, by hash: only groups of two or more."""
    groups: dict[str, list[int]] = {}
    for start in range(0, len(images), 512):  # streamed images are read a block at a time
        flat = images[start : start + 512].reshape(-1, int(np.prod(images.shape[1:]))).numpy()
        for i, row in enumerate(flat, start):
            groups.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest(), []).append(i)
    return {k: v for k, v in groups.items() if len(v) > 1}


def thumbnails(images: torch.Tensor, crop: float = 1.0) -> torch.Tensor:
    """[N, THUMB*THUMB] grey thumbnails (of the centre `crop`), mean-centred and unit-length."""
    out = torch.empty(len(images), THUMB * THUMB)  # written in place: results kept in a list between the blocks'
    # freed temporaries kept glibc's heap from reusing them (a streamed 20,000-photo folder grew by 3.1 GB)
    for start in range(0, len(images), 128):  # 128 x 224-px photos are 77 MB as floats (512 held 0.45 GB more)
        g = images[start : start + 128].float().mean(1, keepdim=True)
        if crop < 1:
            h, w = g.shape[-2:]
            dy, dx = round(h * (1 - crop) / 2), round(w * (1 - crop) / 2)
            g = g[..., dy : h - dy, dx : w - dx]
        t = F.adaptive_avg_pool2d(g, THUMB).flatten(1)
        out[start : start + len(t)] = F.normalize(t - t.mean(1, keepdim=True), dim=1)
    return out


def _best_two(images: torch.Tensor, group_of: torch.Tensor, *, block: int):
    """For every image: its best and second-best similarity to another image (whole or centre crop either
    side; members of its own exact-duplicate group excluded), and the best match's index.

    All pairs are compared in a PCA projection of the thumbnails (RETRIEVE dims: the N x N comparison is memory
    bound, 3x faster than on whole thumbnails), keeping CANDIDATES per image; the candidates are then scored
    on the whole thumbnails, so the similarities reported are exact."""
    full, crop = thumbnails(images), thumbnails(images, CROP)
    n = len(full)
    if n < 2:
        return torch.full((n,), -1.0), torch.full((n,), -1.0), torch.zeros(n, dtype=torch.long)
    candidates = _candidates(full, crop, group_of, block=block)  # [n, k]
    exact = _candidate_similarities(full, crop, candidates)
    same = (group_of[candidates] == group_of[:, None]) & (group_of[:, None] >= 0)
    exact = exact.masked_fill(same | (candidates == torch.arange(n)[:, None]), -2)
    top = exact.topk(min(2, exact.shape[1]), dim=1)
    s2 = top.values[:, 1] if exact.shape[1] > 1 else torch.full((n,), -1.0)
    return top.values[:, 0], s2, candidates.gather(1, top.indices[:, :1])[:, 0]


def _candidate_similarities(full: torch.Tensor, crop: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[n, k] exact similarity of each image to its candidates (whole or centre crop either side), a block of rows
    at a time: the candidates' thumbnails gathered at once are n x k x THUMB^2 floats, 0.8 GB at 100,000 images, and
    the products as much again (the audit's peak there: bench/RESULTS.md)."""
    out = torch.empty(candidates.shape)
    block = max(1, BLOCK_ELEMENTS // max(1, candidates.shape[1] * full.shape[1]))
    for start in range(0, len(full), block):
        idx = candidates[start : start + block]
        f, c = full[start : start + block, :, None], crop[start : start + block, :, None]
        their_full, their_crop = full[idx], crop[idx]  # [block, k, THUMB^2]
        best = torch.bmm(their_full, f)
        torch.maximum(best, torch.bmm(their_full, c), out=best)
        torch.maximum(best, torch.bmm(their_crop, f), out=best)
        out[start : start + block] = best[..., 0]
    return out


def _candidates(full: torch.Tensor, crop: torch.Tensor, group_of: torch.Tensor, *, block: int) -> torch.Tensor:
    """Each image's CANDIDATES most similar others in the PCA projection (self and exact copies excluded)."""
    n = len(full)
    k = min(CANDIDATES, n - 1)
    block = max(16, min(block, BLOCK_ELEMENTS // n))  # two [block, n] buffers: 100,000 images held 820 MB at 1024
    mean = full.mean(0, keepdim=True)
    sample = full[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:10000]] - mean
    basis = torch.linalg.svd(sample, full_matrices=False).Vh[:RETRIEVE].T  # [THUMB^2, RETRIEVE]
    pf, pc = full @ basis, crop @ basis  # projections of centred-on-zero vectors: dot products stay close
    out = torch.empty(n, k, dtype=torch.long)
    buf, tmp = torch.empty(block, n), torch.empty(block, n)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sim, other = buf[: stop - start], tmp[: stop - start]
        torch.mm(pf[start:stop], pf.T, out=sim)
        torch.mm(pc[start:stop], pf.T, out=other)
        torch.maximum(sim, other, out=sim)
        torch.mm(pf[start:stop], pc.T, out=other)
        torch.maximum(sim, other, out=sim)
        rows = torch.arange(stop - start)
        sim[rows, torch.arange(start, stop)] = -2
        mine = group_of[start:stop, None]
        if bool((mine >= 0).any()):
            sim.masked_fill_((mine == group_of[None, :]) & (mine >= 0), -2)
        out[start:stop] = sim.topk(k, dim=1).indices
    return out


Rows = np.ndarray | RowFile  # features held, or read from the cache a block of rows at a time


def embeddings(
    images: torch.Tensor, *, cache_dir: Path | None, log: Callable[[str], None] | None = None, only_cached: bool = False
) -> tuple[Rows, Rows] | None:
    """The offline ImageNet backbone's pooled features: (final [N, D], every level [N, D_all]), from one pass cached on
    disk under `cache_dir` as a row file the checks read a block at a time (in memory without a cache; with
    `only_cached`, None when they are not there yet)."""
    if only_cached and not (cache_dir is not None and any((Path(cache_dir) / "features").glob("*.npy"))):
        return None  # nothing cached at all: no backbone to build and no weights to hash (train's every start)
    size = int(images.shape[-1])
    p = backbone_preprocessing(DEFAULT_BACKBONE)
    model = PretrainedClassifier(2, int(images.shape[1]), size, strategy="feature-extract",
                                 input_size=FEATURE_SIZE_SMALL if size <= 64 else p.input_size)  # fmt: skip
    load_pretrained(model)
    norm = Normalization(p.mean, p.std)
    if cache_dir is None:
        every_level = backbone_features(model, images, norm, cache_dir=None, log=log)[0].numpy()
    else:
        every_level = backbone_feature_rows(model, images, norm, cache_dir=cache_dir, log=log, only_cached=only_cached)
    if every_level is None:
        return None
    final = level_columns(model.level_widths(), model.all_levels(), model.levels).numpy()
    if not np.array_equal(final, np.arange(final[0], final[-1] + 1)):
        raise ValueError("the final level's features are not one block of columns")  # Lite0's are: its last level
    columns = every_level.columns if isinstance(every_level, RowFile) else (lambda a, b: every_level[:, a:b])
    return columns(int(final[0]), int(final[-1]) + 1), every_level


def _owned(rows: np.ndarray, features: Rows) -> np.ndarray:
    """`rows` (read from `features`) as float32 that may be changed in place: a copy when they are a view of an
    array the caller holds."""
    out = np.asarray(rows, dtype=np.float32)
    return out.copy() if isinstance(features, np.ndarray) and np.may_share_memory(out, features) else out


def reduced(features: Rows, *, k: int = REDUCED, seed: int = 0, fit_rows: int | None = None,
            prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
    """The features (each block of rows through `prepare` first, which may change its argument in place) projected
    on their first `k` principal components, fit on all images or a seeded sample of `fit_rows` (labels unseen).
    REDUCED for the outlier check (the checks on all 1,280 columns took 3.5x longer at 60,000 images,
    bench/RESULTS.md issue 19). Read and projected a block of rows at a time (the features may be a row file on
    disk): a whole centred copy of 100,000 photos' all-level features is 0.6 GB."""
    prepare = prepare or (lambda rows: rows)
    k = min(k, features.shape[1], len(features) - 1)
    block = max(1, PROJECT_ELEMENTS // features.shape[1])
    starts = range(0, len(features), block)
    if k >= features.shape[1] or k < 2:
        return np.concatenate([prepare(_owned(features[s : s + block], features)) for s in starts])
    rows = np.arange(len(features))
    if fit_rows is not None and fit_rows < len(features):
        rows = np.sort(np.random.default_rng(seed).permutation(len(features))[:fit_rows])
    # the sample is ours: centred in place (copy=False), not copied again
    solver = "randomized" if len(rows) < len(features) else "auto"
    pca = PCA(n_components=k, random_state=seed, svd_solver=solver, copy=False)
    pca.fit(prepare(_owned(features[rows], features)))
    out = np.empty((len(features), k), dtype=np.float32)
    for start in starts:
        out[start : start + block] = pca.transform(prepare(_owned(features[start : start + block], features)))
    return out


def label_space(features: Rows, *, seed: int = 0) -> np.ndarray:
    """All-level features standardised per column, then rotated onto their first LABEL_COMPONENTS principal
    components (fit on at most PCA_SAMPLE images, labels unseen) and not rescaled: the L2 penalty stays the one of
    the standardised features. On planted 5% flips this space (with LABEL_C) put the given label's probability
    far lower for a flipped image than for a true one; the final features alone, whitened to 128 components, left
    blood-cell flips at 50% recall (bench/RESULTS.md). Read and standardised a block at a time."""
    scaler = StandardScaler()
    block = max(1, PROJECT_ELEMENTS // features.shape[1])
    for start in range(0, len(features), block):
        scaler.partial_fit(features[start : start + block])
    mean, scale = scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)

    def standardise(rows: np.ndarray) -> np.ndarray:
        rows -= mean
        rows /= scale
        return rows

    return reduced(features, k=LABEL_COMPONENTS, seed=seed, fit_rows=PCA_SAMPLE, prepare=standardise)


def oof_probabilities(features: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> np.ndarray | None:
    """Out-of-fold class probabilities [N, classes] from 10-fold (5 above SMALL_SET images; stratified, seeded)
    logistic regression on `label_space` features; None when a class has fewer than 2 images. Each fold starts
    from the previous fold's weights (the solutions are close): half the L-BFGS iterations, probabilities within
    0.005 of cold starts."""
    folds = min(10 if len(labels) <= SMALL_SET else 5, int(np.bincount(labels).min()))
    if folds < 2:
        return None
    model = LogisticRegression(C=LABEL_C, max_iter=300, warm_start=True)
    probs = np.zeros((len(labels), int(labels.max()) + 1))
    for train, held_out in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        model.fit(features[train], labels[train])
        probs[np.ix_(held_out, model.classes_)] = model.predict_proba(features[held_out])
    return probs


def label_issues(features: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> tuple[list[Finding], np.ndarray]:
    """Label errors, ranked by how unlikely the given label is, and the out-of-fold probabilities (the mean of the
    fold splits). The headline (`label`) keeps the images whose given label gets at most UNLIKELY times its prior
    in every fold split (the image makes its label half as likely as a guess from the counts); cleanlab's
    `find_label_issues` adds the `possible label` rest (audit.csv only): cleanlab alone flagged 24% of a clean
    photo folder, nearly every image the classifier got wrong."""
    from cleanlab.filter import find_label_issues  # optional heavy import: cleanlab (label checks only)

    splits = SPLITS if len(labels) <= SMALL_SET else 1
    runs = [oof_probabilities(features, labels, seed=seed + r) for r in range(splits)]
    if runs[0] is None:
        return [], np.empty((0, 0))
    probs = np.mean(runs, axis=0)
    prior = np.bincount(labels, minlength=probs.shape[1]) / len(labels)
    given = np.stack([run[np.arange(len(labels)), labels] for run in runs]).max(0) / prior[labels]
    headline = np.flatnonzero(given <= UNLIKELY)
    proposed = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    headline = headline[np.argsort(given[headline], kind="stable")]  # least likely label first
    ranked = np.concatenate([headline, proposed[~np.isin(proposed, headline)]]).astype(np.int64)
    sure, possible = [], []
    for i in ranked:
        other = probs[i].copy()
        other[labels[i]] = -1
        suggested = int(other.argmax())
        finding = Finding("label", round(1 - float(probs[i, labels[i]]), 4), int(i), suggested=suggested)
        if given[i] <= UNLIKELY:
            sure.append(finding)
        else:
            finding.issue = "possible label"
            possible.append(finding)
    return sure + possible, probs


def outliers(features: np.ndarray, *, share: float = 0.005, k: int = OUTLIER_NEIGHBOURS) -> list[Finding]:
    """The least typical images: the lowest `share` by cleanlab's OutOfDistribution feature score, exp(-d / median
    d) with d the mean cosine distance to an image's `k` nearest other images (score = 1 - that). The neighbours are
    found here by blocked matrix products and top-k (`_mean_knn_cosine_distance`): cleanlab's scikit-learn search
    took 65 s on 60,000 images, this 11 s, same 300 images (scores within 1e-4)."""
    if len(features) < 12:
        return []
    d = _mean_knn_cosine_distance(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), k)
    scores = torch.exp(-d / d.median().clamp_min(100 * np.finfo(np.float64).eps)).numpy()
    worst = np.argsort(scores, kind="stable")[: max(1, int(share * len(scores)))]
    return [Finding("outlier", round(1 - float(scores[i]), 4), int(i)) for i in worst]


def _mean_knn_cosine_distance(x: torch.Tensor, k: int) -> torch.Tensor:
    """[N] mean cosine distance from each row to its `k` nearest other rows (itself excluded), in blocks of rows
    whose similarities to all rows are BLOCK_ELEMENTS (blocks of 2,048 rows held 0.8 GB at 100,000 images)."""
    unit = F.normalize(x, dim=1)
    block = max(1, BLOCK_ELEMENTS // len(unit))
    out = torch.empty(len(unit))
    for start in range(0, len(unit), block):
        sim = unit[start : start + block] @ unit.T
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = -2.0  # not its own neighbour
        out[start : start + block] = (1 - sim.topk(min(k, len(unit) - 1), dim=1).values).mean(1)
    return out


def class_counts(labels: np.ndarray, splits: dict[str, np.ndarray], class_names: list[str]) -> dict[str, Any]:
    per_split = {
        s: np.bincount(labels[np.asarray(idx)], minlength=len(class_names)).tolist() for s, idx in splits.items()
    }
    total = np.bincount(labels, minlength=len(class_names))
    small = [class_names[c] for c in range(len(class_names)) if total[c] < IMBALANCE * total.max()]
    return {"per_split": per_split, "smallest_to_largest": round(float(total.min() / total.max()), 3),
            "imbalanced_classes": small}  # fmt: skip


def audit(source, splits: dict[str, np.ndarray], *, labels_too: bool | str, cache_dir: Path | None, seed: int = 0,
          pairs: list[Pair] | None = None, groups: np.ndarray | None = None,
          log: Callable[[str], None] = print) -> Audit:  # fmt: skip
    """Every check on a loaded source and its splits. `labels_too`: also the embedding-based label and outlier
    checks, which cost one backbone pass over the images (cached); "cached": only if that pass is cached. `pairs`:
    the duplicates found before splitting (else found here); `groups`: one group id per image, whose groups that
    cross splits are counted (a patient in train/ and test/)."""
    labels = source.labels.numpy()
    if len(source.class_names) < 2 or len(np.unique(labels)) < 2:
        raise CnnlabError(f"{source.name} has a single class; an audit (and a classifier) needs two or more")
    result, cost = Audit(), {}
    start = time.perf_counter()
    found = find_duplicates(source.images, splits, pairs=pairs)
    result.findings += [f for f in found if f.issue == "leakage"] + find_degenerate(source.images)
    result.findings += [f for f in found if f.issue != "leakage"]
    cost["duplicates_s"] = round(time.perf_counter() - start, 1)
    features = None
    if labels_too:
        start = time.perf_counter()
        features = embeddings(source.images, cache_dir=cache_dir, log=log, only_cached=labels_too == "cached")
        cost["embeddings_s"] = round(time.perf_counter() - start, 1)
    if features is not None:
        start = time.perf_counter()
        (final, every_level), features = features, None
        space, typical = label_space(every_level, seed=seed), reduced(final, seed=seed, fit_rows=PCA_SAMPLE)
        del final, every_level  # the checks below work on the projections (held features: 0.6 GB at 100k)
        found, _ = label_issues(space, labels, seed=seed)
        result.findings += [f for f in found if f.issue == "label"] + outliers(typical)
        result.findings += [f for f in found if f.issue != "label"]  # the possible ones: audit.csv, last
        cost["labels_outliers_s"] = round(time.perf_counter() - start, 1)
    result.summary = {
        "images": len(labels), "classes": len(source.class_names),
        "splits": {s: len(idx) for s, idx in splits.items()},
        "counts": {i: len(result.of(i)) for i in ("leakage", "degenerate", "duplicate", "label", "possible label",
                                                   "outlier")},
        "degenerate_kinds": dict(Counter(f.reason.split(":")[0] for f in result.of("degenerate"))),
        "leaked_held_out_images": _leaked(result, split_names(len(labels), splits)),
        "class_balance": class_counts(labels, splits, source.class_names),
        "groups_across_splits": groups_across_splits(groups, splits) if groups is not None else None,
        "checks": ["duplicates"] + (["labels", "outliers"] if "labels_outliers_s" in cost else []),
        "method": {"thumbnail_px": THUMB, "crop": CROP, "floor": FLOOR, "ratio": RATIO,
                   "labels": f"logistic regression (C={LABEL_C}) on Lite0 features of every level (standardised, "
                             f"PCA {LABEL_COMPONENTS}), out of fold: two splits of 10 folds (one of 5 above "
                             f"{SMALL_SET:,} images); headline: each split gives the given label <= {UNLIKELY} x its "
                             "share of the images; possible: cleanlab find_label_issues",
                   "outliers": f"cleanlab OutOfDistribution (k=10) on Lite0's final features (PCA {REDUCED})",
                   "degenerate": "blank, stripes, flat, blurred: audit/degenerate.py"},
        "seconds": cost,
    }  # fmt: skip
    return result


def groups_across_splits(groups: np.ndarray, splits: dict[str, np.ndarray]) -> dict[str, Any]:
    """Groups with images in more than one split, and the valid/test images of a group that also has training
    images (their scores are not independent of training)."""
    where = split_names(len(groups), splits)
    seen: dict[str, set[str]] = {}
    for g, s in zip(groups.tolist(), where.tolist(), strict=True):
        if s:
            seen.setdefault(str(g), set()).add(s)
    crossing = sorted(g for g, s in seen.items() if len(s) > 1)
    trained = {g for g, s in seen.items() if "train" in s}
    held = {s: int(sum(1 for g, w in zip(groups.tolist(), where.tolist(), strict=True) if w == s and str(g) in trained))
            for s in ("valid", "test")}  # fmt: skip
    return {"groups": len(seen), "crossing": len(crossing), "examples": crossing[:10], "held_out_images": held}


def find_degenerate(images: torch.Tensor) -> list[Finding]:
    """Blank, striped, flat and blurred images (audit/degenerate.py), ranked by kind."""
    found = degenerate_reasons(images)
    return [Finding("degenerate", score, i, reason=reason)
            for i, (reason, score) in sorted(found.items(), key=lambda item: -item[1][1])]  # fmt: skip


def _leaked(found: Audit, where: np.ndarray) -> dict[str, int]:
    """How many valid and test images duplicate an image of another split."""
    return {s: len({f.image for f in found.of("leakage") if where[f.image] == s}) for s in ("valid", "test")}


def deduplicated(splits: dict[str, np.ndarray], found: Audit) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """`splits` without the valid/test images that duplicate a training image (`--dedupe`), and what was
    dropped per split. Nothing is deleted from disk."""
    leaked = {f.image for f in found.of("leakage") if f.other in set(splits["train"].tolist())}
    dropped = {s: sorted(set(splits[s].tolist()) & leaked) for s in ("valid", "test")}
    kept = {s: (np.setdiff1d(idx, dropped[s]) if s in dropped else idx) for s, idx in splits.items()}
    return kept, dropped


def without_degenerate(
    splits: dict[str, np.ndarray], found: Audit
) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """`splits` without the degenerate images (`--drop-degenerate`, every split), and what was dropped per split.
    Nothing is deleted from disk."""
    bad = np.asarray(sorted({f.image for f in found.of("degenerate")}), dtype=np.int64)
    dropped = {s: sorted(set(np.asarray(idx).tolist()) & set(bad.tolist())) for s, idx in splits.items()}
    return {s: np.setdiff1d(idx, bad) for s, idx in splits.items()}, {s: v for s, v in dropped.items() if v}


def restored(splits: dict[str, np.ndarray], dropped: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """`deduplicated`'s inverse: the splits with the dropped images back in."""
    back = {s: np.asarray(dropped.get(s, []), dtype=np.int64) for s in splits}
    return {s: np.sort(np.concatenate([np.asarray(idx, dtype=np.int64), back[s]])) for s, idx in splits.items()}


def all_restored(splits: dict[str, np.ndarray], dropped: dict[str, dict[str, list[int]]]) -> dict[str, np.ndarray]:
    """The splits with everything training left out back in (`dropped`: why -> split -> images, as splits.json
    keeps it under "deduplicated" and "degenerate")."""
    for per_split in dropped.values():
        splits = restored(splits, per_split or {})
    return splits


def rows(found: Audit, source, splits: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The audit table, ranked: leakage first, then degenerate images, duplicates, label issues, outliers."""
    where, names, labels = split_names(len(source.labels), splits), source.class_names, source.labels.numpy()
    out = []
    for rank, f in enumerate(found.findings, 1):
        row = {"rank": rank, "issue": f.issue + (" (exact)" if f.exact else ""), "score": f.score,
               "split": where[f.image], "image": source.ids[f.image], "label": names[labels[f.image]],
               "other_split": "", "other_image": "", "other_label": "", "suggested_label": "",
               "reason": f.reason}  # fmt: skip
        if f.other is not None:
            row.update(other_split=where[f.other], other_image=source.ids[f.other], other_label=names[labels[f.other]])
        if f.suggested is not None:
            row["suggested_label"] = names[f.suggested]
        out.append(row)
    return out


def as_json(found: Audit, table: list[dict[str, Any]]) -> dict[str, Any]:
    return {**found.summary, "findings": table}
