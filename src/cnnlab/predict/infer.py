"""Model outputs for in-memory images and for image files, using a checkpoint's stored preprocessing."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.data.batches import Normalization
from cnnlab.data.images import collect_images, decoded_chunks, fit_image
from cnnlab.data.sources import load_source
from cnnlab.data.user_dataset import DatasetImages, as_pil
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.base import Classifier
from cnnlab.models.checkpoint import Checkpoint, InputSpec, check_compatible, load_checkpoint
from cnnlab.models.pretrained import PretrainedClassifier, backbone_preprocessing, imagenet_class_names, load_pretrained
from cnnlab.predict.backends import choose_backend
from cnnlab.predict.features import backbone_features
from cnnlab.runs import RunFile, open_run, recorded_tta

PREDICT_BATCH_VALUES = 64 * 3 * 224 * 224  # input values per prediction batch (1,000 Fashion-MNIST images fit)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_from_checkpoint(ckpt: Checkpoint, path: Path) -> Classifier:
    """Rebuild the model a checkpoint describes and load its weights strictly, in eval mode."""
    prep, model_config = ckpt.preprocessing, ckpt.config.get("model", {})
    model = create_model(
        ckpt.model_name, num_classes=len(ckpt.class_names), in_channels=prep.channels, image_size=prep.image_size,
        options=model_config.get("options") or {}, strategy=ckpt.strategy,
    )  # fmt: skip
    try:
        model.load_state_dict(ckpt.weights)
    except RuntimeError as exc:
        raise CnnlabError(
            f"checkpoint {path} does not fit model '{ckpt.model_name}': {str(exc).splitlines()[0][:160]} "
            "(the file was changed or made by another version; retrain)"
        ) from exc
    return model.eval()


@dataclass
class TrainedRun:
    """A run folder's best checkpoint, ready to use: its config, data source and rebuilt model."""

    config: object  # RunConfig
    checkpoint: Checkpoint
    path: Path  # RUN/best.pt
    source: object  # data.sources.Source
    model: Classifier


def open_trained_run(run_dir: Path, *, stream: bool = False) -> TrainedRun:
    """RUN/best.pt with the run's data, checked against each other (what export, benchmark and explain start
    from); a missing checkpoint or one made for another model is one clear error. With `stream`, a folder's images
    are read from the decoded-image cache when used (explain reads a few hundred: the whole folder in memory was a
    second copy of the pixels beside training's, 1.4 GB on a 9,000-photo sample)."""
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    path = run_dir / RunFile.BEST
    if not path.is_file():
        raise CnnlabError(f"{path} is missing (train the run first, or resume it: cnnlab train --resume)")
    ckpt = load_checkpoint(path)
    data = replace(config.data, stream=True) if stream else config.data
    source = load_source(data, log=lambda _: None)
    check_compatible(ckpt, model_name=config.model.name, class_names=source.class_names, path=path)
    return TrainedRun(config, ckpt, path, source, model_from_checkpoint(ckpt, path))


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    norm: Normalization,
    *,
    batch_size: int | None = None,
    max_batches=None,
    mirror: bool = False,
) -> torch.Tensor:
    """Logits [N, classes] for uint8 images [N, C, H, W], computed batch by batch on the best device; with
    `mirror`, of the horizontally mirrored images. Default batch: `predict_batch_size`."""
    device = pick_device()
    batch_size = batch_size or predict_batch_size(computed_shape(model, tuple(images.shape[1:])))
    # channels_last weights, as in training: mixed layouts ran 5x slower here. Moved outside inference mode,
    # so the parameters stay ordinary tensors the caller can still train or export. A backend outside
    # PyTorch (ONNX Runtime) takes plain NCHW and says so; torch then prepares its input on one thread, as
    # torch's idle threads spinning beside ONNX Runtime's cost 5-30% of its speed on two cores.
    outside = not getattr(model, "channels_last", True)
    layout = torch.contiguous_format if outside else torch.channels_last
    model = model.to(device, memory_format=torch.channels_last).eval()
    out = []
    with torch.inference_mode(), _torch_threads(1 if outside else torch.get_num_threads()):
        for i, start in enumerate(range(0, len(images), batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            x = norm.apply(images[start : start + batch_size].to(device))
            x = x.flip(-1) if mirror else x
            out.append(model(x.contiguous(memory_format=layout)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def computed_shape(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The input shape `model` computes at: a pretrained backbone (or an ensemble holding one) resizes small images
    to its own side, in RGB. Batches sized by the 28-px input held 1,000 images at 224 px: 14 GB for a Fashion-MNIST
    ensemble's evaluation."""
    side = int(getattr(model, "input_size", 0) or 0)
    if side <= image_shape[-1]:
        return image_shape
    return (max(3, image_shape[0]), side, side)


def predict_batch_size(image_shape: tuple[int, ...]) -> int:
    """Images per prediction batch: PREDICT_BATCH_VALUES input values (64 photos at 224 px), at most 1,000. The
    activations grow with the batch: ONNX Runtime predicting 512 photos at a time peaked at 7 GB."""
    return max(1, min(1000, PREDICT_BATCH_VALUES // math.prod(image_shape)))


@contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_logits(
    model: Classifier,
    images: torch.Tensor,
    norm: Normalization,
    *,
    cache_dir: Path | None,
    max_batches=None,
    tta: bool = False,
    forward: nn.Module | None = None,
    mirror: bool = False,
) -> torch.Tensor:
    """`predict_logits`, except that a frozen pretrained backbone reads its cached features (the ones
    training computed), so evaluating a feature-extraction run costs no second backbone pass. With `tta`,
    log of the mean probability of each image and its mirror image (flip test-time augmentation); with `mirror`, the
    mirror images' alone. `forward` is the prediction backend for whole images (default: the model itself)."""
    forward = model if forward is None else forward
    outside_torch = not getattr(forward, "channels_last", True)  # e.g. ONNX Runtime: whole images, as asked
    cached = model.frozen and cache_dir is not None and max_batches is None and not outside_torch

    def view(mirrored: bool) -> torch.Tensor:
        if cached:
            return _cached_head_logits(model, images, norm, cache_dir, mirror=mirrored)
        return predict_logits(forward, images, norm, max_batches=max_batches, mirror=mirrored)

    return mean_of_views(view(False), view(True)) if tta else view(mirror)


def _cached_head_logits(model: Classifier, images: torch.Tensor, norm: Normalization, cache_dir: Path, *,
                        mirror: bool) -> torch.Tensor:  # fmt: skip
    """A frozen backbone's head on the (mirrored) images' cached features."""
    model = model.to(pick_device())
    features = model.select_levels(backbone_features(model, images, norm, cache_dir=cache_dir, mirror=mirror)[0])
    with torch.inference_mode():
        return model.forward_head(features.to(pick_device())).float().cpu()


def mean_of_views(*logits: torch.Tensor) -> torch.Tensor:
    """Log of the mean softmax over views: logits again, in the sense that softmax gives the mean back."""
    return torch.stack([v.float().log_softmax(1) for v in logits]).logsumexp(0) - torch.log(torch.tensor(len(logits)))


@dataclass
class ImagePrediction:
    path: str
    probabilities: np.ndarray  # one per class


def predict_images(
    checkpoint_path: Path, inputs: list[Path], *, limit: int | None = None, tta: bool = False,
    backend: str = "auto", log=print,
) -> tuple[list[str], list[ImagePrediction]]:  # fmt: skip
    """Class probabilities for image files, preprocessed as the checkpoint's training data was (with `tta`,
    averaged with the mirror image, as the run's evaluation decided), run by `backend` (auto: measured,
    export.backends).

    Any size or mode is converted (resize the shorter side, centre crop, grey or RGB as trained).
    A file named directly that cannot be read is an error; unreadable files inside folders are skipped
    with a warning.
    """
    model, ckpt, chosen = _checkpoint_predictor(checkpoint_path, backend, log)
    prep = ckpt.preprocessing
    return _predict_chunks(model, list(ckpt.class_names), prep, _file_chunks(inputs, prep, limit),
                           n_images=len(collect_images(inputs)[:limit]), tta=tta, backend=chosen)  # fmt: skip


def predict_pictures(
    checkpoint_path: Path, pictures: list, names: list[str], *, tta: bool = False, backend: str = "auto", log=print
) -> tuple[list[str], list[ImagePrediction]]:  # fmt: skip
    """`predict_images` for images in memory (PIL images, uint8 arrays [H, W, C], uint8 or 0..1 float tensors
    [C, H, W]), converted exactly as a file's decoded pixels are: the same probabilities as for the saved file."""
    model, ckpt, chosen = _checkpoint_predictor(checkpoint_path, backend, log)
    prep = ckpt.preprocessing
    arrays = np.stack([fit_image(as_pil(p), size=prep.image_size, channels=prep.channels, crop_pct=prep.crop_pct)
                       for p in pictures])  # fmt: skip
    return _predict_chunks(model, list(ckpt.class_names), prep, [(arrays, names)], n_images=len(names), tta=tta,
                           backend=chosen)  # fmt: skip


def _checkpoint_predictor(checkpoint_path: Path, backend: str, log) -> tuple[Classifier, Checkpoint, dict]:
    """The checkpoint's model and how its prediction backend is to be chosen (a run folder caches its ONNX file)."""
    ckpt = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(ckpt, checkpoint_path)
    run_dir = Path(checkpoint_path).parent
    chosen = {"checkpoint": Path(checkpoint_path), "wanted": backend, "log": log,
              "cache_dir": run_dir / "cache" if (run_dir / RunFile.CONFIG).is_file() else None}  # fmt: skip
    return model, ckpt, chosen


def predict_dataset(run_dir: Path, dataset) -> tuple[list[str], np.ndarray]:
    """(class names, probabilities [N, classes]) for every item of a user's Dataset of (image, label) (labels
    unused), converted as the run's training images were and with the run's test-time flips: the Python API's
    predict for data that is not files."""
    path = Path(run_dir) / RunFile.BEST
    if not path.is_file():
        raise CnnlabError(f"{path} is missing (train the run first)")
    ckpt = load_checkpoint(path)
    prep = ckpt.preprocessing
    images = DatasetImages(dataset, list(range(len(dataset))), size=prep.image_size, channels=prep.channels,
                           name="predict")  # fmt: skip
    model, norm = model_from_checkpoint(ckpt, path), prep.normalization()
    logits = predict_logits(model, images, norm)
    if recorded_tta(run_dir):
        logits = mean_of_views(logits, predict_logits(model, images, norm, mirror=True))
    return list(ckpt.class_names), torch.softmax(logits, dim=1).numpy()


def imagenet_classifier(backbone: str, weights: str | None = None) -> tuple[nn.Module, InputSpec]:
    """A pretrained backbone with its 1000-class ImageNet head, in eval mode, and how it reads images (its own
    preprocessing): what `predict --imagenet`, the dog app and `serve BACKBONE` run."""
    p = backbone_preprocessing(backbone)
    model = PretrainedClassifier(1000, 3, p.input_size, backbone=backbone, strategy="feature-extract")
    if not load_pretrained(model, weights, with_head=True):
        raise CnnlabError(f"the weights for {backbone} have no ImageNet classifier (pass weights that include it)")
    return model.eval(), InputSpec(p.input_size, 3, p.mean, p.std, p.crop_pct)


def predict_imagenet(
    backbone: str, inputs: list[Path], *, weights: str | None = None, limit: int | None = None
) -> tuple[list[str], list[ImagePrediction]]:
    """ImageNet-1k class probabilities from a pretrained backbone, no training: its own preprocessing."""
    model, prep = imagenet_classifier(backbone, weights)
    return _predict_files(model, imagenet_class_names(), prep, inputs, limit)


def _predict_files(model: nn.Module, classes: list[str], prep: InputSpec, inputs: list[Path], limit: int | None):
    n_images = len(collect_images(inputs)[:limit])
    return _predict_chunks(model, classes, prep, _file_chunks(inputs, prep, limit), n_images=n_images)


def _file_chunks(inputs: list[Path], prep: InputSpec, limit: int | None):
    return decoded_chunks(inputs, size=prep.image_size, channels=prep.channels, crop_pct=prep.crop_pct, limit=limit)


def _predict_chunks(
    model: nn.Module, classes: list[str], prep: InputSpec, chunks, *, n_images: int, tta=False,
    backend: dict | None = None,
) -> tuple[list[str], list[ImagePrediction]]:  # fmt: skip
    """Probabilities for (uint8 images, names) chunks; the backend is chosen on the first chunk, for the whole job."""
    norm = prep.normalization()
    probs, kept = [], []
    for arrays, paths in chunks:
        images = torch.from_numpy(arrays)
        if backend is not None:
            chosen = choose_backend(model, sample=norm.apply(images[:64]).float(), n_images=n_images * (1 + tta),
                                    **backend)  # fmt: skip
            backend["log"](f"prediction backend: {chosen.name} ({chosen.why})")
            model, backend = chosen.forward, None
        logits = predict_logits(model, images, norm)
        if tta:
            logits = mean_of_views(logits, predict_logits(model, images, norm, mirror=True))
        probs.append(torch.softmax(logits, dim=1).numpy())
        kept += paths
    probs = np.concatenate(probs)
    return classes, [ImagePrediction(str(p), pr) for p, pr in zip(kept, probs, strict=True)]
