"""VisA: images under <category>/Data/Images, split given by split_csv/1cls.csv.

The CSV's columns are object, split (train|test), label (normal|anomaly), image, mask; paths are
relative to the data root. VisA masks mark defects with non-zero values (not only 255).
"""
from __future__ import annotations

import csv
from pathlib import Path

from raybench.data.layout import GOOD, Category, Sample, select_categories
from raybench.errors import DatasetError

SPLIT_CSV = Path("split_csv") / "1cls.csv"


def load_visa(root: Path, categories=None) -> list[Category]:
    csv_path = root / SPLIT_CSV
    if not csv_path.is_file():
        raise DatasetError(csv_path, "VisA split file not found (expected split_csv/1cls.csv under --data-root)")
    rows: dict[str, list[dict]] = {}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"object", "split", "label", "image", "mask"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DatasetError(csv_path, f"expected columns {sorted(need)}, found {reader.fieldnames}")
        for row in reader:
            rows.setdefault(row["object"], []).append(row)
    names = select_categories(sorted(rows), categories, root)
    out = []
    for name in names:
        train, test = [], []
        for row in rows[name]:
            img = root / row["image"]
            if not img.is_file():
                raise DatasetError(img, "image listed in split_csv/1cls.csv not found")
            anomalous = row["label"].strip().lower() == "anomaly"
            mask = root / row["mask"] if anomalous and row["mask"] else None
            if anomalous and (mask is None or not mask.is_file()):
                raise DatasetError(img, f"anomalous image has no mask (looked for {mask})")
            sample = Sample(img, int(anomalous), "anomaly" if anomalous else GOOD, mask)
            if row["split"].strip().lower() == "train":
                if anomalous:
                    raise DatasetError(csv_path, f"{img}: anomalous image in the train split")
                train.append(sample)
            else:
                test.append(sample)
        if not train or not test:
            raise DatasetError(csv_path, f"category {name!r} has an empty train or test split")
        out.append(Category("visa", name, root, train, test, "object"))
    return out
