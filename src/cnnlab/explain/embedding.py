"""The network's penultimate-layer features in 2-D (t-SNE or PCA), and how well the 2-D map keeps the
classes apart (k-nearest-neighbour accuracy in 2-D, cross-validated), so the picture's claim is a number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from cnnlab.errors import CnnlabError
from cnnlab.predict.features import backbone_features

EMBEDDINGS = ("tsne", "pca")


def stratified_sample(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """Up to `n` positions with every class in its share, seeded; sorted. Each class's members are ranked
    by (position in a shuffled order) / (class size), so taking the n lowest ranks takes each class evenly."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    ranks = np.empty(len(labels))
    for k in np.unique(labels):
        members = order[labels[order] == k]
        ranks[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.sort(np.argsort(ranks, kind="stable")[:n])


def penultimate(model, images: torch.Tensor, norm, *, cache_dir: Path | None, batch: int = 500) -> torch.Tensor:
    """`forward_features` of uint8 images (pooled if the model returns maps); a frozen backbone reads the
    features training cached."""
    if model.frozen and cache_dir is not None:
        return model.select_levels(backbone_features(model, images, norm, cache_dir=cache_dir)[0]).float()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            f = model.forward_features(norm.apply(images[i : i + batch]))
            out.append((f.mean(dim=tuple(range(2, f.dim()))) if f.dim() > 2 else f).float())
    return torch.cat(out)


def embed(features: np.ndarray, method: str, *, seed: int) -> np.ndarray:
    """2-D coordinates of `features` [N, D] by scikit-learn's TSNE (PCA-initialised) or PCA."""
    if method not in EMBEDDINGS:
        raise CnnlabError(f"unknown embedding '{method}' (choose from: {', '.join(EMBEDDINGS)})")
    if len(features) < 5:
        raise CnnlabError(f"an embedding needs at least 5 images, got {len(features)}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    perplexity = float(min(30, (len(features) - 1) / 3))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features)


def knn_accuracy(coords: np.ndarray, labels: np.ndarray, *, k: int = 5) -> float:
    """5-fold cross-validated accuracy of a k-nearest-neighbour classifier on the 2-D coordinates."""
    folds = min(5, int(np.bincount(labels).min()) if len(labels) else 0)
    if folds < 2:
        return float("nan")
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    smallest_fit = len(labels) - -(-len(labels) // folds)  # images a fold's classifier is fit on, at least
    return float(cross_val_score(KNeighborsClassifier(min(k, smallest_fit)), coords, labels, cv=cv).mean())
