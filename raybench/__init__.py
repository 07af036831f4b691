"""raybench: the best anomaly-detection model per product category, tuned with Ray Tune + Optuna,
tracked in MLflow."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _package_version

try:  # one source of truth: pyproject.toml, through the installed package's metadata
    __version__ = _package_version("raybench")
except PackageNotFoundError:  # a bare checkout on PYTHONPATH, never installed
    __version__ = "0+unknown"


def best_model(category: str, dataset: str | None = None, method: str | None = None,
               tracking_uri: str | None = None, device: str | None = None, alias: str | None = None):
    """The Detector of the best FINISHED run for `category` by validation (image AUROC on the
    validation split, its pixel AUROC breaks ties; test never ranks), optionally restricted to a
    dataset and/or method. With `alias` (e.g. "champion"), the registered model
    `raybench-<dataset>-<category>@alias` instead."""
    from raybench import tracking
    from raybench.detector import Detector
    if alias:
        from raybench.delivery.registry import load_detector
        if not dataset:
            raise ValueError("best_model(alias=...) needs dataset= (the registered name is raybench-<dataset>-<category>)")
        det = load_detector(dataset, category, tracking_uri, alias, device)
        if method and det.method != method:
            raise LookupError(f"raybench-{dataset}-{category}@{alias} is a {det.method} model, not {method}")
        return det
    best = tracking.chosen_run(tracking_uri, dataset, category, method)
    if best is None:
        where = ", ".join(f"{k}={v}" for k, v in (("dataset", dataset), ("method", method)) if v)
        raise LookupError(f"no finished run with a checkpoint for category {category!r}"
                          f"{' (' + where + ')' if where else ''} in {tracking.tracking_uri(tracking_uri)}")
    import tempfile
    with tempfile.TemporaryDirectory(prefix="raybench-detector-") as tmp:  # loaded into memory, copy removed
        det = Detector.load(tracking.download_detector(best, tracking_uri, dst=tmp), device=device)
    det.meta.update(run_id=best.info.run_id, run_name=best.info.run_name)
    return det


__all__ = ["best_model", "__version__"]
