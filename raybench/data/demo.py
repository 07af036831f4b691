"""The built-in demo dataset: generated deterministically, written once in MVTec AD layout.

Three categories, two textures and an object, 128x128 RGB. The defects (scratches, stains, holes,
stray threads, cracks, spots) are drawn shapes of new colours, a different kind from what the
methods synthesise at training time (blended patches of normal images, swapped patches), so the
demo does not reward a method for recognising its own augmentation.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from raybench.data.layout import Category
from raybench.data.mvtec import load_folder

VERSION = "v3"
SIZE = 128
CATEGORIES = {"stripes": "texture", "weave": "texture", "disc": "object"}
DEFECTS = {"stripes": ("scratch", "stain"), "weave": ("hole", "thread"), "disc": ("crack", "spot")}
N_TRAIN, N_TEST_GOOD, N_TEST_PER_DEFECT = 48, 40, 16


def default_root() -> Path:
    base = os.environ.get("RAYBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "raybench")
    return Path(base) / f"demo-{VERSION}"


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(SIZE, dtype=np.float32), np.arange(SIZE, dtype=np.float32))


def _normal(category: str, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid()
    if category == "stripes":
        freq = 2 * np.pi / rng.uniform(11.0, 13.0)
        angle = rng.uniform(-0.08, 0.08)
        wave = 0.5 + 0.35 * np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
        img = np.stack([wave * 0.9, wave * 0.6 + 0.1, 0.3 + 0.2 * wave], axis=2)
    elif category == "weave":
        period = rng.uniform(15.0, 17.0)
        ox, oy = rng.uniform(0, period, 2)
        cx = np.sin(2 * np.pi * (x + ox) / period)
        cy = np.sin(2 * np.pi * (y + oy) / period)
        cell = 0.5 + 0.25 * np.sign(cx * cy) * np.minimum(np.abs(cx), np.abs(cy)) ** 0.5
        img = np.stack([cell * 0.7 + 0.1, cell * 0.7 + 0.1, cell * 0.5 + 0.2], axis=2)
    else:  # disc: a bright metallic disc with a centre hole on a dark background
        cx, cy = SIZE / 2 + rng.uniform(-3, 3, 2)
        r = np.hypot(x - cx, y - cy)
        radius = rng.uniform(40, 44)
        body = (r < radius) & (r > 10)
        shade = 0.55 + 0.3 * (1 - r / radius)
        img = np.full((SIZE, SIZE, 3), 0.08, np.float32)
        img[body] = \
            np.stack([shade[body], shade[body] * 0.95, shade[body] * 0.85], axis=1)
    img = img + rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _line_mask(rng, length, width, inside=None) -> np.ndarray:
    x, y = _grid()
    for _ in range(100):
        cx, cy = rng.uniform(24, SIZE - 24, 2)
        if inside is None or inside[int(cy), int(cx)]:
            break
    theta = rng.uniform(0, np.pi)
    dx, dy = np.cos(theta), np.sin(theta)
    along = (x - cx) * dx + (y - cy) * dy
    across = -(x - cx) * dy + (y - cy) * dx
    bend = 0.02 * along ** 2 * rng.uniform(-0.15, 0.15)
    mask = (np.abs(along) < length / 2) & (np.abs(across - bend) < width / 2)
    return mask if inside is None else mask & inside


def _blob_mask(rng, radius, inside=None) -> np.ndarray:
    x, y = _grid()
    for _ in range(100):
        cx, cy = rng.uniform(20, SIZE - 20, 2)
        if inside is None or inside[int(cy), int(cx)]:
            break
    a, b = radius * rng.uniform(0.7, 1.3, 2)
    mask = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1
    return mask if inside is None else mask & inside


def _defect(category: str, kind: str, img: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    inside = None
    if category == "disc":
        inside = img.mean(axis=2) > 0.3
    if kind in ("scratch", "thread", "crack"):
        mask = _line_mask(rng, rng.uniform(10, 30), rng.uniform(1.5, 2.5), inside)
        colour = {"scratch": (0.95, 0.9, 0.7), "thread": (0.7, 0.3, 0.25), "crack": (0.12, 0.12, 0.12)}[kind]
    else:
        mask = _blob_mask(rng, rng.uniform(2.5, 6), inside)
        colour = {"stain": (0.35, 0.25, 0.15), "hole": (0.1, 0.1, 0.12), "spot": (0.35, 0.5, 0.75)}[kind]
    out = img.copy()
    # small, faint defects (alpha 0.15-0.5; some barely above the sensor noise) keep validation from
    # being solved by every configuration: AUROCs below 1 that differ between trials and methods
    alpha = rng.uniform(0.15, 0.5)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return np.clip(out, 0, 1), mask


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(path)


def generate(root: Path) -> None:
    """Write every category under `root` (deterministic: the same bytes on every machine)."""
    for c_index, category in enumerate(CATEGORIES):
        rng = np.random.default_rng(1000 + c_index)
        base = root / category
        for i in range(N_TRAIN):
            _save(base / "train" / "good" / f"{i:03d}.png", _normal(category, rng))
        for i in range(N_TEST_GOOD):
            _save(base / "test" / "good" / f"{i:03d}.png", _normal(category, rng))
        for kind in DEFECTS[category]:
            for i in range(N_TEST_PER_DEFECT):
                img, mask = _defect(category, kind, _normal(category, rng), rng)
                _save(base / "test" / kind / f"{i:03d}.png", img)
                _save(base / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.float32))


def ensure_demo(root: Path | None = None) -> Path:
    """Generate the demo dataset once (atomically: a half-written copy is never used)."""
    root = Path(root) if root else default_root()
    if (root / ".complete").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    try:
        generate(tmp)
        (tmp / ".complete").write_text(VERSION)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except FileExistsError:
        # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_demo(root: Path | None = None, categories=None) -> list[Category]:
    root = ensure_demo(root)
    cats = load_folder(root, categories, dataset="demo")
    for cat in cats:
        cat.kind = CATEGORIES[cat.name]
    return cats
