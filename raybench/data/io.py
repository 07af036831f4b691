"""Reading images and masks into fixed-size arrays, and decoding untrusted bytes within bounds.

Everything becomes float32 RGB in [0, 1] at a square `size`: grayscale is repeated over three
channels, 16-bit images are scaled by their bit depth, palette/alpha images are flattened. Masks
become {0, 1} uint8 at the same size (nearest-neighbour resize, so no new labels appear).

Every image, a file or a request's body, goes through one bounded decoder (`decode_image`):
- only PNG, JPEG, TIFF and BMP (`FORMATS`): Pillow tries no other plugin, so an EPS, PSD or SVG
  body never reaches the code that would parse it;
- the header's size is checked before any pixel is decoded: at most `max_pixels` pixels and
  `max_bytes` decoded bytes (Pillow's buffer plus the float32 copy);
- the data must be able to fill the image the header declares: a PNG's compressed rows are
  counted (streamed, nothing kept) before decoding, and any other format may declare at most
  `MAX_PIXELS_PER_BYTE` pixels per byte it carries; a file cut short is an error whatever
  Pillow's global `LOAD_TRUNCATED_IMAGES` says, never an image filled in with blanks;
- pixels that are not finite (a float TIFF holding inf or NaN) are refused.
A file is read only if it is a regular file (a FIFO, device or socket named *.png is refused,
never waited on) of at most `MAX_FILE_BYTES`.
"""
from __future__ import annotations

import io
import os
import stat
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageMode, UnidentifiedImageError

from raybench.errors import DatasetError, ImageInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# The formats README and docs/serving.md name, and the only Pillow plugins ever asked to open a file (MPO is how
# Pillow reports a JPEG carrying a second picture: the first is read, as a JPEG).
FORMATS = ("PNG", "JPEG", "TIFF", "BMP")

# Largest image accepted: 8k x 6k. Decoding costs memory in proportion to the pixel count the
# header claims, so a tiny file can ask for gigabytes (a decompression bomb).
MAX_PIXELS = 50_000_000
# Bytes a decode may hold at its peak: Pillow's buffer plus the float32 RGB array (16 B a pixel
# for 8-bit RGB: 50 M pixels fit).
MAX_DECODED_BYTES = 800_000_000
# Deflate cannot pack more than 1032 bytes into one, baseline JPEG needs 2 bits per 8x8 block
# (a flat grey progressive JPEG from Pillow: 167 pixels a byte): an image whose header declares
# more pixels than this per byte of file cannot be filled by its data.
MAX_PIXELS_PER_BYTE = 1024
MAX_FILE_BYTES = 1 << 30

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples a pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_truncation_lock = threading.Lock()


def _png_missing_data(data: bytes) -> str | None:
    """Why a PNG's compressed rows cannot fill its declared size, or None when they can. The IDAT
    stream is inflated in 1 MiB pieces and only counted, stopping as soon as enough has come."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None  # Pillow names what is wrong with the header
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    bits = _PNG_CHANNELS.get(colour, 4) * depth

    def row_bytes(width: int) -> int:
        return 1 + (width * bits + 7) // 8 if width else 0

    if interlace:
        need = sum(((h - y0 + dy - 1) // dy) * row_bytes((w - x0 + dx - 1) // dx)
                   for x0, y0, dx, dy in _ADAM7 if w > x0 and h > y0)
    else:
        need = h * row_bytes(w)
    inflate, got, pos = zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data) and not inflate.eof:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            chunk = data[pos + 8:pos + 8 + length]
            try:
                while chunk and not inflate.eof:
                    got += len(inflate.decompress(chunk, 1 << 20))
                    if got >= need:
                        return None
                    chunk = inflate.unconsumed_tail
            except zlib.error:
                return None  # corrupt, not short: Pillow's decoder says so
        pos += 12 + length
    if got >= need:
        return None
    return (f"truncated: its compressed rows hold {got} of the {need} bytes its {w}x{h} header declares "
            f"(about {got * h // max(need, 1)} of {h} rows)")


def _decoded_bytes(img: Image.Image) -> int:
    w, h = img.size
    try:
        mode = ImageMode.getmode(img.mode)
        per_pixel = max(len(mode.bands), 4 if len(mode.bands) > 1 else 1) * np.dtype(mode.typestr).itemsize
    except (KeyError, TypeError, ValueError):
        per_pixel = 4
    return w * h * (per_pixel + 12)  # Pillow's buffer (3-band modes padded to 4) + float32 RGB


def _open_bytes(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_DECODED_BYTES) -> Image.Image:
    """Encoded bytes -> a loaded Pillow image, within the bounds of the module docstring;
    ImageInputError names the problem."""
    if not data:
        raise ImageInputError("empty body: send the image file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageInputError(f"image too large to decode safely ({err})", status=413) from None
    except UnidentifiedImageError:
        raise ImageInputError(f"not an image file of a format read here ({', '.join(FORMATS)} expected)") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as err:
        raise ImageInputError(f"not a readable image ({type(err).__name__}: {str(err)[:200]})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageInputError(f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}", status=413)
    if _decoded_bytes(img) > max_bytes:
        raise ImageInputError(f"image of {w}x{h} in mode {img.mode} decodes to {_decoded_bytes(img)} bytes, "
                              f"over the limit of {max_bytes}", status=413)
    if img.format == "PNG":
        missing = _png_missing_data(data)
        if missing:
            raise ImageInputError(f"PNG {missing}")
    elif w * h > MAX_PIXELS_PER_BYTE * len(data):
        raise ImageInputError(f"truncated: {len(data)} bytes cannot fill a {w}x{h} {img.format} "
                              f"(more than {MAX_PIXELS_PER_BYTE} pixels a byte)")
    try:
        _load_untruncated(img)
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error, MemoryError) as err:
        raise ImageInputError(f"image cannot be decoded, truncated or corrupt ({str(err)[:200]})") from None
    return img


def _load_untruncated(img: Image.Image) -> None:
    """img.load() with Pillow's LOAD_TRUNCATED_IMAGES off, whoever in this process turned it on
    (it fills a cut file's missing rows with blanks); restored after, under a lock."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        img.load()
        return
    with _truncation_lock:
        before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_DECODED_BYTES) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, TIFF, BMP) -> float32 (H, W, 3) in [0, 1], within the bounds of
    the module docstring. ImageInputError names the problem; its `status` is how an HTTP server
    answers: 400 not a usable image (or truncated), 413 too large, 422 pixels that are not finite."""
    arr = image_to_array(_open_bytes(bytes(data), max_pixels, max_bytes))
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ImageInputError(f"image has unusable shape {arr.shape}")
    return arr


def read_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes. Anything else (a FIFO, device, socket or folder, a symlink loop) is
    a DatasetError naming it, never waited on: the file is opened non-blocking and checked on the
    open descriptor, so a pipe swapped in after a check cannot hang the reader either."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DatasetError(path, "file not found") from None
    except OSError as err:  # ELOOP (a symlink loop), EACCES, ENXIO (a socket), ...
        raise DatasetError(path, f"cannot open ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            mode = info.st_mode
            kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                    stat.S_ISBLK(mode) else "a folder" if stat.S_ISDIR(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a file")
            raise DatasetError(path, f"not a regular file ({kind})")
        if info.st_size > max_bytes:
            raise DatasetError(path, f"file of {info.st_size} bytes is over the limit of {max_bytes}")
        with os.fdopen(fd, "rb") as f:
            fd = None  # the file object closes it
            data = f.read(max_bytes + 1)
    finally:
        if fd is not None:
            os.close(fd)
    if len(data) > max_bytes:  # grew while read
        raise DatasetError(path, f"file is over the limit of {max_bytes} bytes")
    return data


def _open(path: Path) -> Image.Image:
    """An image file opened as decode_image opens bytes (formats, bounds, data that fill it), loaded."""
    data = read_file(path)
    try:
        return _open_bytes(data)
    except ImageInputError as err:
        raise DatasetError(path, f"cannot read image: {err.problem}") from None


def image_to_array(img: Image.Image) -> np.ndarray:
    """PIL image of any common mode -> float32 (H, W, 3) in [0, 1]. A float image holding inf or
    NaN is an ImageInputError (422): it cannot be scaled, and a NaN score must never be a verdict."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0
        arr = np.clip(arr / peak, 0.0, 1.0).astype(np.float32)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ImageInputError(f"{bad} pixel(s) of this float image are not finite (inf or NaN): it cannot be "
                                  f"scored", status=422)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32)
    arr /= 255.0  # in place: the same float32 division, one array fewer at the peak
    return arr


def resize_array(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) float -> (size, size, 3) float, bilinear."""
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    chans = [
        np.asarray(Image.fromarray(arr[..., c]).resize((size, size), Image.BILINEAR))
        for c in range(arr.shape[2])
    ]
    return np.stack(chans, axis=2)


def read_image(path: str | Path) -> np.ndarray:
    """Image file -> float32 (H, W, 3) in [0, 1] at its own size; DatasetError names the file on failure."""
    path = Path(path)
    try:
        arr = image_to_array(_open(path))
    except ImageInputError as err:
        raise DatasetError(path, err.problem) from None
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise DatasetError(path, f"image has unusable shape {arr.shape}")
    return arr


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Image file -> float32 (3, size, size) in [0, 1]; DatasetError names the file on failure."""
    return np.ascontiguousarray(resize_array(read_image(path), size).transpose(2, 0, 1))


def load_mask(path: str | Path, size: int) -> np.ndarray:
    """Mask file -> uint8 (size, size) in {0, 1}: any non-zero pixel is anomalous."""
    path = Path(path)
    img = _open(path)
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    binary = Image.fromarray((arr > 0).astype(np.uint8) * 255)
    binary = binary.resize((size, size), Image.NEAREST)
    return (np.asarray(binary) > 127).astype(np.uint8)


def check_image(path: str | Path) -> tuple[int, int]:
    """Cheap validity check (header + decode) used before a sweep starts; returns (width, height)."""
    return _open(Path(path)).size
