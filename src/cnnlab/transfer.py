"""Choosing a transfer-learning strategy: the course's dataset-size x similarity matrix, measured.

|                  | similar to ImageNet | different from ImageNet   |
| ---------------- | ------------------- | ------------------------- |
| small dataset    | feature-extract     | truncate (early features) |
| large dataset    | fine-tune           | retrain (from scratch)    |

Size: training images per class, small below SMALL_PER_CLASS. Similarity: ImageNet is colour
photographs, so grey images (X-rays, sketches, Fashion-MNIST) count as different; colour images count
as similar when the pretrained ImageNet classifier labels a sample of them confidently (mean top-1
probability >= SIMILAR_CONFIDENCE). Measured with efficientnet_lite0: scikit-image/scikit-learn photos
0.41, Fashion-MNIST 0.24-0.30, LFW face crops 0.17, scikit-learn digits 0.08.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from cnnlab.data.batches import Normalization
from cnnlab.models.pretrained import PretrainedClassifier, load_pretrained

SMALL_PER_CLASS = 1000  # training images per class; below this a dataset is "small"
SIMILAR_CONFIDENCE = 0.25  # mean top-1 ImageNet probability; at or above this the images are "similar"
SAMPLE = 64  # training images the similarity is measured on

MATRIX = {
    (True, True): "feature-extract",
    (True, False): "truncate",
    (False, True): "fine-tune",
    (False, False): "retrain",
}


@dataclass
class StrategyChoice:
    strategy: str
    reason: str
    per_class: float
    small: bool
    confidence: float | None  # None when the backbone has no ImageNet head to ask
    similar: bool

    def to_dict(self) -> dict:
        return asdict(self)


def choose_strategy(
    backbone: str, images: torch.Tensor, labels: torch.Tensor, n_classes: int, norm: Normalization,
    *, weights: str | None = None, seed: int = 0,
) -> StrategyChoice:  # fmt: skip
    """Pick a strategy for training images `images` (uint8 [N, C, H, W]) with `labels`."""
    per_class = len(labels) / max(n_classes, 1)
    small = per_class < SMALL_PER_CLASS
    grey = images.shape[1] == 1
    confidence = imagenet_confidence(backbone, _sample(images, labels, seed), norm, weights=weights)
    similar = not grey and (confidence is None or confidence >= SIMILAR_CONFIDENCE)
    strategy = MATRIX[(small, similar)]
    size = f"{'small' if small else 'large'} ({per_class:.0f} images/class, threshold {SMALL_PER_CLASS})"
    if grey:
        sim = "different (grey images; ImageNet is colour photographs)"
    elif confidence is None:
        sim = "similarity unknown (the weights have no ImageNet head), assumed similar"
    else:
        sim = (
            f"{'similar' if similar else 'different'} (ImageNet top-1 confidence {confidence:.2f} on "
            f"{min(SAMPLE, len(labels))} images, threshold {SIMILAR_CONFIDENCE})"
        )
    return StrategyChoice(strategy, f"{size}, {sim}", per_class, small, confidence, similar)


def _sample(images: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Up to SAMPLE images, spread over the classes (round-robin over a seeded shuffle of each class)."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels.numpy() == c)) for c in np.unique(labels.numpy())]
    picked: list[int] = []
    for i in range(max(len(ix) for ix in by_class)):
        picked += [int(ix[i]) for ix in by_class if i < len(ix)]
        if len(picked) >= SAMPLE:
            break
    return images[torch.as_tensor(picked[:SAMPLE])]


@torch.inference_mode()
def imagenet_confidence(backbone: str, images: torch.Tensor, norm: Normalization, *, weights=None) -> float | None:
    """Mean top-1 softmax probability of the pretrained 1000-class model on `images`."""
    model = PretrainedClassifier(1000, 3, images.shape[-1], backbone=backbone, strategy="feature-extract")
    if not load_pretrained(model, weights, with_head=True):
        return None  # a weights file without the ImageNet classifier
    model.eval()
    x = norm.apply(images).contiguous(memory_format=torch.channels_last)
    probs = torch.softmax(model(x), dim=1)
    return float(probs.max(dim=1).values.mean())
