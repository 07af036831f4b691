"""MLflow Model Registry: each category's best run as a pyfunc model `raybench-<dataset>-<category>`
with the alias `champion`.

"Best" is `tracking.chosen_run`: the run `raybench.best_model` loads. Registering again re-points the alias when a better run has
appeared and adds a version only for a run not registered before; the other versions stay.

The pyfunc model is the run's `detector` checkpoint plus pyfunc_model.py (models from code, no
pickle: it builds `DetectorModel` from this module, so loading needs raybench installed); it is
written into the run as the `pyfunc` artifact, and the version's source points there.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow.pyfunc
import numpy as np

from raybench import tracking

ALIAS = "champion"
PYFUNC_DIR = "pyfunc"


def model_name(dataset: str, category: str) -> str:
    return f"raybench-{dataset}-{category}"


def registry_client(uri: str | None = None):
    from mlflow.tracking import MlflowClient
    uri = tracking.tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _items(model_input) -> list:
    """pyfunc input -> a list of single inputs: a DataFrame (column `image`, else the first), a
    list of encoded bytes / paths / arrays, one image array (H, W[, C]) or a stack (N, H, W, C)."""
    import pandas as pd
    if isinstance(model_input, pd.DataFrame):
        column = "image" if "image" in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    if isinstance(model_input, np.ndarray) and model_input.dtype != object:
        return [model_input] if model_input.ndim <= 3 else list(model_input)
    if isinstance(model_input, (bytes, bytearray, memoryview, str, Path)):
        return [model_input]
    return list(model_input)


def _image(item):
    """One input -> what Detector.predict takes; ValueError (ImageInputError, DatasetError) names
    what cannot be scored: undecodable bytes, an unreadable path, pixels that are not finite."""
    from raybench.data.io import decode_image, read_image
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_image(bytes(item))
    if isinstance(item, (str, Path)):
        return read_image(item)
    arr = np.asarray(item)
    if arr.dtype == object or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 2:
        raise ValueError(f"not an image: an array of shape {arr.shape}, dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{arr.size - int(np.isfinite(arr).sum())} pixel value(s) are not finite (inf or NaN)")
    return item


class DetectorModel(mlflow.pyfunc.PythonModel):
    """predict(images) -> DataFrame, one row per input: score, verdict (anomalous | normal; None
    without a threshold; `error` when it could not be scored), threshold, error (why, else None).
    `self.detector` is the raybench Detector (maps, calibrate, ...)."""

    def load_context(self, context):
        from raybench.detector import Detector
        self.detector = Detector.load(context.artifacts["detector"])

    def predict(self, context, model_input, params=None):  # untyped: MLflow would coerce the input
        """An input that cannot be scored (not a usable image, pixels or a score that are not
        finite) gets score NaN, verdict `error` and its reason, never `normal`; the rest are scored
        as they would be alone."""
        import pandas as pd

        from raybench.errors import RaybenchError
        items = _items(model_input)
        images, errors = [], []
        for item in items:
            try:
                images.append(_image(item))
                errors.append(None)
            except (RaybenchError, ValueError, OSError) as err:
                images.append(None)
                errors.append(str(err))
        ok = [i for i, image in enumerate(images) if image is not None]
        scores = np.full(len(items), np.nan)
        if ok:
            scores[ok] = self.detector.predict([images[i] for i in ok])[0]
        for i, score in enumerate(scores):
            if errors[i] is None and not np.isfinite(score):
                errors[i] = f"the model's score is {score}, not a number a verdict can be given on"
        verdicts = ["error" if error else self.detector.verdict(score) for score, error in zip(scores, errors)]
        return pd.DataFrame({"score": scores, "verdict": verdicts, "threshold": self.detector.image_threshold,
                             "error": errors})


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    method: str
    image_auroc: float  # the run's test figure (reported)
    action: str  # created | re-pointed | unchanged
    val_image_auroc: float = np.nan  # what chose the run

    def __str__(self) -> str:
        return (f"{self.name} v{self.version} @{ALIAS}: run {self.run_id[:8]} ({self.method}, "
                f"image AUROC val {self.val_image_auroc:.4f} / test {self.image_auroc:.4f}) {self.action}")


def _log_pyfunc(client, run, uri: str) -> str:
    """Write the run's detector as a pyfunc model into the run (`pyfunc/`); its artifact URI."""
    with tempfile.TemporaryDirectory(prefix="raybench-pyfunc-") as tmp:
        detector = tracking.download_detector(run, uri, dst=str(Path(tmp) / "download"))
        model_dir = Path(tmp) / PYFUNC_DIR
        mlflow.pyfunc.save_model(str(model_dir), python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                 artifacts={"detector": str(detector)},
                                 pip_requirements=[f"raybench=={package_version('raybench')}"])
        client.log_artifacts(run.info.run_id, str(model_dir), PYFUNC_DIR)
    return f"{run.info.artifact_uri.rstrip('/')}/{PYFUNC_DIR}"


def _versions(client, name: str) -> list:
    """Every version of a registered model; the name may hold a quote (a category such as o'ring):
    MLflow filters have no escape, so it goes in the other kind of quotes, or is compared here."""
    literal = tracking.filter_literal(name)
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = {literal}" if literal else None, page_token=token)
        found += [v for v in page if v.name == name]
        token = page.token
        if not token:
            return found


def register_category(dataset: str, category: str, uri: str | None = None, alias: str = ALIAS,
                      experiment: str | None = None) -> Registration | None:
    """Register the category's best run (a new version only if that run has none) and point
    `alias` at it. None when the category has no finished run with a checkpoint."""
    from mlflow.exceptions import MlflowException
    uri = tracking.tracking_uri(uri)
    run = tracking.chosen_run(uri, dataset, category, experiment=experiment)
    if run is None:
        return None
    client, name = registry_client(uri), model_name(dataset, category)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"dataset": dataset, "category": category},
                                       description=f"raybench: best {dataset}/{category} model by the leaderboard")
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    metrics, method = run.data.metrics, run.data.tags.get("method", "?")
    if current is not None and current.run_id == run.info.run_id:
        return Registration(name, str(current.version), run.info.run_id, method, metrics.get("image_auroc", np.nan),
                            "unchanged", metrics.get("val_image_auroc", np.nan))
    versions = [v for v in _versions(client, name) if v.run_id == run.info.run_id]
    if versions:
        version = versions[0]
    else:
        version = client.create_model_version(
            name, _log_pyfunc(client, run, uri), run_id=run.info.run_id,
            tags={"method": method, "val_image_auroc": str(metrics.get("val_image_auroc")),
                  "image_auroc": str(metrics.get("image_auroc"))})
    client.set_registered_model_alias(name, alias, version.version)
    return Registration(name, str(version.version), run.info.run_id, method,
                        metrics.get("image_auroc", np.nan), "re-pointed" if current is not None else "created",
                        metrics.get("val_image_auroc", np.nan))


def register(dataset: str, categories=None, uri: str | None = None, alias: str = ALIAS,
             experiment: str | None = None) -> list[Registration]:
    """register_category for each of `categories` (default: every category with finished runs)
    of the dataset's experiment (or `experiment`)."""
    if not categories:
        runs = tracking.finished_runs(uri, dataset, experiment=experiment)
        categories = sorted({r.data.tags.get("category") for r in runs} - {None})
    out = [register_category(dataset, c, uri, alias, experiment) for c in categories]
    return [r for r in out if r is not None]


def load_model(dataset: str, category: str, uri: str | None = None, alias: str = ALIAS):
    """The registered pyfunc model (version `alias` of `raybench-<dataset>-<category>`) and its
    ModelVersion. Downloads through the given store: no global MLflow URI is touched."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    uri = tracking.tracking_uri(uri)
    client, name = registry_client(uri), model_name(dataset, category)
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise LookupError(f"no registered model {name}@{alias} in {uri} (run `raybench register {dataset}` "
                          f"after a sweep)") from None
    # read into memory, then the download is removed (each load left ~12 MB in the temp folder)
    with tempfile.TemporaryDirectory(prefix="raybench-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=uri, dst_path=tmp)
        model = mlflow.pyfunc.load_model(local)
    return model, version


def is_registered(dataset: str, category: str, uri: str | None = None, alias: str = ALIAS) -> bool:
    """Whether `raybench-<dataset>-<category>@alias` exists: one registry query, nothing loaded."""
    from mlflow.exceptions import MlflowException
    try:
        registry_client(uri).get_model_version_by_alias(model_name(dataset, category), alias)
    except MlflowException:
        return False
    return True


def load_detector(dataset: str, category: str, uri: str | None = None, alias: str = ALIAS, device=None):
    """The Detector of a registered version; meta gains run_id, model_name and model_version."""
    model, version = load_model(dataset, category, uri, alias)
    det = model.unwrap_python_model().detector
    if device is not None:
        det.to(device)
    det.meta.update(run_id=version.run_id, model_name=version.name, model_version=str(version.version))
    return det
