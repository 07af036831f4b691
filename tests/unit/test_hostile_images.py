"""Hostile image bytes and files against the one bounded decoder every path uses (serve's body,
predict's files, the pyfunc model's encoded inputs): each is refused with ImageInputError /
DatasetError naming the problem, or decodes to finite pixels; nothing else escapes, nothing is
filled in, nothing hangs. Bounded: seeded fuzz, a few hundred decodes of small images, ~10 s."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFile

from raybench.data.io import FORMATS, MAX_PIXELS_PER_BYTE, decode_image, read_image
from raybench.errors import DatasetError, ImageInputError

from hostile import EPS, GOOD, RGB, encode, float_tiff, png_declaring

@pytest.mark.parametrize("name", sorted(GOOD))
def test_every_accepted_kind_decodes_to_finite_pixels(name):
    arr = decode_image(GOOD[name])
    assert arr.shape == (40, 56, 3) or arr.shape == (30, 40, 3)
    assert arr.dtype == np.float32 and np.isfinite(arr).all() and 0 <= arr.min() <= arr.max() <= 1


def test_a_tiny_png_declaring_7000x7000_is_refused_at_once_without_memory():
    # in a fresh interpreter, so its peak memory is its own: decoding this filled in costs ~650 MB and 5 s
    code = (
        "import resource, sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from raybench.data.io import decode_image\n"
        "from raybench.errors import ImageInputError\n"
        "data = open(sys.argv[2], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    decode_image(data); print('DECODED')\n"
        "except ImageInputError as err:\n"
        "    print(err.status, err.problem)\n"
        "print(time.perf_counter() - t, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    bomb = png_declaring(7000, 7000, rows=1)
    assert len(bomb) < 120
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"raybench-bomb-{os.getpid()}.png"
    path.write_bytes(bomb)
    try:
        out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[2]), str(path)],
                             capture_output=True, text=True, timeout=120)
    finally:
        path.unlink()
    verdict, figures = out.stdout.strip().splitlines()
    seconds, grown_mb = map(float, figures.split())
    assert verdict.startswith("400 PNG truncated") and "7000x7000" in verdict, out.stdout + out.stderr
    assert seconds < 1.0 and grown_mb < 100, (seconds, grown_mb)


@pytest.mark.parametrize("rows, interlace", [(1, 0), (29, 0), (1, 1), (29, 1)])
def test_a_png_whose_rows_end_early_is_never_filled_in(rows, interlace):
    with pytest.raises(ImageInputError, match="PNG truncated") as err:
        decode_image(png_declaring(40, 30, rows, interlace))
    assert err.value.status == 400
    assert decode_image(png_declaring(40, 30, 30 if not interlace else 60)).shape == (30, 40, 3)


def test_load_truncated_images_set_elsewhere_never_applies(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library might
    for name in ("PNG", "JPEG", "TIFF", "BMP"):
        data = GOOD[name]
        with pytest.raises(ImageInputError, match="truncated|corrupt|cannot"):
            decode_image(data[: len(data) * 2 // 3])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_pixels_are_refused_with_422(value):
    with pytest.raises(ImageInputError, match="not finite") as err:
        decode_image(float_tiff(value))
    assert err.value.status == 422


def test_only_the_named_formats_are_opened():
    assert FORMATS == ("PNG", "JPEG", "TIFF", "BMP")
    others = {"EPS": EPS, "GIF": encode(RGB, "GIF"), "WEBP": encode(RGB, "WEBP"),
              "ICO": encode(RGB, "ICO"), "PPM": encode(RGB, "PPM"), "TGA": encode(RGB, "TGA"),
              "SVG": b"<svg xmlns='http://www.w3.org/2000/svg' width='8' height='8'/>"}
    for name, data in others.items():
        with pytest.raises(ImageInputError, match="not an image file of a format read here") as err:
            decode_image(data)
        assert err.value.status == 400, name


def test_header_bombs_are_413_before_decoding():
    cases = [png_declaring(60000, 60000, rows=1), encode(RGB, "PNG")]
    jpeg = bytearray(GOOD["JPEG"])
    sof = jpeg.index(b"\xff\xc0")  # baseline SOF0: precision, height, width
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    cases.append(bytes(jpeg))
    for data, limit in zip(cases, (50_000_000, 2000, 50_000_000)):
        t = time.perf_counter()
        with pytest.raises(ImageInputError, match="over the limit|too large to decode safely") as err:
            decode_image(data, max_pixels=limit)
        assert err.value.status == 413 and time.perf_counter() - t < 0.5
    with pytest.raises(ImageInputError, match="decodes to .* bytes, over the limit") as err:
        decode_image(GOOD["PNG"], max_bytes=40 * 56 * 10)  # bytes bound, under the pixel bound
    assert err.value.status == 413


def test_more_pixels_than_the_bytes_can_fill_is_refused():
    flat = encode(np.full((1000, 1200, 3), 128, np.uint8), "JPEG", progressive=True)
    assert decode_image(flat).shape == (1000, 1200, 3)  # a flat grey photo: ~170 pixels a byte
    cut = flat[:400] + b"\xff\xd9"  # its header and a few bytes of scan: 3000 pixels a byte
    assert 1000 * 1200 > MAX_PIXELS_PER_BYTE * len(cut)
    with pytest.raises(ImageInputError, match="cannot fill a 1200x1000 JPEG"):
        decode_image(cut)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF reader warns about the tags it skips
def test_fuzz_truncated_and_bit_flipped_never_escape():
    """Every cut and every flip gives ImageInputError or finite pixels; nothing else, ever."""
    rng = np.random.default_rng(19)
    t, outcomes = time.perf_counter(), {"refused": 0, "decoded": 0}
    for name, data in sorted(GOOD.items()):
        variants = [data[:n] for n in sorted({1, 8, 16, 33, 64, len(data) // 3, len(data) // 2, len(data) - 1})]
        for _ in range(25):
            flipped = bytearray(data)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                flipped[pos] ^= 1 << int(rng.integers(0, 8))
            variants.append(bytes(flipped))
        variants.append(data + rng.bytes(100))  # trailing garbage
        for body in variants:
            try:
                arr = decode_image(body)
            except ImageInputError as err:
                assert err.status in (400, 413, 422) and err.problem
                outcomes["refused"] += 1
            else:
                assert np.isfinite(arr).all() and arr.ndim == 3
                outcomes["decoded"] += 1
    assert outcomes["refused"] >= 80 and time.perf_counter() - t < 60, outcomes


def test_files_that_are_not_regular_are_named_and_never_waited_on(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    device = tmp_path / "null.png"
    device.symlink_to("/dev/null")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    expected = {fifo: "not a regular file (a FIFO", loop: "symbolic links", device: "not a regular file (a device)",
                folder: "not a regular file (a folder)"}
    for path, message in expected.items():
        t = time.perf_counter()
        with pytest.raises(DatasetError, match=str(path.name)) as err:
            read_image(path)
        assert message in str(err.value) and time.perf_counter() - t < 1
    (tmp_path / "inf.tiff").write_bytes(float_tiff(np.inf))
    with pytest.raises(DatasetError, match="inf.tiff: .*not finite"):
        read_image(tmp_path / "inf.tiff")
    (tmp_path / "eps.png").write_bytes(EPS)
    with pytest.raises(DatasetError, match="eps.png: cannot read image"):
        read_image(tmp_path / "eps.png")
