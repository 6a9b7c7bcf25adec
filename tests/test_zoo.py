"""The bad-input zoo: image files as found in folders scraped from the web, generated here (never committed).
Each case states what cnnlab does with it; the docs' table is rendered from ZOO; a test keeps the two equal.
Decoding and the folder loader are checked: a refused file is skipped with a warning and counted (or is one
clear `error:` line under --strict), a decoded one gives the pixels a viewer would show."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.images import UnreadableImage, decode_array

SIZE = 16


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bomb(path: Path) -> None:
    """A PNG whose header claims 20000 x 20000 pixels (400 MP) with almost no data: refusing it must not need
    decoding it (decoding would allocate 1.2 GB)."""
    raw = bytearray(_png_bytes(Image.new("L", (8, 8))))
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4 : ihdr + 12] = struct.pack(">II", 20000, 20000)
    raw[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr : ihdr + 17])))
    path.write_bytes(bytes(raw))


def _exif_rotated(path: Path) -> None:
    """A JPEG stored sideways with EXIF orientation 6 (viewers turn it 90 degrees clockwise)."""
    img = Image.new("RGB", (32, 16), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 16, 16))  # stored: white left half
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, format="JPEG", exif=exif, quality=95)


def _animated(path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _palette_alpha(path: Path) -> None:
    img = Image.new("RGBA", (16, 16), (0, 128, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 8, 16))
    img.convert("P").save(path, format="PNG", transparency=0)


def _sixteen_bit(path: Path) -> None:
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(path, format="PNG")


def _float_tiff(path: Path) -> None:
    Image.fromarray(np.linspace(-1, 1, 256, dtype=np.float32).reshape(16, 16), "F").save(path, format="TIFF")


def _truncated(fmt: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, format=fmt)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])

    return make


def _solid(fmt: str, mode: str = "RGB", colour=(200, 30, 30), size=(16, 16)) -> Callable[[Path], None]:
    return lambda path: Image.new(mode, size, colour).save(path, format=fmt)


def _mean_rgb(a: np.ndarray) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in a.reshape(3, -1).mean(1))


@dataclass(frozen=True)
class Case:
    what: str  # the README's wording
    name: str  # the file's name (its extension is what a scraper gave it)
    make: Callable[[Path], None]
    refused: str | None = None  # a fragment of the reason when the file is skipped
    check: Callable[[np.ndarray], bool] | None = None  # on the decoded RGB array [3, SIZE, SIZE]
    shown: str = ""  # what a decoded file becomes, for the README


ZOO = [
    Case("zero bytes", "empty.png", lambda p: p.write_bytes(b""), refused="empty file"),
    Case("truncated JPEG", "cut.jpg", _truncated("JPEG"), refused="truncated"),
    Case("truncated PNG", "cut.png", _truncated("PNG"), refused="truncated"),
    Case("text with an image extension", "notes.jpg", lambda p: p.write_text("hello"), refused="cannot identify"),
    Case(
        "HTML saved as .png",
        "page.png",
        lambda p: p.write_text("<html><body>404</body></html>"),
        refused="cannot identify",
    ),  # fmt: skip
    Case("20000x20000 PNG (decompression bomb)", "bomb.png", _bomb, refused="decompression bomb"),
    Case(
        "CMYK JPEG",
        "cmyk.jpg",
        _solid("JPEG", "CMYK", (0, 255, 255, 0)),
        check=lambda a: _mean_rgb(a)[0] > 200 and max(_mean_rgb(a)[1:]) < 60,
        shown="converted to RGB (red stays red)",
    ),  # fmt: skip
    Case(
        "16-bit grey PNG",
        "scan16.png",
        _sixteen_bit,
        check=lambda a: 120 <= a.mean() <= 136,
        shown="scaled to 8 bits (mid-grey stays mid-grey, not white)",
    ),  # fmt: skip
    Case(
        "32-bit float TIFF",
        "float.tif",
        _float_tiff,
        check=lambda a: a.min() < 40 and a.max() > 215,
        shown="stretched from its minimum to its maximum",
    ),  # fmt: skip
    Case(
        "palette PNG with transparency",
        "palette.png",
        _palette_alpha,
        check=lambda a: a[1].max() >= 120,
        shown="converted to RGB",
    ),  # fmt: skip
    Case(
        "animated GIF",
        "anim.gif",
        _animated,
        check=lambda a: _mean_rgb(a)[0] > 200 and _mean_rgb(a)[2] < 60,
        shown="its first frame",
    ),  # fmt: skip
    Case(
        "EXIF-rotated JPEG",
        "sideways.jpg",
        _exif_rotated,
        check=lambda a: a[:, : SIZE // 2].mean() > 200 and a[:, SIZE // 2 :].mean() < 55,
        shown="turned as viewers show it",
    ),  # fmt: skip
    Case(
        "1x1 PNG",
        "dot.png",
        _solid("PNG", size=(1, 1)),
        check=lambda a: _mean_rgb(a) == (200, 30, 30),
        shown="upscaled",
    ),  # fmt: skip
    Case("WebP", "photo.webp", _solid("WEBP"), check=lambda a: _mean_rgb(a)[0] > 180, shown="decoded"),
    Case("TIFF", "photo.tiff", _solid("TIFF"), check=lambda a: _mean_rgb(a) == (200, 30, 30), shown="decoded"),
    Case("BMP", "photo.bmp", _solid("BMP"), check=lambda a: _mean_rgb(a) == (200, 30, 30), shown="decoded"),
]


@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_each_image_in_the_zoo_is_decoded_as_shown_or_refused_with_a_reason(case, tmp_path):
    path = tmp_path / case.name
    case.make(path)
    if case.refused:
        with pytest.raises(UnreadableImage, match=case.refused):
            decode_array(path, size=SIZE, channels=3)
        return
    array, _ = decode_array(path, size=SIZE, channels=3)
    assert array.shape == (3, SIZE, SIZE) and array.dtype == np.uint8
    assert case.check(array), case.what


def test_a_folder_of_the_whole_zoo_trains_on_what_decodes_and_counts_what_it_skips(tmp_path, cli):
    """Every zoo file inside a class folder of a real image folder: the run trains, the warning counts the
    refused files, and --strict turns the first one into one clear line with no run folder left."""
    from cnnlab.data.samples import write_sample_folder

    folder = tmp_path / "my photos (web)"  # spaces and brackets in the path
    write_sample_folder("lfw", folder)
    target = folder / "train" / "face"
    for case in ZOO:
        case.make(target / f"zoo-{case.name}")
    (target / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (target / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    runs = tmp_path / "runs"
    args = ("train", "--data", f"folder:{folder}", "--model", "simple_cnn_bn", "--epochs", "1", "--runs-dir", runs,
            "--data-root", tmp_path / "d",
            "--no-report", "--image-size", "32")  # fmt: skip
    code, out, err = cli(*args, "--name", "ok")
    refused = sum(1 for c in ZOO if c.refused)
    assert code == 0, err
    assert f"skipped {refused} unreadable" in out + err
    code, out, err = cli(*args, "--name", "strict", "--strict")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (runs / "strict").exists()


def _copy_some(src: Path, dst: Path, n: int) -> None:
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(sorted(src.glob("*.png"))[:n]):
        shutil.copy(f, dst / f"{i}.png")


def _symlink_loop(d: Path) -> None:
    (d / "train" / "face" / "loop").symlink_to(d / "train" / "face", target_is_directory=True)


def _empty_class(d: Path) -> None:
    (d / "train" / "cat").mkdir()


def _corrupt_class(d: Path) -> None:
    for split in ("train", "valid", "test"):
        (d / split / "cat").mkdir()
        for i in range(3):
            (d / split / "cat" / f"{i}.png").write_bytes(b"junk")


def _class_missing_from_test(d: Path) -> None:
    for split in ("train", "valid"):
        _copy_some(d / split / "face", d / split / "cat", 5)


def _nested(d: Path) -> None:
    _copy_some(d / "train" / "face", d / "train" / "face" / "more" / "deeper", 3)
    (d / "notes").mkdir()
    (d / "notes" / "readme.txt").write_text("not data")


@dataclass(frozen=True)
class FolderCase:
    what: str
    make: Callable[[Path], None]
    outcome: str  # "trains", or a fragment of the warning / error line
    error: bool = False


FOLDER_ZOO = [
    FolderCase("a symlink that loops back to its class folder", _symlink_loop, "trains"),
    FolderCase("images in sub-folders of a class folder; a stray non-class folder beside train/", _nested, "trains"),
    FolderCase(
        "a class in train/ and valid/ but not in test/",
        _class_missing_from_test,
        "test/ in ... has no images of class(es) cat: their test scores will read N/A",
    ),  # fmt: skip
    FolderCase("an empty class folder", _empty_class, "class folder .../train/cat has no images", error=True),
    FolderCase(
        "a class of only corrupt images",
        _corrupt_class,
        "class 'cat' in ... has no readable training images",
        error=True,
    ),  # fmt: skip
]


@pytest.mark.parametrize("case", FOLDER_ZOO, ids=[c.make.__name__.strip("_") for c in FOLDER_ZOO])
def test_each_folder_in_the_zoo_trains_warns_or_is_one_clear_line(case, tmp_path, cli):
    from cnnlab.data.samples import write_sample_folder

    folder = tmp_path / "zoo folder ü"  # a unicode name with spaces
    write_sample_folder("lfw", folder)
    case.make(folder)
    runs = tmp_path / "runs"
    code, out, err = cli("train", "--data", f"folder:{folder}", "--model", "simple_cnn_bn", "--epochs", "1",
                         "--runs-dir", runs, "--name", "z",
                         "--data-root", tmp_path / "d", "--no-report", "--image-size", "32")  # fmt: skip
    first, _, rest = case.outcome.partition("...")
    if case.error:
        assert code == 2 and len(err.strip().splitlines()) == 1 and not (runs / "z").exists()
        assert first in err and rest in err
        return
    assert code == 0, err
    assert (runs / "z" / "best.pt").is_file()
    if case.outcome != "trains":
        assert first in out + err and rest in out + err


CONFIG_ZOO = [
    ("YAML that is a list, not a mapping", "- data\n- model\n", "must hold a mapping with data/model/train"),
    ("not YAML at all", "train:\n  epochs: 2\n: :\n", "is not valid YAML"),
    ("an unknown key (a typo)", "train:\n  epoch: 3\n", "unknown 'train' option 'epoch' (did you mean"),
    ("text where a number belongs", "train:\n  epochs: many\n", "train.epochs must be a whole number"),
    ("a section that is a list", "train: [1, 2]\n", "section 'train' must be a mapping"),
]


@pytest.mark.parametrize("what,text,fragment", CONFIG_ZOO, ids=[c[0] for c in CONFIG_ZOO])
def test_each_config_in_the_zoo_is_one_clear_line(what, text, fragment, tmp_path, cli):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code, _, err = cli("train", "--config", path, "--runs-dir", tmp_path / "runs")
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def _truncated_checkpoint(good: Path, path: Path) -> None:
    path.write_bytes(good.read_bytes()[:5000])


def _random_bytes(good: Path, path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


CHECKPOINT_ZOO = [
    ("a truncated checkpoint (a copy cut short)", _truncated_checkpoint, "cannot load checkpoint"),
    ("random bytes named .pt", _random_bytes, "cannot load checkpoint"),
]


@pytest.mark.parametrize("what,make,fragment", CHECKPOINT_ZOO, ids=[c[0] for c in CHECKPOINT_ZOO])
def test_each_checkpoint_in_the_zoo_is_one_clear_line(what, make, fragment, tmp_path, cli):
    code, _, err = cli("train", "--data", "digits", "--epochs", "1", "--runs-dir", tmp_path / "runs", "--name", "r",
                       "--no-report")  # fmt: skip
    assert code == 0, err
    bad = tmp_path / "emailed.pt"
    make(tmp_path / "runs" / "r" / "best.pt", bad)
    image = tmp_path / "x.png"
    Image.new("L", (8, 8), 128).save(image)
    code, _, err = cli("predict", bad, image)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert "weights_only" not in err  # torch's advice to load unsafely is not passed on


GOOD_ROWS = "id,p_cat,p_dog{n}a,0.9,0.1{n}b,0.2,0.8{n}c,0.6,0.4{n}"
CSV_ZOO = [  # (what, predictions file's text, truth file's text, None = scores, else a fragment of the error)
    ("a byte-order mark (Excel's 'CSV UTF-8')", "\ufeff" + GOOD_ROWS.format(n="\n"), None, None),
    ("Windows line ends (CRLF)", GOOD_ROWS.format(n="\r\n"), None, None),
    ("an id listed twice", "id,p_cat,p_dog\na,0.9,0.1\na,0.2,0.8\nc,0.6,0.4\n", None, "id 'a' appears more than once"),
    (
        "NaN as a probability",
        "id,p_cat,p_dog\na,nan,0.1\nb,0.2,0.8\nc,0.6,0.4\n",
        None,
        "column 'p_cat' row 2: 'nan' is not a probability",
    ),  # fmt: skip
    (
        "probabilities that do not sum to 1",
        "id,p_cat,p_dog\na,0.5,0.2\nb,0.2,0.8\nc,0.6,0.4\n",
        None,
        "row 2: the class probabilities sum to 0.7, not 1",
    ),  # fmt: skip
    ("no id column", "name,p_cat,p_dog\na,0.9,0.1\nb,0.2,0.8\nc,0.6,0.4\n", None, "no id column"),
    (
        "a truth file without its label column",
        GOOD_ROWS.format(n="\n"),
        "id,lbl\na,cat\nb,dog\nc,cat\n",
        "no 'label' column",
    ),  # fmt: skip
]


@pytest.mark.parametrize("what,text,truth,fragment", CSV_ZOO, ids=[c[0] for c in CSV_ZOO])
def test_each_csv_in_the_zoo_is_scored_or_one_clear_line(what, text, truth, fragment, tmp_path, cli):
    predictions, truth_path = tmp_path / "predictions.csv", tmp_path / "truth.csv"
    predictions.write_bytes(text.encode("utf-8"))
    truth_path.write_bytes((truth or "id,label\na,cat\nb,dog\nc,cat\n").encode("utf-8"))
    code, out, err = cli("score", predictions, "--truth", truth_path)
    if fragment is None:
        assert code == 0 and "3 cases: accuracy 1.0000" in out, err
    else:
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def zoo_table() -> str:
    """The README's table, rendered from ZOO."""
    rows = ["| file (as scraped) | what cnnlab does |", "| --- | --- |"]
    for c in ZOO:
        does = f"skipped with a warning and counted (`{c.refused}`)" if c.refused else c.shown
        rows.append(f"| {c.what} | {does} |")
    rows += ["", "| folder | what cnnlab does |", "| --- | --- |"]
    for f in FOLDER_ZOO:
        does = "trains" if f.outcome == "trains" else (f"`error: {f.outcome}`" if f.error else f"warns: `{f.outcome}`")
        rows.append(f"| {f.what} | {does} |")
    rows += ["", "| config (`--config`) or checkpoint | what cnnlab does |", "| --- | --- |"]
    rows += [f"| {what} | `error: ... {fragment} ...` |" for what, _, fragment in CONFIG_ZOO + CHECKPOINT_ZOO]
    rows += ["", "| CSV for `cnnlab score` | what cnnlab does |", "| --- | --- |"]
    rows += [f"| {what} | {'scored as usual' if f is None else f'`error: ... {f} ...`'} |" for what, _, _, f in CSV_ZOO]
    return "\n".join(rows)


def test_the_robustness_page_table_is_the_zoo():
    page = (Path(__file__).resolve().parents[1] / "docs" / "robustness.md").read_text()
    assert zoo_table() in page, "docs/robustness.md's zoo table drifted; paste this:\n" + zoo_table()
