"""A square, downscaled copy of a dataset tree in the MVTec AD layout, for carrying benchmark data to
a machine where the originals are not (the methods resize to a square `image_size` anyway, so a
copy at that size scores the same images).

    python -m raybench.bench.downscale ../shared/data/kolektorsdd /tmp/small/kolektorsdd --size 256

Images are resized with bilinear filtering and kept in their mode (grayscale stays grayscale);
anything under a `ground_truth` or `gt` folder is a mask and is resized nearest-neighbour, so it
stays binary. Other files (SOURCE.md, split CSVs) are copied as they are.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

from raybench.data.io import IMAGE_SUFFIXES

MASK_FOLDERS = {"ground_truth", "gt"}


def downscale_tree(src: Path, dst: Path, size: int) -> int:
    """Copy `src` to `dst` with every image resized to size x size; returns the number of images."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder")
    count = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            shutil.copyfile(path, target)
            continue
        is_mask = bool(MASK_FOLDERS & set(path.relative_to(src).parts[:-1]))
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "RGB", "1"):
                    im = im.convert("L" if is_mask else "RGB")
                resample = Image.NEAREST if is_mask else Image.BILINEAR
                im.resize((size, size), resample).save(target.with_suffix(".png"))
        except OSError as err:
            raise OSError(f"{path}: cannot be read as an image ({err})") from None
        count += 1
    return count


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)
    n = downscale_tree(Path(args.src), Path(args.dst), args.size)
    print(f"{n} images -> {args.dst} at {args.size}x{args.size}")


if __name__ == "__main__":
    main()
