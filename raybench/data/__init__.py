"""Datasets: find samples on disk (no pixels read) and validate them before any trial starts."""
from __future__ import annotations

from pathlib import Path

from raybench.data.demo import load_demo
from raybench.data.layout import Category, Sample, set_kinds, validate_category
from raybench.data.mvtec import load_folder, load_mvtec, load_mvtec3d
from raybench.data.visa import load_visa
from raybench.errors import DatasetError

DATASETS = ("demo", "mvtec", "visa", "mvtec3d", "folder")


def load_dataset(name: str, data_root: str | Path | None = None, categories=None,
                 kinds: dict[str, str] | None = None) -> list[Category]:
    """Categories of a dataset. `demo` needs no data_root (it is generated on first use).
    `kinds` (category -> "object" | "texture") overrides the guess from MVTec AD's texture names."""
    if name == "demo":
        return set_kinds(load_demo(Path(data_root) if data_root else None, categories), kinds)
    if name not in DATASETS:
        raise DatasetError(name, f"unknown dataset; choose one of {DATASETS}")
    if not data_root:
        raise DatasetError(name, "this dataset needs --data-root")
    root = Path(data_root).expanduser().resolve()
    loader = {"mvtec": load_mvtec, "visa": load_visa, "mvtec3d": load_mvtec3d, "folder": load_folder}[name]
    return set_kinds(loader(root, categories), kinds)


__all__ = ["Category", "Sample", "DATASETS", "load_dataset", "validate_category"]
