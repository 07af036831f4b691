"""Datasets as lists of samples, and the MVTec AD folder layout that most of them share.

A dataset loader only finds files and pairs images with masks; it reads no pixels. Pixel reading
(and its errors) lives in `raybench.data.io`; `validate_category` opens every file once so that a
corrupt image or a missing mask stops a sweep before its first trial, naming the path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raybench.data.io import IMAGE_SUFFIXES, check_image
from raybench.errors import DatasetError, unknown_name

GOOD = "good"
# MVTec AD's texture categories; everything else is treated as an object (synthesis stays inside
# the object's foreground for objects).
TEXTURES = {"carpet", "grid", "leather", "tile", "wood"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 anomalous
    defect_type: str
    mask_path: Path | None = None  # None for normal images (all-zero mask)


@dataclass
class Category:
    dataset: str
    name: str
    root: Path
    train: list[Sample]
    test: list[Sample]
    kind: str = "object"  # "object" | "texture"
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        n_bad = sum(s.label for s in self.test)
        return (f"{self.dataset}/{self.name}: {len(self.train)} train, "
                f"{len(self.test) - n_bad} good + {n_bad} anomalous test")


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def find_mask(mask_dir: Path, stem: str) -> Path | None:
    """MVTec names masks <stem>_mask.png; some exports keep the image's stem."""
    for name in (f"{stem}_mask", stem):
        for suffix in (".png", ".bmp", ".tif", ".tiff", ".jpg"):
            candidate = mask_dir / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def scan_mvtec_category(dataset: str, root: Path, name: str, *, image_subdir: str = "",
                        mask_root: str = "ground_truth", mask_subdir: str = "") -> Category:
    """One category in MVTec AD layout: train/good, test/<type>, <mask_root>/<type>/<stem>_mask.png.

    `image_subdir`/`mask_subdir` serve MVTec 3D-AD, which nests `rgb/` and `gt/` inside each type.
    """
    cat_dir = root / name
    if not cat_dir.is_dir():
        raise DatasetError(cat_dir, "category folder not found")
    train_dir = cat_dir / "train" / GOOD / image_subdir
    train = [Sample(p, 0, GOOD) for p in list_images(train_dir)]
    if not train:
        raise DatasetError(train_dir, "no training images (expected train/good/*.png)")
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise DatasetError(test_dir, "test folder not found")
    test: list[Sample] = []
    for type_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        images = list_images(type_dir / image_subdir)
        if type_dir.name == GOOD:
            test += [Sample(p, 0, GOOD) for p in images]
            continue
        for img in images:
            if mask_root:
                mask_dir = cat_dir / mask_root / type_dir.name / mask_subdir
            else:  # masks beside the images (MVTec 3D-AD: test/<type>/gt)
                mask_dir = type_dir / mask_subdir
            mask = find_mask(mask_dir, img.stem)
            if mask is None:
                raise DatasetError(img, f"no mask found in {mask_dir} (expected {img.stem}_mask.png)")
            test.append(Sample(img, 1, type_dir.name, mask))
    if not test:
        raise DatasetError(test_dir, "no test images")
    if not any(s.label == 0 for s in test) or not any(s.label == 1 for s in test):
        raise DatasetError(test_dir, "test set needs both good and anomalous images to score AUROC")
    kind = "texture" if name in TEXTURES else "object"
    return Category(dataset, name, root, train, test, kind)


KINDS = ("object", "texture")


def set_kinds(categories: list[Category], kinds: dict[str, str] | None) -> list[Category]:
    """Apply the user's category kinds (synthesis keeps to an object's foreground, not a texture's)."""
    for name, kind in (kinds or {}).items():
        if kind not in KINDS:
            raise DatasetError(name, f"category kind {kind!r} is not one of {list(KINDS)}")
    for category in categories:
        category.kind = (kinds or {}).get(category.name, category.kind)
    return categories


def validate_category(category: Category) -> None:
    """Open every image and mask once; raise DatasetError naming the first bad file."""
    for sample in category.train + category.test:
        size = check_image(sample.path)
        if sample.mask_path is not None:
            mask_size = check_image(sample.mask_path)
            if mask_size != size:  # resizing both would stretch the mask over the wrong pixels
                raise DatasetError(sample.mask_path, f"mask is {mask_size[0]}x{mask_size[1]} px but its image "
                                                     f"{sample.path.name} is {size[0]}x{size[1]} px")


def select_categories(available: list[str], wanted: str | list[str] | None, root: Path) -> list[str]:
    """`wanted` is None/'all', a comma list, or a list; unknown names are an error naming root."""
    if wanted is None or wanted == "all" or wanted == ["all"]:
        if not available:
            raise DatasetError(root, "no categories found")
        return list(available)
    names = [w.strip() for w in (wanted.split(",") if isinstance(wanted, str) else wanted)]
    if not all(names):
        raise DatasetError(root, f"empty category name in {wanted!r} (a stray comma?); available: {', '.join(available)}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DatasetError(root, "; ".join(unknown_name("category", n, available) for n in unknown))
    return names
