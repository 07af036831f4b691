"""MVTec AD, MVTec 3D-AD (RGB images only) and any folder in the MVTec AD layout."""
from __future__ import annotations

from pathlib import Path

from raybench.data.layout import Category, scan_mvtec_category, select_categories
from raybench.errors import DatasetError

MVTEC_AD = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
            "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper"]
MVTEC_3D = ["bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato",
            "rope", "tire"]


def _present(root: Path, names: list[str] | None = None) -> list[str]:
    if not root.is_dir():
        raise DatasetError(root, "data root not found (pass --data-root)")
    found = sorted(d.name for d in root.iterdir() if (d / "train").is_dir())
    return [n for n in names if n in found] if names else found


def _single_category_root(root: Path) -> tuple[Path, list[str]] | None:
    """A folder that is itself one category (has train/ and test/) is accepted as such."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root.parent, [root.name]
    return None


def load_mvtec(root: Path, categories=None) -> list[Category]:
    names = select_categories(_present(root, MVTEC_AD) or _present(root), categories, root)
    return [scan_mvtec_category("mvtec", root, n) for n in names]


def load_mvtec3d(root: Path, categories=None) -> list[Category]:
    names = select_categories(_present(root, MVTEC_3D) or _present(root), categories, root)
    # 3D-AD nests rgb/ (and xyz/, ignored) in each split folder; masks are test/<type>/gt/<stem>.png
    return [scan_mvtec_category("mvtec3d", root, n, image_subdir="rgb", mask_root="",
                                mask_subdir="gt") for n in names]


def load_folder(root: Path, categories=None, dataset: str = "folder") -> list[Category]:
    single = _single_category_root(root)
    if single is not None:
        parent, names = single
        select_categories(names, categories, root)
        return [scan_mvtec_category(dataset, parent, names[0])]
    names = select_categories(_present(root), categories, root)
    return [scan_mvtec_category(dataset, root, n) for n in names]
