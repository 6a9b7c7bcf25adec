"""The course's dog-breed app: a photo shows a dog (which breed), a human (which breed they resemble), or
neither.

- Human: OpenCV's Haar cascade for frontal faces (it ships in opencv-python-headless 4.x). Images whose
  shorter side is under UPSCALE_TO px are enlarged first: the cascade misses small faces (on LFW's 25-px
  crops it found 61% as they are and 89% at 100 px, with no non-face detected either way).
- Dog: the offline ImageNet backbone (EfficientNet-Lite0) says "dog" when its top class is one of ImageNet's
  dog classes, indices 151-268, as the course does with VGG-16.
- Breed: by default ImageNet's dog classes from the same forward pass; with `breeds_run`, a classifier that
  `cnnlab train` made on a breed folder (numeric prefixes such as `001.` are dropped from the names).
"""

from __future__ import annotations

import io
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from rich.progress import Progress

from cnnlab.data.images import UnreadableImage, collect_images, decode_array
from cnnlab.errors import CnnlabError
from cnnlab.extras import require
from cnnlab.models.checkpoint import load_checkpoint
from cnnlab.models.pretrained import imagenet_class_names
from cnnlab.predict.backends import SERVED_IMAGES, choose_backend_unsaved
from cnnlab.predict.infer import imagenet_classifier, model_from_checkpoint, predict_logits
from cnnlab.runs import RunFile, open_run, refuse_existing

DOG_CLASSES = range(151, 269)  # ImageNet-1k indices of dog breeds
BACKBONE = "efficientnet_lite0"
UPSCALE_TO = 100  # px: the shorter side small images are enlarged to before face detection
CASCADE = "haarcascade_frontalface_alt.xml"


@dataclass(frozen=True)
class FaceSettings:
    scale_factor: float = 1.1
    min_neighbors: int = 3
    min_size: int = 20  # px, after any upscaling


@dataclass
class Answer:
    path: str
    kind: str  # "dog", "human" or "neither"
    faces: list[tuple[int, int, int, int]]  # x, y, w, h in the image's own pixels
    dog_probability: float  # ImageNet probability mass on dog classes
    breeds: list[tuple[str, float]] = field(default_factory=list)  # top breeds and probabilities

    def sentence(self) -> str:
        top = ", ".join(f"{name} {100 * p:.1f}%" for name, p in self.breeds[:3])
        if self.kind == "dog":
            return f"{self.path}: a dog. Breed: {top}"
        if self.kind == "human":
            return f"{self.path}: a human ({len(self.faces)} face(s)). You look like a... {top}"
        return f"{self.path}: neither a dog nor a human face found (an ImageNet dog probability of " \
               f"{100 * self.dog_probability:.1f}%)"  # fmt: skip


class FaceDetector:
    """OpenCV's frontal-face Haar cascade, with its parameters exposed."""

    def __init__(self, settings: FaceSettings = FaceSettings()) -> None:
        import cv2  # optional heavy import: OpenCV (Haar faces / filters, only here)

        self.cv2, self.settings = cv2, settings
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
        if self.cascade.empty():
            raise CnnlabError(f"OpenCV's {CASCADE} did not load (install opencv-python-headless>=4.8,<5)")

    def faces(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in `rgb` [H, W, 3] uint8 pixels."""
        grey = self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2GRAY)
        scale = max(1.0, UPSCALE_TO / min(grey.shape))
        if scale > 1:
            size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
            grey = self.cv2.resize(grey, size, interpolation=self.cv2.INTER_CUBIC)
        s = self.settings
        found = self.cascade.detectMultiScale(grey, scaleFactor=s.scale_factor, minNeighbors=s.min_neighbors,
                                              minSize=(s.min_size, s.min_size))  # fmt: skip
        return [tuple(int(round(v / scale)) for v in box) for box in found]


class DogApp:
    """Face detector + ImageNet backbone (+ an optional breed classifier run), loaded once."""

    def __init__(self, *, breeds_run: Path | None = None, weights: str | None = None,
                 faces: FaceSettings = FaceSettings(), classifier=None, forward=None) -> None:  # fmt: skip
        """`classifier`: an already loaded (model, preprocessing) of BACKBONE with its ImageNet head, shared;
        `forward`: the prediction backend already chosen for it (else measured on the first images)."""
        self.detector = FaceDetector(faces)
        self.model, self.prep = classifier or imagenet_classifier(BACKBONE, weights)
        self._forward: torch.nn.Module | None = forward
        self.names = imagenet_class_names()
        self.breeds_run = Path(breeds_run) if breeds_run else None
        self._breeds_loaded = None
        if self.breeds_run is not None:
            open_run(self.breeds_run)  # a clear error for a folder that is not a run
            self._breed_model()  # loaded once, here, so that a broken run fails before any image

    def answer(self, paths: list[Path], *, batch: int = 32, log=None) -> list[Answer]:
        """One answer per readable image, in batches with a progress bar when there are many. Folders are
        expanded; a file named directly that cannot be read is an error, one found in a folder is skipped and
        counted in a warning (a `warning: ...` line through `log` when given)."""
        files, named = collect_images(paths), {p for p in paths if not p.is_dir()}
        answers: list[Answer] = []
        skipped: list[Path] = []
        with Progress(transient=True, disable=len(files) <= batch) as progress:
            task = progress.add_task("dog app", total=len(files))
            for start in range(0, len(files), batch):
                chunk = files[start : start + batch]
                answers += self._answer_batch(self._decoded(chunk, named, skipped), n_images=len(files))
                progress.update(task, advance=len(chunk))
        if skipped:
            message = f"skipped {len(skipped)} unreadable image(s), first: {skipped[0]}"
            log(f"warning: {message}") if log else warnings.warn(message, stacklevel=2)
        if not answers:
            raise CnnlabError("no readable images to answer (pass image files or folders of images)")
        return answers

    def answer_bytes(self, name: str, data: bytes) -> Answer:
        """The answer for one uploaded image (`UnreadableImage` when the bytes are not one)."""
        array = decode_array(data, size=self.prep.image_size, channels=3, crop_pct=self.prep.crop_pct)[0]
        return self._answer_batch([(name, data, array)])[0]

    def _decoded(self, files: list[Path], named: set[Path], skipped: list[Path]) -> list[tuple[str, Path, np.ndarray]]:
        found = []
        for path in files:
            try:
                found.append((str(path), path, decode_array(path, size=self.prep.image_size, channels=3,
                                                            crop_pct=self.prep.crop_pct)[0]))  # fmt: skip
            except UnreadableImage as exc:
                if path in named:
                    raise CnnlabError(f"cannot read image {path}: {exc} (pass a valid image file)") from exc
                skipped.append(path)
        return found

    def _answer_batch(
        self, decoded: list[tuple[str, Path | bytes, np.ndarray]], *, n_images: int = SERVED_IMAGES
    ) -> list[Answer]:  # fmt: skip
        if not decoded:
            return []
        images, norm = torch.from_numpy(np.stack([a for _, _, a in decoded])), self.prep.normalization()
        if self._forward is None:  # PyTorch or ONNX Runtime, whichever is faster here for this much work
            self._forward = choose_backend_unsaved(
                self.model, norm.apply(images), n_images=n_images, name=f"imagenet-{BACKBONE}", log=lambda _line: None
            ).forward
        probs = predict_logits(self._forward, images, norm).softmax(1).numpy()
        answers = []
        sources = [source for _, source, _ in decoded]
        for (name, source, _), p, top in zip(decoded, probs, self._breeds(sources, probs), strict=True):
            faces = self.detector.faces(upright_rgb(source))
            dog = int(p.argmax()) in DOG_CLASSES
            kind = "dog" if dog else ("human" if faces else "neither")
            answers.append(Answer(name, kind, faces, float(p[list(DOG_CLASSES)].sum()), top))
        return answers

    def _breeds(self, sources: list[Path | bytes], probs: np.ndarray) -> list[list[tuple[str, float]]]:
        if self.breeds_run is None:
            dogs = np.array(list(DOG_CLASSES))  # shares among the dog classes: a face's best match reads 30%, not 0.2%
            share = probs[:, dogs] / probs[:, dogs].sum(1, keepdims=True)
            return [[(self.names[dogs[k]], float(row[k])) for k in np.argsort(row)[::-1][:3]] for row in share]
        model, classes, prep = self._breed_model()
        arrays = np.stack([decode_array(s, size=prep.image_size, channels=prep.channels, crop_pct=prep.crop_pct)[0]
                           for s in sources])  # fmt: skip
        breed_probs = predict_logits(model, torch.from_numpy(arrays), prep.normalization()).softmax(1).numpy()
        return [[(classes[k], float(row[k])) for k in row.argsort()[::-1][:3]] for row in breed_probs]

    def _breed_model(self):
        """The breed run's model, class names (as shown) and preprocessing, loaded on first use."""
        if self._breeds_loaded is None:
            path = self.breeds_run / RunFile.BEST
            if not path.is_file():
                raise CnnlabError(f"{path} is missing (train the breed run first: cnnlab train --data folder:DIR)")
            ckpt = load_checkpoint(path)
            model = model_from_checkpoint(ckpt, path)
            self._breeds_loaded = (model, [breed_name(c) for c in ckpt.class_names], ckpt.preprocessing)
        return self._breeds_loaded


def upright_rgb(source: Path | bytes) -> np.ndarray:
    """The image's RGB pixels as a viewer shows them (EXIF orientation applied): where faces are looked for."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def breed_name(folder: str) -> str:
    """`001.Affenpinscher` -> `Affenpinscher`; `American_water_spaniel` -> `American water spaniel`."""
    return re.sub(r"^\d+[._-]", "", folder).replace("_", " ")


def annotate(answer: Answer, out: Path) -> None:
    """The image with its face boxes and the app's answer written under it, as PNG."""
    with Image.open(answer.path) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")  # the pixels the faces were found in
    scale = 512 / max(img.size) if max(img.size) > 512 else 1.0
    img = img.resize((round(img.width * scale), round(img.height * scale)))
    canvas = Image.new("RGB", (img.width, img.height + 40), "white")
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for x, y, w, h in answer.faces:
        draw.rectangle([x * scale, y * scale, (x + w) * scale, (y + h) * scale], outline=(255, 0, 0), width=2)
    text = answer.sentence().split(": ", 1)[1]
    draw.text((4, img.height + 4), text[:110], fill=(0, 0, 0))
    draw.text((4, img.height + 20), text[110:220], fill=(0, 0, 0))
    canvas.save(out)


def no_dog_photos() -> dict[str, np.ndarray]:
    """Photos that ship with the installed packages and show no dog (a cat, a cup, people, objects)."""
    from skimage import data  # optional heavy import: scikit-image (bundled photos, only here)

    found = {}
    names = ("astronaut", "camera", "cat", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "coins",
             "moon", "page", "clock")  # fmt: skip
    for name in names:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # some need a download the machine cannot make: skipped, and the count says so
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / max(float(img.max() - img.min()), 1e-9)).astype(np.uint8)
        found[name] = img[:, :, :3]
    return found


def assess(app: DogApp, tmp: Path, dogs: Path | None = None) -> dict:
    """The course's detector figures on data available offline: LFW faces and non-faces (scikit-image's
    lfw_subset: 100 + 100 crops) through the face and dog detectors, the dog detector on photos without dogs,
    and, with `dogs`, the share of a user's dog folder found as dog and as human."""
    from skimage import data  # optional heavy import: scikit-image (bundled photos, only here)

    lfw = data.lfw_subset()
    paths = []
    for i, img in enumerate(lfw):
        path = tmp / f"lfw-{i:03d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(path)
        paths.append(path)
    photos = no_dog_photos()
    for name, img in photos.items():
        Image.fromarray(img).save(tmp / f"photo-{name}.png")
    photo_answers = app.answer([tmp / f"photo-{n}.png" for n in photos])
    lfw_answers = app.answer(paths)
    faces, others = lfw_answers[:100], lfw_answers[100:]
    result = {
        "faces_detected_as_human": float(np.mean([bool(a.faces) for a in faces])),
        "faces_detected_as_dog": float(np.mean([a.kind == "dog" for a in faces])),
        "non_faces_detected_as_human": float(np.mean([bool(a.faces) for a in others])),
        "no_dog_photos": len(photos),
        "no_dog_photos_detected_as_dog": [Path(a.path).stem for a in photo_answers if a.kind == "dog"],
    }
    if dogs is not None:
        answers = app.answer([dogs])
        result["your_dogs"] = len(answers)
        result["your_dogs_detected_as_dog"] = float(np.mean([a.kind == "dog" for a in answers]))
        result["your_dogs_detected_as_human"] = float(np.mean([bool(a.faces) for a in answers]))
    return result


def format_assessment(r: dict) -> str:
    lines = [
        "detector assessment (offline data):",
        f"  LFW faces (100) found as human:      {100 * r['faces_detected_as_human']:.0f}%",
        f"  LFW faces (100) found as dog:        {100 * r['faces_detected_as_dog']:.0f}%",
        f"  LFW non-faces (100) found as human:  {100 * r['non_faces_detected_as_human']:.0f}%",
        f"  photos without dogs ({r['no_dog_photos']}) found as dog: "
        f"{len(r['no_dog_photos_detected_as_dog'])} {r['no_dog_photos_detected_as_dog'] or ''}".rstrip(),
    ]
    if "your_dogs" in r:
        lines += [f"  your dogs ({r['your_dogs']}) found as dog: {100 * r['your_dogs_detected_as_dog']:.0f}%, "
                  f"as human: {100 * r['your_dogs_detected_as_human']:.0f}%"]  # fmt: skip
    else:
        lines += ["  dogs: no dog photos ship offline; measure yours with --assess-dogs DIR"]
    return "\n".join(lines)


def run_dogapp(
    images: list[Path] | None, *, breeds: Path | None = None, output: Path | None = None, force: bool = False,
    assess_detectors: bool = False, assess_dogs: Path | None = None, faces: FaceSettings | None = None,
    log: Callable[[str], None] = print, note: Callable[[str], None] = print,
) -> list[Answer]:  # fmt: skip
    """`cnnlab dogapp`: the detectors assessed on offline data (`assess_detectors`), then one sentence per
    image through `log`; with `output`, each image annotated with its answer (existing files need `force`)."""
    if not images and not assess_detectors:
        raise CnnlabError("give images or folders to answer, or --assess to measure the detectors")
    require("cv2", *(["skimage"] if assess_detectors else []), purpose="cnnlab dogapp")
    app = DogApp(breeds_run=breeds, faces=faces or FaceSettings())
    if assess_detectors:
        with tempfile.TemporaryDirectory() as tmp:
            log(format_assessment(assess(app, Path(tmp), dogs=assess_dogs)))
    if not images:
        return []
    answers = app.answer(images, log=note)
    for a in answers:
        log(a.sentence())
    if output is not None:
        targets = [output / f"{Path(a.path).stem}.answer.png" for a in answers]
        for target in targets:
            refuse_existing(target, force=force)
        output.mkdir(parents=True, exist_ok=True)
        for a, target in zip(answers, targets, strict=True):
            annotate(a, target)
        log(f"wrote {len(targets)} annotated image(s) to {output}")
    return answers
