"""Published image AUROC per category, for the charts: CutSwap paper (papers/002), Tab. II
(MVTec AD) and Tab. IV (VisA), the larger PatchCore coreset setting. Its columns map to raybench's
methods: "CutPaste + PC" -> cutpaste, "ResNet18 + PC" -> patchcore, "CutSwap + PC" -> cutswap.
ImageNet weights and 256 fine-tuning epochs: a reference for full-budget runs, not for the demo."""
from __future__ import annotations

SOURCE = "CutSwap paper, Tab. II / IV"

IMAGE_AUROC = {
    "mvtec": {
        "cutpaste": {"bottle": 1.0, "cable": 0.981, "capsule": 0.916, "carpet": 0.861, "grid": 0.994,
                     "hazelnut": 1.0, "leather": 1.0, "metal_nut": 0.951, "pill": 0.895, "screw": 0.848,
                     "tile": 0.998, "toothbrush": 0.983, "transistor": 0.98, "wood": 0.995, "zipper": 0.998},
        "patchcore": {"bottle": 1.0, "cable": 0.986, "capsule": 0.956, "carpet": 0.987, "grid": 0.949,
                      "hazelnut": 1.0, "leather": 1.0, "metal_nut": 0.991, "pill": 0.948, "screw": 0.949,
                      "tile": 0.987, "toothbrush": 0.989, "transistor": 0.999, "wood": 0.986, "zipper": 0.983},
        "cutswap": {"bottle": 0.999, "cable": 0.995, "capsule": 0.947, "carpet": 0.98, "grid": 0.988,
                    "hazelnut": 0.998, "leather": 1.0, "metal_nut": 0.998, "pill": 0.96, "screw": 0.871,
                    "tile": 0.987, "toothbrush": 1.0, "transistor": 0.998, "wood": 0.997, "zipper": 0.982},
    },
    "visa": {
        "cutpaste": {"candle": 0.909, "capsules": 0.704, "cashew": 0.919, "chewinggum": 0.99, "fryum": 0.932,
                     "macaroni1": 0.831, "macaroni2": 0.712, "pcb1": 0.959, "pcb2": 0.944, "pcb3": 0.929,
                     "pcb4": 0.986, "pipe_fryum": 0.851},
        "patchcore": {"candle": 0.984, "capsules": 0.718, "cashew": 0.935, "chewinggum": 0.983, "fryum": 0.923,
                      "macaroni1": 0.89, "macaroni2": 0.756, "pcb1": 0.939, "pcb2": 0.93, "pcb3": 0.932,
                      "pcb4": 0.991, "pipe_fryum": 0.996},
        "cutswap": {"candle": 0.956, "capsules": 0.732, "cashew": 0.904, "chewinggum": 0.994, "fryum": 0.941,
                    "macaroni1": 0.874, "macaroni2": 0.722, "pcb1": 0.956, "pcb2": 0.924, "pcb3": 0.927,
                    "pcb4": 0.996, "pipe_fryum": 0.926},
    },
}


def reference_image_auroc(dataset: str) -> dict[tuple[str, str], float]:
    """(category, method) -> the paper's image AUROC; empty for datasets the papers did not report."""
    return {(category, method): value
            for method, per in IMAGE_AUROC.get(dataset, {}).items() for category, value in per.items()}
