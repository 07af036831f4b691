"""The chosen runs' pictures on TEST, drawn after the choice is made (nothing steers after that):
the run's Detector from MLflow, its recorded test split rebuilt (the hash must match, as in
`Detector.evaluate`), scored once, and the overlays, curves and histogram drawn with `split="test"`.
A trial draws the same three on validation, where the chosen run is at its best by construction."""
from __future__ import annotations

import tempfile
from pathlib import Path

from raybench.reporting import figures


def test_pictures(uri: str, run, data_root=None) -> dict[str, bytes]:
    """name -> PNG bytes of the run's test overlays, curves and histogram (raises what
    loading the detector or the data raises: the caller says why a run has none)."""
    import torch

    from raybench import tracking
    from raybench.data import load_dataset
    from raybench.detector import Detector
    from raybench.errors import DatasetError
    from raybench.evaluation.scoring import evaluate_scorer
    from raybench.evaluation.splits import make_split
    with tempfile.TemporaryDirectory(prefix="raybench-test-pictures-") as tmp:
        det = Detector.load(tracking.download_detector(run, uri, tmp), device="cpu")
        recorded = det.meta.get("split") or {}
        if not recorded:
            raise ValueError("the run records no validation/test split")
        (cat,) = load_dataset(det.meta["dataset"], data_root, [det.meta["category"]])
        split = make_split(cat, recorded["val_mode"], recorded["val_split"], recorded["split_seed"])
        if split.test_split_hash != recorded["test_split_hash"]:
            raise DatasetError(cat.root / cat.name, "the test split rebuilt here is not the one the run was scored on")
        predictions: dict = {}
        with torch.no_grad():
            evaluate_scorer(det.scorer, split.test_view(), det.device, predictions=predictions)
        p = predictions
        title = f"{det.meta['category']} {det.method}"
        paths = figures.render_trial(Path(tmp) / "test", p["images"], p["masks"], p["labels"], p["scores"],
                                     p["maps"], det.image_threshold, det.pixel_threshold, title=title, split="test")
        return {path.name: path.read_bytes() for path in paths}
