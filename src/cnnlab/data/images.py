"""Decoding image files into fixed-size uint8 arrays, the same way for training and prediction.

torch is imported only by `decode_image`: predicting from an exported ONNX file decodes without it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold: above it a file is refused, not decoded


class UnreadableImage(Exception):
    """The file is missing, empty, truncated or not an image."""


class TooManyPixels(UnreadableImage):
    """The header claims more pixels than allowed: refused before decoding (a decompression bomb?)."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def decode_image(path: Path, *, size: int, channels: int, crop_pct: float = 1.0) -> tuple[torch.Tensor, bool]:
    """`decode_array` as a torch tensor."""
    import torch  # deferred: predict.onnx decodes through this module and must run without torch

    array, grey = decode_array(path, size=size, channels=channels, crop_pct=crop_pct)
    return torch.from_numpy(array), grey


def decode_array(
    path: Path | bytes, *, size: int, channels: int, crop_pct: float = 1.0, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, bool]:  # fmt: skip
    """Read `path` (a file, or an upload's bytes) as a `channels` x size x size uint8 array and say whether it
    was greyscale.

    Resizes the shorter side to `size / crop_pct` (bicubic, antialiased) and centre-crops `size`, so the
    aspect ratio is kept (ImageNet backbones: 256 -> 224 is crop_pct 0.875). Any mode (palette, CMYK, 16-bit,
    float, alpha) is converted; an EXIF orientation is applied as viewers apply it; an animation gives its
    first frame. A file whose header claims more than `max_pixels` is refused before any pixel is decoded.
    `UnreadableImage` explains a bad file.
    """
    try:
        if (len(path) if isinstance(path, bytes) else path.stat().st_size) == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise TooManyPixels(
                    f"{w}x{h} pixels ({w * h / 1e6:.0f} MP) is above the {max_pixels / 1e6:.0f} MP limit "
                    "(a decompression bomb?); not decoded"
                )
            img.load()
            grey = img.mode in GREY_MODES
            array = fit_image(_upright(img, ImageOps), size=size, channels=channels, crop_pct=crop_pct)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses above 2x its own limit while opening
        raise TooManyPixels(f"{exc} (a decompression bomb?); not decoded") from exc
    except UnidentifiedImageError as exc:  # Pillow names a BytesIO by its repr: say it plainly
        raise UnreadableImage("cannot identify an image format in its bytes (not an image?)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    return array, grey


def fit_image(img: Image.Image, *, size: int, channels: int, crop_pct: float = 1.0) -> np.ndarray:
    """A decoded image as the model reads it, uint8 [channels, size, size]: any mode converted (16-bit and float
    grey scaled to 0..255), the shorter side resized to `size / crop_pct` (bicubic), the centre `size` cropped.
    Files (`decode_array`) and in-memory images (the Python API's predict, a user's Dataset) go through it alike."""
    img = _eight_bit(img).convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = round(size / crop_pct) / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array.transpose(2, 0, 1).copy()  # a writable C-order copy (PIL's buffer is read-only)


def _upright(img, image_ops):
    """The image as viewers show it (EXIF orientation applied); a damaged EXIF block is ignored."""
    try:
        return image_ops.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return img


def _eight_bit(img):
    """16-bit and 32-bit integer grey scaled to 0..255 (Pillow's own conversion clips at 255, so a 16-bit
    scan turned white); float images stretched from their minimum to their maximum."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or a.max() > 255:
            a = np.clip(a, 0, 65535) / 257
        return Image.fromarray(np.round(a).astype(np.uint8), "L")
    if img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(a.min()), float(a.max())
        return Image.fromarray(np.round(255 * (a - lo) / ((hi - lo) or 1.0)).astype(np.uint8), "L")
    return img


def collect_images(inputs: list[Path]) -> list[Path]:
    """Files named directly, plus image files found (recursively) in folders named."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if is_image_file(p))
            if not found:
                raise CnnlabError(f"folder {item} holds no image files (expected .jpg, .png, ...)")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise CnnlabError(f"image not found: {item} (check the path)")
    return files


def decode_files(
    inputs: list[Path], *, size: int, channels: int, crop_pct: float, limit: int | None = None
) -> tuple[np.ndarray, list[Path]]:
    """The images named or found in folders as one uint8 array [N, C, size, size], and their paths. A file
    named directly that cannot be read is an error; unreadable files inside folders are skipped with a
    warning."""
    chunks = list(decoded_chunks(inputs, size=size, channels=channels, crop_pct=crop_pct, limit=limit))
    return np.concatenate([a for a, _ in chunks]), [p for _, kept in chunks for p in kept]


def decoded_chunks(
    inputs: list[Path], *, size: int, channels: int, crop_pct: float, limit: int | None = None, chunk: int = 512
) -> Iterator[tuple[np.ndarray, list[Path]]]:
    """`decode_files` a `chunk` of images at a time, so that a job over many photos holds one chunk decoded
    (20,000 photos at 224 px are 3 GB as one array); the next chunk is decoded on a thread (Pillow releases the GIL)
    while the caller works on this one (prediction: the model). Same errors and warning, the warning at the end."""
    named = {p for p in inputs if not p.is_dir()}
    files = collect_images(inputs)[:limit]
    starts = range(0, len(files), chunk)
    decode = {"size": size, "channels": channels, "crop_pct": crop_pct}
    skipped, any_kept = [], False
    with ThreadPoolExecutor(max_workers=1) as ahead:
        pending = ahead.submit(_decode_chunk, files[:chunk], named, decode) if files else None
        for start in starts:
            arrays, kept, bad = pending.result()
            nxt = start + chunk
            pending = ahead.submit(_decode_chunk, files[nxt : nxt + chunk], named, decode) if nxt < len(files) else None
            skipped += bad
            if kept:
                any_kept = True
                yield arrays, kept
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s), first: {skipped[0]}", stacklevel=3)
    if not any_kept:
        raise CnnlabError("no readable images to predict (pass image files or folders of images)")


def _decode_chunk(files: list[Path], named: set[Path], decode: dict) -> tuple[np.ndarray | None, list[Path], list]:
    """(uint8 images, their paths, unreadable paths) of `files`; an unreadable file named directly is an error."""
    arrays, kept, skipped = [], [], []
    for path in files:
        try:
            arrays.append(decode_array(path, **decode)[0])
            kept.append(path)
        except UnreadableImage as exc:
            if path in named:
                raise CnnlabError(f"cannot read image {path}: {exc} (pass a valid image file)") from exc
            skipped.append(path)
    return (np.stack(arrays) if arrays else None), kept, skipped
