"""`raybench predict`: score image files with a Detector, print one line per image as it comes,
and (with an output folder) write each image's map, mask and overlay. A file that cannot be read
(raybench.data.io: not a regular file, not PNG/JPEG/TIFF/BMP, truncated, too large, pixels that are
not finite) or whose score is not finite is named and skipped; the rest are scored."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from raybench.data.io import IMAGE_SUFFIXES, read_image
from raybench.errors import DatasetError
from raybench.reporting import figures

CHUNK = 32  # images read and scored together; results are printed per chunk


def image_paths(arguments: list[str]) -> list[Path]:
    """Files as given; a folder stands for its image files (sorted, not recursive)."""
    paths = []
    for arg in map(Path, arguments):
        if arg.is_dir():
            paths += sorted(p for p in arg.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(arg)
    return paths


def write_outputs(det, out: Path, stem: str, image: np.ndarray, amap: np.ndarray, score: float) -> None:
    """`<stem>_map.npy` at the image's size, `_map.png` (det.map_image's scale), `_mask.png` (the
    pixel cut) and `_overlay.png` (heat map, predicted outline, score and verdict)."""
    np.save(out / f"{stem}_map.npy", amap)
    det.map_image(amap).save(out / f"{stem}_map.png")
    if det.pixel_threshold is not None:
        Image.fromarray(((amap >= det.pixel_threshold) * 255).astype(np.uint8)).save(out / f"{stem}_mask.png")
    figures.predict_overlay(image, amap, score, det.image_threshold, det.pixel_threshold).save(out / f"{stem}_overlay.png")


def predict_files(det, paths: list[Path], out: Path | None = None, stdout=None, stderr=None) -> tuple[int, int]:
    """Score `paths` with `det`, printing `score<TAB>verdict<TAB>path` per image (to `stdout`, problems
    to `stderr`; the current sys streams by default); (scored, unreadable)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    if out:
        out.mkdir(parents=True, exist_ok=True)
    scored, unreadable = 0, 0
    for start in range(0, len(paths), CHUNK):  # results appear as they come
        batch = []
        for path in paths[start:start + CHUNK]:  # each file read once; a bad one is named and skipped
            try:
                batch.append((path, read_image(path)))
            except DatasetError as err:
                print(f"skipped: {err}", file=stderr)
                unreadable += 1
        if not batch:
            continue
        scores, maps = det.predict([image for _, image in batch], batch_size=CHUNK, map_size="input")
        for (path, image), score, amap in zip(batch, scores, maps):
            if not np.isfinite(score):  # no verdict on it: named and skipped as an unreadable file is
                print(f"skipped: {path}: the model's score is {score}, not a number a verdict can be given on",
                      file=stderr)
                unreadable += 1
                continue
            print(f"{score:.6f}\t{det.verdict(score) or '?'}\t{path}", file=stdout, flush=True)
            if out:  # the index keeps same-named files from different folders apart
                write_outputs(det, out, f"{scored:03d}_{path.stem}", image, amap, score)
            scored += 1
    return scored, unreadable
