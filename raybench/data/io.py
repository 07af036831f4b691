"""Reading images and masks from disk into fixed-size arrays.

Everything becomes float32 RGB in [0, 1] at a square `size`: grayscale is repeated over three
channels, 16-bit images are scaled by their bit depth, palette/alpha images are flattened. Masks
become {0, 1} uint8 at the same size (nearest-neighbour resize, so no new labels appear).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from raybench.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DatasetError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(path, f"cannot read image ({err})") from None
    return img


def image_to_array(img: Image.Image) -> np.ndarray:
    """PIL image of any common mode -> float32 (H, W, 3) in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0
        arr = np.clip(arr / peak, 0.0, 1.0).astype(np.float32)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


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
    arr = image_to_array(_open(path))
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


# Largest image decode_image accepts: 8k x 6k. Decoding costs memory in proportion to the pixel
# count the header claims, so a tiny file can ask for gigabytes (a decompression bomb).
MAX_PIXELS = 50_000_000


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded bytes (PNG, JPEG, TIFF, BMP) -> float32 (H, W, 3) in [0, 1]. The header's size is
    checked against `max_pixels` before any pixel is decoded; ImageInputError names the problem."""
    import io
    import warnings

    from raybench.errors import ImageInputError
    if not data:
        raise ImageInputError("empty body: send the image file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageInputError(f"image too large to decode safely ({err})", status=413) from None
    except UnidentifiedImageError:
        raise ImageInputError("not an image file (PNG, JPEG, TIFF or BMP bytes expected)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageInputError(f"not a readable image ({type(err).__name__}: {str(err)[:200]})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageInputError(f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels}", status=413)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageInputError(f"image cannot be decoded, truncated or corrupt ({str(err)[:200]})") from None
    arr = image_to_array(img)
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ImageInputError(f"image has unusable shape {arr.shape}")
    return arr
