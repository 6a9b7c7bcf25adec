"""Fuzzing the two parsers a stranger's file reaches first: image decoding and the CSV scorer. Whatever the
bytes, decoding returns a [C, size, size] uint8 array or raises UnreadableImage, and scoring returns a result or
raises CnnlabError: no other exception, no crash.

`make test` runs a short seeded pass (FUZZ_EXAMPLES, default 40 per target); `make fuzz` runs thousands.
Every crash found becomes a case in tests/test_zoo.py.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.data.images import UnreadableImage, decode_array
from cnnlab.errors import CnnlabError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the damaged files it reads
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


def _seed_files() -> list[bytes]:
    """Small valid files of every format Pillow writes here: mutations of real files reach deep into decoders."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (12, 10, 3), np.uint8))
    found = []
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("WEBP", "RGB"),
                      ("PNG", "I;16"), ("PNG", "LA")):  # fmt: skip
        buf = io.BytesIO()
        (img.convert("L").convert(mode) if mode in ("I;16", "LA") else img.convert(mode)).save(buf, format=fmt)
        found.append(buf.getvalue())
    return found


SEEDS = _seed_files()


@st.composite
def damaged_images(draw) -> bytes:
    """A real image file with random bytes overwritten, cut short or appended to."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(len(data) // 4, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


@FUZZ
@given(data=st.one_of(damaged_images(), st.binary(max_size=256)), channels=st.sampled_from([1, 3]))
def test_decoding_any_bytes_gives_an_image_or_unreadable_image(data, channels):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.png"
        path.write_bytes(data)
        try:
            array, _ = decode_array(path, size=8, channels=channels)
        except UnreadableImage:
            return
    assert array.shape == (channels, 8, 8) and array.dtype == np.uint8


CELLS = st.one_of(
    st.sampled_from(["a", "b", "c", "0", "1", "0.5", "nan", "inf", "-1", "", "cat", "dog", "1e3", " 0.2"]),
    st.text(max_size=6),
)


@st.composite
def csv_texts(draw) -> str:
    header = draw(st.lists(st.sampled_from(["id", "Id", "label", "score", "p_cat", "p_dog", "task_1", "task_2", "x"]),
                           min_size=1, max_size=5, unique=True))  # fmt: skip
    rows = draw(st.lists(st.lists(CELLS, min_size=len(header), max_size=len(header) + 1), max_size=6))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return bom + newline.join(",".join(r) for r in [header, *rows]) + newline


@FUZZ
@given(text=csv_texts())
def test_scoring_any_csv_gives_a_result_or_one_clear_error(text):
    from cnnlab.evaluate.score import score_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.csv"
        path.write_text(text, encoding="utf-8")
        try:
            result = score_file(path)
        except CnnlabError:
            return
    assert result["n"] >= 1
