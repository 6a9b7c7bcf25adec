"""Named data sources, each loaded as one uint8 image tensor plus labels (the in-memory path).

Sources: `digits` (scikit-learn's bundled 8x8 digits), `fashion-mnist`, `mnist`, `cifar10` and
`folder:PATH` (ImageFolder layout, optional train/ valid/ test/ subfolders). Offline, the MNIST-style
sets are read from local IDX files (Debian's `dataset-fashion-mnist` installs Fashion-MNIST); online,
torchvision downloads them into the data root.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image
from sklearn.datasets import load_digits

from cnnlab.config import DataConfig
from cnnlab.data import user_dataset
from cnnlab.data.cache import cache_key, load_or_compute
from cnnlab.data.decoded import DecodedCache
from cnnlab.data.identity import dataset_checksum, fingerprints, relative_key, sampled
from cnnlab.data.idx import read_idx
from cnnlab.data.images import GREY_MODES, UnreadableImage, decode_image, is_image_file
from cnnlab.data.lazy import CachedImages, LazyImages
from cnnlab.data.loader import BatchReader
from cnnlab.data.memory import choose_stream, memory_available, release_free_heap
from cnnlab.data.ranks import process_share
from cnnlab.errors import CnnlabError, unknown_choice

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_FOLDER_SIZE = 64  # pixels; a from-scratch CNN's usual input for small photo datasets
MAX_NATIVE_SIZE = 96  # pixels; folders whose images share a size up to this keep it (28 px digits stay 28 px)
SOURCE_NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "folder:PATH", "dataset:NAME")


@dataclass
class Source:
    """All images of a data source in memory, with the partitions the source itself defines."""

    name: str
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    class_names: list[str]
    ids: list[str]  # one per image: "test/17" for datasets, the file path for folders
    partitions: dict[str, np.ndarray]  # "train" always; "valid" / "test" when the source has them
    flip_invariant: bool | None  # a horizontal flip keeps the label (false for digits; None: unknown, folders)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files
    size_reason: str | None = None  # folders without --image-size: how the size was chosen from the images
    keys: list[str] = field(default_factory=list)  # each image's identity key: a folder's relative path, or the id
    fingerprints: list[str] | None = None  # folders: each file's `<size>:<digest>` (data/identity.py)
    checksum: str | None = None  # named datasets: the digest of their pixels and labels (data/identity.py)
    stream_reason: str | None = None  # folders: why they are streamed or held in memory, when cnnlab chose

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = list(self.ids)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def load_source(config: DataConfig, *, log: Callable[[str], None] | None = None) -> Source:
    """Load the source named in `config` (see SOURCE_NAMES); errors say how to get the data. With `log`, the
    warnings (skipped unreadable files) become `warning: ...` lines there instead of Python warnings."""
    if log is None:
        return _load_source(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = _load_source(config)
    for w in caught:
        log(f"warning: {w.message}")
    return source


def _load_source(config: DataConfig) -> Source:
    name = config.source
    if name.startswith("folder:"):
        return _load_folder(Path(name[len("folder:") :]).expanduser(), config)
    if name.startswith(user_dataset.PREFIX):
        return _load_user_dataset(name.removeprefix(user_dataset.PREFIX), config)
    loaders = {"digits": _load_digits, "fashion-mnist": _load_fashion, "mnist": _load_mnist, "cifar10": _load_cifar}
    if name not in loaders:
        raise unknown_choice("data source", name, SOURCE_NAMES)
    source = loaders[name](Path(config.root))
    source.checksum = dataset_checksum(source.images, source.labels)  # before any resize: the files' identity
    if config.image_size is not None and config.image_size != source.image_size:
        source.images = _resize_uint8(source.images, config.image_size)
    return source


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _from_pools(name, pools, class_names, flip_invariant) -> Source:
    """Concatenate named pools [(partition, images, labels)] into one Source."""
    images = torch.cat([torch.as_tensor(p[1]) for p in pools])
    labels = torch.cat([torch.as_tensor(np.asarray(p[2], dtype=np.int64)) for p in pools])
    ids, partitions, start = [], {}, 0
    for part, part_images, _ in pools:
        n = len(part_images)
        ids += [f"{part}/{i}" for i in range(n)]
        partitions[part] = np.arange(start, start + n)
        start += n
    return Source(name, images.contiguous(), labels, class_names, ids, partitions, flip_invariant)


def _load_digits(root: Path) -> Source:
    digits = load_digits()
    # 0..16 grey levels -> 0..255 so every source shares one uint8 scale
    images = torch.from_numpy((digits.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    names = [str(i) for i in range(10)]
    return _from_pools("digits", [("train", images, digits.target)], names, flip_invariant=False)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for folder in candidates:
        if all(_idx_file(folder, stem) for pair in _IDX_FILES.values() for stem in pair):
            return folder
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _load_idx_dataset(name: str, root: Path, tv_name: str, debian_dir: str, classes, flip) -> Source:
    candidates = [root / name, root / tv_name / "raw", Path("/usr/share/datasets") / debian_dir]
    folder = _find_idx_dir(candidates)
    if folder is None:
        _download_torchvision(tv_name, root, candidates)
        folder = root / tv_name / "raw"
    pools = []
    for part, (img_stem, lbl_stem) in _IDX_FILES.items():
        images = read_idx(_idx_file(folder, img_stem))[:, None]
        labels = read_idx(_idx_file(folder, lbl_stem))
        if len(images) != len(labels):
            raise CnnlabError(f"{folder}: {len(images)} {part} images but {len(labels)} labels (re-download)")
        pools.append((part, torch.from_numpy(images.copy()), labels))
    return _from_pools(name, pools, classes, flip)


def _download_torchvision(tv_name: str, root: Path, searched: list[Path]) -> None:
    try:
        for train in (True, False):
            getattr(tvd, tv_name)(str(root), train=train, download=True)
    except Exception as exc:  # offline, proxy, disk: all mean "no files"
        where = ", ".join(str(p) for p in searched)
        raise CnnlabError(
            f"{tv_name} files not found in {where} and the download failed ({type(exc).__name__}); "
            f"put the four IDX files in {root / tv_name.lower()}"
            + (" or run `apt-get install dataset-fashion-mnist`" if tv_name == "FashionMNIST" else "")
        ) from exc


def _load_fashion(root: Path) -> Source:
    return _load_idx_dataset("fashion-mnist", root, "FashionMNIST", "fashion-mnist", FASHION_CLASSES, True)


def _load_mnist(root: Path) -> Source:
    names = [str(i) for i in range(10)]
    return _load_idx_dataset("mnist", root, "MNIST", "mnist", names, False)


def _load_cifar(root: Path) -> Source:
    pools = []
    for part, train in (("train", True), ("test", False)):
        try:
            ds = tvd.CIFAR10(str(root), train=train, download=not _cifar_present(root))
        except Exception as exc:
            raise CnnlabError(
                f"CIFAR-10 not found in {root / 'cifar-10-batches-py'} and the download failed "
                f"({type(exc).__name__}); put the extracted python batches there"
            ) from exc
        pools.append((part, torch.from_numpy(ds.data).permute(0, 3, 1, 2), ds.targets))
    return _from_pools("cifar10", pools, CIFAR10_CLASSES, True)


def _cifar_present(root: Path) -> bool:
    return (root / "cifar-10-batches-py" / "test_batch").is_file()


def _load_user_dataset(name: str, config: DataConfig) -> Source:
    """A Dataset registered with `register_dataset` (data/user_dataset.py): labels from its `targets` (or one pass),
    images at --image-size or item 0's shorter side, held in memory or streamed as a folder's are."""
    dataset, class_names = user_dataset.registered(name)
    labels = user_dataset.labels_of(dataset)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
        raise CnnlabError(f"dataset:{name} has labels {int(labels.min())}..{int(labels.max())} for "
                          f"{len(class_names)} class names (labels must be 0..{len(class_names) - 1})")  # fmt: skip
    channels, w, h = user_dataset.first_image(dataset)
    size, reason = (config.image_size, None) if config.image_size else (min(w, h), f"item 0 is {w}x{h}")
    images = user_dataset.DatasetImages(dataset, list(range(len(labels))), size=size, channels=channels, name=name)
    stream, stream_reason = choose_stream(config.stream, n_images=len(labels), side=size, available=memory_available())
    if not stream:  # read once, a batch at a time, by a worker process
        batches = [torch.arange(a, min(a + 256, len(labels))) for a in range(0, len(labels), 256)]
        images = torch.cat(list(BatchReader(images)(batches))) if batches else images[[]]
    ids = [f"{name}/{i}" for i in range(len(labels))]
    source = Source(f"dataset:{name}", images, labels, class_names, ids, {"train": np.arange(len(labels))}, None)
    source.checksum = (
        dataset_checksum(images, labels)
        if isinstance(images, torch.Tensor)
        else cache_key("dataset-labels", name, labels.tolist())
    )  # streamed: not every pixel read
    source.size_reason, source.stream_reason = reason, stream_reason
    return source


# ---- folders ---------------------------------------------------------------------------------------

_SPLIT_DIRS = ("train", "valid", "test")
# the folder names each split goes by: cnnlab's own, torchvision's ImageNet / the transfer tutorial's (val/), others
SPLIT_FOLDERS = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test", "testing")}


def _load_folder(path: Path, config: DataConfig) -> Source:
    if not path.is_dir():
        raise CnnlabError(f"data folder not found: {path} (pass --data folder:PATH with an existing folder)")
    roots = split_folders(path)
    class_names = _class_names(roots["train"])
    _warn_unused_classes(roots, class_names)
    files = _folder_files(roots, class_names)
    if config.sample is not None and config.sample < 1:  # a budget's share of a large folder (training/scale.py)
        keys = [relative_key(path, f[1]) for f in files]
        files = [files[i] for i in sampled(keys, [(f[0], f[2]) for f in files], config.sample)]
    stats = [(part, str(p), label, *_stat(p)) for part, p, label in files]  # the caches' keys: paths, sizes, times
    size, reason = (
        (config.image_size, None) if config.image_size else folder_image_size(files, Path(config.root), stats)
    )
    fps = fingerprints(path, [f[1] for f in files], cache_dir=Path(config.root) / "cache")
    stream, stream_reason = choose_stream(config.stream, n_images=len(files), side=size, available=memory_available())
    cache = DecodedCache(Path(config.root), size=size, crop_pct=config.crop_pct)
    written = _fill_cache(cache, path, files, fps, size, config.crop_pct, hold=not stream)
    if stream and written:
        source = _folder_source(path, files, class_names, _cached_entry(cache, fps), config.strict)
    elif stream:  # the cache could not be written: each batch is decoded from its files
        source = _stream_folder(path, files, class_names, size, config)
    else:
        source = _folder_source(path, files, class_names, cache.entry(fps), config.strict)
    release_free_heap()  # the decoding's temporaries
    source.size_reason, source.stream_reason = reason, stream_reason
    kept = set(source.ids)  # the readable files, in the listing's order
    source.keys = [relative_key(path, Path(i)) for i in source.ids]
    source.fingerprints = [fp for f, fp in zip(files, fps, strict=True) if str(f[1]) in kept]
    return source


def _folder_files(roots: dict[str, Path], class_names: list[str]) -> list[tuple[str, Path, int]]:
    """(split, file, label) of every image file; a class folder of train/ without images is an error."""
    files: list[tuple[str, Path, int]] = []
    for part, folder in roots.items():
        for label, cls in enumerate(class_names):
            cls_dir = folder / cls
            found = sorted(p for p in cls_dir.rglob("*") if is_image_file(p)) if cls_dir.is_dir() else []
            if part == "train" and not found:
                raise CnnlabError(f"class folder {cls_dir} has no images (add images or remove the folder)")
            files += [(part, p, label) for p in found]
    return files


@dataclass(frozen=True)
class FolderScan:
    """What a folder looks like before any image is decoded (file headers only, cached)."""

    images_per_class: float  # all splits together
    median_side: int  # the images' median shorter side, pixels
    files: list[Path] = field(default_factory=list)  # every image file, in the listing's order


PHOTO_SIDE = 96  # px, median shorter side: at or above it a folder holds photos (training/auto.py, the audit)


def scan_folder(config: DataConfig) -> FolderScan:
    """Image counts and sizes of a `folder:` source, read from the listing and the file headers."""
    path = Path(config.source.removeprefix("folder:")).expanduser()
    if not path.is_dir():
        raise CnnlabError(f"data folder not found: {path} (pass --data folder:PATH with an existing folder)")
    with warnings.catch_warnings():  # loading the folder warns about its layout once, not here too
        warnings.simplefilter("ignore")
        roots = split_folders(path)
        class_names = _class_names(roots["train"])
    files = _folder_files(roots, class_names)
    sizes = _image_sizes(files, Path(config.root), [(part, str(p), label, *_stat(p)) for part, p, label in files])
    readable = sizes[sizes[:, 0] > 0]
    side = int(readable.min(dim=1).values.median()) if len(readable) else 0
    return FolderScan(len(files) / len(class_names), side, [f[1] for f in files])


def folder_image_size(files, root: Path, stats=None) -> tuple[int, str]:
    """The side a folder is decoded at when none is given, and why: the images' own size when they all share
    one (up to MAX_NATIVE_SIZE), else their median shorter side capped at DEFAULT_FOLDER_SIZE. Upscaling
    28 px digits to 64 px cost 14x per epoch and lost accuracy; larger photos are shrunk for a CPU budget."""
    sizes = _image_sizes(files, root, stats or [(part, str(p), label, *_stat(p)) for part, p, label in files])
    readable = sizes[sizes[:, 0] > 0]
    if len(readable) == 0:
        return DEFAULT_FOLDER_SIZE, "no readable image to measure"
    shorter = readable.min(dim=1).values
    distinct = torch.unique(readable, dim=0)
    if len(distinct) == 1:
        w, h = (int(v) for v in distinct[0])
        side = min(w, h)
        if side <= MAX_NATIVE_SIZE:
            return side, f"native: all {len(readable)} images are {w}x{h}"
        return DEFAULT_FOLDER_SIZE, (
            f"all {len(readable)} images are {w}x{h}, above {MAX_NATIVE_SIZE} px: {DEFAULT_FOLDER_SIZE} px for a "
            "from-scratch model (pass --image-size to choose)"
        )
    median = int(shorter.median())  # the lower middle value for an even count
    size = max(8, min(median, DEFAULT_FOLDER_SIZE))
    return size, (
        f"images differ in size (shorter side {int(shorter.min())}-{int(shorter.max())} px, median {median}): "
        f"the median capped at {DEFAULT_FOLDER_SIZE} px (pass --image-size to choose)"
    )


def _image_sizes(files, root: Path, stats) -> torch.Tensor:
    """(width, height) of every file from its header ((0, 0) if unreadable), cached like the decoded images."""

    def size_of(item) -> tuple[int, int]:
        try:
            with Image.open(item[1]) as img:
                return img.size
        except Exception:  # any unreadable header; decoding reports it properly
            return 0, 0

    def compute() -> dict:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            return {"sizes": torch.tensor(list(pool.map(size_of, files)), dtype=torch.int64).reshape(-1, 2)}

    key = cache_key("sizes-v1", stats)
    return load_or_compute(root / "cache" / "sizes" / f"{key}.pt", compute)[0]["sizes"]


def _stream_folder(path: Path, files, class_names, size: int, config: DataConfig) -> Source:
    """The streamed path: check every file's header now (bad files are skipped or fail as in memory), decode
    later batch by batch. Grey when every file is a grey mode."""

    def probe(item):
        try:
            with Image.open(item[1]) as img:
                img.verify()
                return img.mode in GREY_MODES, ""
        except Exception as exc:  # any unreadable header
            return False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        probed = list(pool.map(probe, files))
    entry = {"errors": [e for _, e in probed], "grey": torch.tensor([g for g, e in probed if not e], dtype=torch.bool)}
    kept_paths = [f[1] for f, (_, e) in zip(files, probed, strict=True) if not e]
    channels = 1 if len(entry["grey"]) and bool(entry["grey"].all()) else 3
    entry["images"] = LazyImages(kept_paths, size=size, channels=channels, crop_pct=config.crop_pct)
    return _folder_source(path, files, class_names, entry, config.strict)


DECODE_CHUNK = 1024  # files decoded per pass into one shard of the cache: about 150 MB at 224 px, the most held


def _fill_cache(cache: DecodedCache, path: Path, files, fps: list[str], size: int, crop_pct: float, *,
                hold: bool) -> bool:  # fmt: skip
    """Decode what the decoded-image cache lacks (rows keyed by each file's fingerprint, data/decoded.py: a grown
    folder decodes its new files only), DECODE_CHUNK files at a time so memory holds one chunk; returns whether all
    of it was written. Under DDP each process decodes its share (every world-th file) and reads the others' from
    the cache. Where the cache cannot be written, `hold` keeps the rows in memory for this command (the in-memory
    path); otherwise decoding stops at once (the streamed path then decodes each batch from its files)."""
    todo = cache.missing(fps)
    rank, world = process_share()
    written = _decode_into(cache, path, files, fps, todo[rank::world], size, crop_pct, hold=hold or world > 1)
    if world > 1:
        torch.distributed.barrier()  # every share written (or held) before any process reads the others'
        cache.reload()
        written = _decode_into(cache, path, files, fps, cache.missing(fps), size, crop_pct, hold=hold) and written
    return written


def _decode_into(cache: DecodedCache, path: Path, files, fps, todo: list[int], size: int, crop_pct: float, *,
                 hold: bool) -> bool:  # fmt: skip
    written = True
    for start in range(0, len(todo), DECODE_CHUNK):
        chunk = todo[start : start + DECODE_CHUNK]
        decoded = decode_listing(path, [files[i] for i in chunk], size, crop_pct)
        written = cache.add([fps[i] for i in chunk], decoded, rank=process_share()[0]) and written
        if not written and not hold:
            return False
    return written


def _cached_entry(cache: DecodedCache, fps: list[str]) -> dict:
    """The streamed images of a folder whose rows are all in the cache (grey when every file is a grey mode)."""
    errors = cache.errors(fps)
    kept = [fp for fp, e in zip(fps, errors, strict=True) if not e]
    grey = torch.tensor([bool(cache.rows[fp]["grey"]) for fp in kept], dtype=torch.bool)
    channels = 1 if len(grey) and bool(grey.all()) else 3
    return {"images": CachedImages(cache, kept, channels=channels), "grey": grey, "errors": errors}


def _stat(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def split_folders(path: Path) -> dict[str, Path]:
    """{split: folder}: `train/` beside `valid/` (or `val/`, `validation/`) and `test/` (or `testing/`); a folder
    without `train/` is one pool that cnnlab splits. Two names for one split is an error; a folder beside
    `train/` that is neither a split nor hidden is named in a warning (its images are not used)."""
    if not (path / "train").is_dir():
        return {"train": path}
    roots = {}
    for split, names in SPLIT_FOLDERS.items():
        found = [n for n in names if (path / n).is_dir()]
        if len(found) > 1:
            raise CnnlabError(
                f"{path} has both {' and '.join(f + '/' for f in found)} for the {split} split (keep one)"
            )
        if found:
            roots[split] = path / found[0]
    known = {n for names in SPLIT_FOLDERS.values() for n in names}
    stray = sorted(d.name for d in path.iterdir() if d.is_dir() and d.name not in known and not d.name.startswith("."))
    if stray:
        warnings.warn(
            f"{path}: folder(s) {', '.join(s + '/' for s in stray)} beside train/ are not used (split folders: "
            f"{', '.join('/'.join(n) for n in SPLIT_FOLDERS.values())}; move class folders into one of them)",
            stacklevel=3,
        )
    return roots


def _warn_unused_classes(roots: dict[str, Path], class_names: list[str]) -> None:
    """A class folder in valid/ or test/ that train/ lacks cannot be learned: named, its images left out."""
    for split, folder in roots.items():
        if split == "train":
            continue
        extra = sorted(
            {d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")} - set(class_names)
        )
        if extra:
            warnings.warn(
                f"{folder.name}/ has class folder(s) {', '.join(extra)} that train/ lacks: their images are not used "
                "(add training images for them, or remove them)",
                stacklevel=3,
            )


def _class_names(folder: Path) -> list[str]:
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise CnnlabError(f"{folder} has no class subfolders (expected one folder per class, e.g. {folder}/cat/1.jpg)")
    if len(names) < 2:
        raise CnnlabError(f"{folder} has only one class folder '{names[0]}' (a classifier needs at least two)")
    return names


def decode_listing(path: Path, files, size: int, crop_pct: float) -> dict:
    """{images uint8 [N,3,H,W] of the readable files, grey flags, errors (one string per file, "" if read)} of a
    folder's listed `files` ((split, path, label) each), decoded on a thread per core."""

    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8)  # filled in place: one copy of the pixels

    def decode(i: int):
        try:
            image, grey = decode_image(files[i][1], size=size, channels=3, crop_pct=crop_pct)
        except UnreadableImage as exc:
            return exc
        images[i] = image
        return grey

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        decoded = list(pool.map(decode, range(len(files))))
    ok = [i for i, d in enumerate(decoded) if not isinstance(d, Exception)]
    return {
        "images": images if len(ok) == len(files) else images[ok],
        "grey": torch.tensor([decoded[i] for i in ok], dtype=torch.bool),
        "errors": [str(d) if isinstance(d, Exception) else "" for d in decoded],
    }


def _folder_source(path: Path, files, class_names, entry: dict, strict: bool) -> Source:
    errors = entry["errors"]
    skipped = [(str(f[1]), e) for f, e in zip(files, errors, strict=True) if e]
    if skipped and strict:
        raise CnnlabError(f"unreadable image {skipped[0][0]}: {skipped[0][1]} (remove or replace it)")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image(s), first: {skipped[0][0]} ({skipped[0][1]}); "
            "use --strict to fail instead",
            stacklevel=2,
        )
    kept = [f for f, e in zip(files, errors, strict=True) if not e]
    _check_classes_nonempty(kept, class_names, path)
    images = entry["images"]
    if isinstance(images, torch.Tensor) and bool(entry["grey"].all()):  # R == G == B: keep one channel
        images = images[:, :1].contiguous()
    labels = torch.tensor([f[2] for f in kept], dtype=torch.int64)
    parts = np.array([f[0] for f in kept])
    partitions = {p: np.flatnonzero(parts == p) for p in _SPLIT_DIRS if (parts == p).any()}
    ids = [str(f[1]) for f in kept]
    return Source(f"folder:{path}", images, labels, class_names, ids, partitions, None, skipped)


def _check_classes_nonempty(kept, class_names, path: Path) -> None:
    """Every class needs training images (an error otherwise); a class that a given valid/ or test/ folder
    lacks is a warning: its per-class score there will read N/A."""
    counts = np.bincount([f[2] for f in kept if f[0] == "train"], minlength=len(class_names))
    for name, count in zip(class_names, counts, strict=True):
        if count == 0:
            raise CnnlabError(f"class '{name}' in {path} has no readable training images (add some)")
    for split in ("valid", "test"):
        present = {f[2] for f in kept if f[0] == split}
        missing = [n for k, n in enumerate(class_names) if present and k not in present]
        if missing:
            warnings.warn(
                f"{split}/ in {path} has no images of class(es) {', '.join(missing)}: their {split} scores "
                "will read N/A (add some to measure them)",
                stacklevel=3,
            )
