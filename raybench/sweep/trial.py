"""One trial, as Ray runs it: build the config, fit the method, evaluate, report the Detector as
the trial's checkpoint. With `workers > 1` the fit runs under Ray Train (DDP) instead."""
from __future__ import annotations

import json
import math
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from ray import tune

from raybench.sweep.category_search import ERROR_REPORT, METRIC as METRIC_NAME, TPE_FLAGS, TRIAL_KEYS
from raybench.config import to_dict
from raybench.data import load_dataset
from raybench.detector import Detector
from raybench.errors import DatasetError, RaybenchError
from raybench.evaluation.scoring import evaluate_scorer, relative_path
from raybench.evaluation.uncertainty import interval_metrics
from raybench.reporting.figures import FIGURES_DIR
from raybench.methods.base import provenance
from raybench.methods import get_method
from raybench.models.common import pick_device
from raybench.sweep.plan import ConfigPlan
from raybench.tracking.comparison import PREDICTIONS_FILE
from raybench.sweep.search_space import decode_params
from raybench.evaluation.splits import (DEFAULT_VAL_MODE, DEFAULT_VAL_NORMALS, DEFAULT_VAL_SPLIT, Split,
                                       load_validation_set, make_split)
from raybench.tracking.leaderboard import OBJECTIVE, objective


@dataclass
class TrialContext:
    """What every trial needs besides its sampled parameters (picklable, no clients)."""
    dataset: str
    data_root: str | None
    method: str
    plan: ConfigPlan  # the trial's config = plan.config(its sampled values)
    workers: int
    cpus_per_trial: float
    gpus_per_trial: float
    report_epochs: bool
    val_mode: str = DEFAULT_VAL_MODE
    val_split: float = DEFAULT_VAL_SPLIT
    split_seed: int = 0
    test_hashes: dict | None = None  # split_key(category, fold) -> test_split_hash the driver saw (checked in the trial)
    kinds: dict = field(default_factory=dict)  # category -> object | texture, set by the user
    figures: bool = True  # overlay grid, curves, histogram beside the checkpoint (raybench.reporting.figures)
    val_normals: float = DEFAULT_VAL_NORMALS  # share of training normals held out into validation
    few_shot: int = 0  # the few-shot pool's size (the same for every method of the sweep)


def split_key(category: str, fold: str = "") -> str:
    """How the driver's per-split maps are keyed: the category, plus `/fold` in crossfit."""
    return f"{category}/{fold}" if fold else category


def trial_split(ctx: TrialContext, category, fold: str = "") -> Split:
    """The category's split (its crossfit fold), rebuilt from (dataset, category, split seed, protocol);
    it must be the one the driver logged (data changed under a running sweep would otherwise go unnoticed)."""
    split = make_split(category, ctx.val_mode, ctx.val_split, ctx.split_seed, ctx.val_normals, ctx.few_shot,
                       fold or None)
    expected = (ctx.test_hashes or {}).get(split_key(category.name, split.fold))
    if expected and split.test_split_hash != expected:
        raise DatasetError(category.root / category.name, f"test split hash {split.test_split_hash[:12]} differs "
                                                          f"from the sweep's {expected[:12]}: the data changed")
    return split


def validation_metrics(scorer, split: Split, device, excluded=(), full: bool = True, val_set=None,
                       predictions: dict | None = None) -> dict:
    """Metrics on the validation split, named val_*; `predictions` is filled for the figures."""
    val_set = val_set if val_set is not None else load_validation_set(split, scorer.image_size, excluded)
    metrics = evaluate_scorer(scorer, None, device, full=full, test_set=val_set, predictions=predictions)
    val = {f"val_{k}": v for k, v in metrics.items() if not k.startswith(("inference", "n_test"))}
    return val | {"n_val_scored": metrics["n_test_scored"], OBJECTIVE: objective(val)}


class EpochReporter:
    """on_epoch hook for ASHA: quick validation metrics (no AUPRO) after every epoch, `epoch` as the
    resource. Test is never scored here. The validation images are read once and kept."""

    def __init__(self, split: Split, device):
        self.split, self.device, self.epochs = split, device, 0
        self._val_set, self._key = None, None

    def __call__(self, epoch: int, scorer, excluded=()) -> None:
        self.epochs = epoch + 1
        key = (scorer.image_size, tuple(excluded))
        if key != self._key:
            self._val_set, self._key = load_validation_set(self.split, scorer.image_size, excluded), key
        metrics = validation_metrics(scorer, self.split, self.device, full=False, val_set=self._val_set)
        tune.report({**metrics, "epoch": self.epochs})


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _per_image(samples, category, excluded, scored: dict, n_synthetic: int = 0) -> dict:
    """What a later comparison needs of one split: the scored images' paths (relative to the
    category folder; synthetic validation anomalies as `synthetic/<i>`), labels and image scores."""
    excluded = set(excluded)
    paths = [relative_path(s, category) for s in samples if relative_path(s, category) not in excluded]
    labels, scores = scored["labels"], scored["scores"]
    paths += [f"synthetic/{i}" for i in range(n_synthetic)]
    if len(paths) != len(labels):
        raise RuntimeError(f"{category.name}: {len(labels)} images scored but {len(paths)} paths listed")
    return {"paths": paths, "labels": [int(v) for v in labels], "scores": [float(v) for v in scores]}


def fit_and_evaluate(ctx: TrialContext, config, split: Split, device, on_epoch=None, evaluate: bool = True,
                     predictions: dict | None = None, record: dict | None = None) -> tuple[dict, Detector]:
    """Fit on the split's training images (the method sees validation as its only `test`, for
    few-shot anomalies), score validation (what steers) and then test, once (what is reported),
    with test's bootstrap intervals. `record` is filled with each split's per-image predictions
    (`predictions.json`: paired comparisons of runs on the same images)."""
    from raybench.methods.base import Parallel
    spec = get_method(ctx.method)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    result = spec.fit(config, split.fit_view(), device, on_epoch=on_epoch)
    fit_seconds = time.perf_counter() - start
    metrics = {}
    if evaluate:
        val_scored = predictions if predictions is not None else {}
        val = validation_metrics(result.scorer, split, device, result.excluded_test, predictions=val_scored)
        scored = {}
        test = evaluate_scorer(result.scorer, split.test_view(), device, predictions=scored)
        test.update(interval_metrics(scored["labels"], scored["scores"], scored["masks"], scored["maps"]))
        if record is not None:
            record.update(test=_per_image(split.test, split.category, (), scored),
                          validation=_per_image(split.validation, split.category, result.excluded_test, val_scored,
                                                split.n_synthetic))
        # the verdict cuts are validation's F1-max cuts; test's own cuts would leak test into the Detector
        test.update(image_threshold=val.pop("val_image_threshold"), pixel_threshold=val.pop("val_pixel_threshold"))
        metrics = {**val, **test}
    metrics.update(fit_seconds=fit_seconds, workers=Parallel.world_size(), eval_resolution=result.scorer.image_size)
    meta = {"dataset": ctx.dataset, "category": split.category.name, "split": split.meta(),
            # real validation images trained on (few-shot): left out of validation scoring
            "excluded_validation": result.excluded_test,
            "eval_resolution": result.scorer.image_size, "info": result.info,
            "provenance": provenance(config, result.scorer),  # weights source, input normalisation
            "image_threshold": _finite(metrics.get("image_threshold")),
            "pixel_threshold": _finite(metrics.get("pixel_threshold")),
            "threshold_source": "F1-max on the validation split"}
    return metrics, Detector(spec.name, config, result.scorer, meta)


VERSIONED = ("raybench", "torch", "timm", "ray", "optuna", "mlflow")


def reproducibility_params() -> dict:
    """version_<package> for what a trial's figures depend on, as this process has them, and the
    TPE flags that proposed it (logged as params beside the weights' sha256); a missing package says so."""
    from importlib import metadata
    out = {}
    for name in VERSIONED:  # raybench's own as installed (the source's commit is the git_commit tag)
        try:
            out[f"version_{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"version_{name}"] = "not installed"
    return out | {f"tpe_{k}": v for k, v in TPE_FLAGS.items()}  # the search's sampler (category_search)


RESULT_FILE, DETECTOR_DIR = "result.json", "detector"
# A deterministic error (a bad value, an unusable file) would fail the same way on every retry, so
# the trial reports it as its last result (run FAILED, error tag) instead of raising: Ray's
# retries (FailureConfig) are left for what a retry can fix, a node or worker that died.
DETERMINISTIC_ERRORS = (RaybenchError, ValueError, TypeError)


def _render_figures(folder: Path, predictions: dict, metrics: dict, title: str) -> None:
    from raybench.reporting import figures
    p = predictions
    figures.render_trial(folder, p["images"], p["masks"], p["labels"], p["scores"], p["maps"],
                         metrics.get("image_threshold"), metrics.get("pixel_threshold"), title=title)


def _report_with_checkpoint(metrics: dict, detector: Detector, config, predictions: dict | None = None,
                            record: dict | None = None) -> None:
    """The final report: metrics plus a checkpoint holding the Detector and those same metrics,
    so a trial restored from it (after a driver or node died) reports again without refitting;
    with `predictions` (the validation split's), the figures too; with `record`, predictions.json
    (the driver logs both to MLflow)."""
    final = {**metrics, "raybench_config": json.dumps(to_dict(config)), "final": 1,
             "raybench_provenance": json.dumps({**detector.meta.get("provenance", {}), **reproducibility_params()}),
             "variant": get_method(detector.method).variant(config)}
    with tempfile.TemporaryDirectory(prefix="raybench-ckpt-") as tmp:
        detector.save(Path(tmp) / DETECTOR_DIR)
        if predictions:
            _render_figures(Path(tmp) / FIGURES_DIR, predictions, metrics,
                            f"{detector.meta['category']} {detector.method} (validation split)")
        if record:
            (Path(tmp) / PREDICTIONS_FILE).write_text(json.dumps(record))
        (Path(tmp) / RESULT_FILE).write_text(json.dumps(final))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))


def _finished_result() -> dict | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / RESULT_FILE
        return json.loads(path.read_text()) if path.is_file() else None


def quiet_ray_logs() -> None:
    """Progress is one line per finished trial (MLflowTrialLogger); Ray's per-checkpoint INFO
    lines and snapshot warnings would bury it."""
    import logging
    for name in ("ray.train", "ray.tune", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_trial(params: dict, ctx: TrialContext) -> None:
    quiet_ray_logs()
    done = _finished_result()
    if done is not None:  # restored after its final checkpoint was saved: nothing to redo
        tune.report(done)
        return
    try:
        _fit_trial(params, ctx)
    except DETERMINISTIC_ERRORS:
        import traceback
        tune.report({METRIC_NAME: float("nan"), ERROR_REPORT: traceback.format_exc()})


def _fit_trial(params: dict, ctx: TrialContext) -> None:
    params = dict(params)
    category_name, fold = params.pop("category"), params.get("fold") or ""
    for key in TRIAL_KEYS:  # what the searcher added besides the sampled values
        params.pop(key, None)
    config = ctx.plan.config(decode_params(params))
    predictions = {} if ctx.figures and ctx.workers <= 1 else None  # DDP trials: no figures yet
    record = {}
    if ctx.workers > 1:  # each Ray Train worker loads the category itself
        metrics, detector, record = _fit_distributed(ctx, config, category_name, fold)
    else:
        (category,) = load_dataset(ctx.dataset, ctx.data_root, [category_name], ctx.kinds)
        split = trial_split(ctx, category, fold)
        torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
        device = pick_device()
        reporter = EpochReporter(split, device) if ctx.report_epochs else None
        metrics, detector = fit_and_evaluate(ctx, config, split, device, reporter, predictions=predictions,
                                             record=record)
        if reporter is not None:  # the final metrics land on the last epoch's step, after it
            metrics["epoch"] = reporter.epochs
    _report_with_checkpoint(metrics, detector, config, predictions, record)


def _train_worker(loop_config: dict) -> None:
    """One Ray Train worker: the process group is up; the method's `Parallel` shards and wraps.
    Every rank trains; rank 0 alone evaluates and saves the Detector."""
    import ray.train
    ctx, config, category_name = loop_config["ctx"], loop_config["config"], loop_config["category"]
    fold = loop_config.get("fold", "")
    (category,) = load_dataset(ctx.dataset, ctx.data_root, [category_name], ctx.kinds)
    device = ray.train.torch.get_device()
    rank0 = ray.train.get_context().get_world_rank() == 0
    record = {}
    metrics, detector = fit_and_evaluate(ctx, config, trial_split(ctx, category, fold), device, evaluate=rank0,
                                         record=record)
    if rank0:
        with tempfile.TemporaryDirectory() as tmp:
            detector.save(tmp)
            (Path(tmp) / PREDICTIONS_FILE).write_text(json.dumps(record))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({})


def _fit_distributed(ctx: TrialContext, config, category_name: str, fold: str = "") -> tuple[dict, Detector, dict]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    use_gpu = ctx.gpus_per_trial > 0
    per_worker = {"CPU": max(ctx.cpus_per_trial / ctx.workers, 0.25)}
    if use_gpu:
        per_worker["GPU"] = ctx.gpus_per_trial / ctx.workers
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"ctx": ctx, "config": config, "category": category_name, "fold": fold},
        scaling_config=ScalingConfig(num_workers=ctx.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"ddp-{uuid.uuid4().hex[:8]}", **_ddp_storage()),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:  # rank 0 saved the Detector there
        detector = Detector.load(folder, device="cpu")
        record = json.loads((Path(folder) / PREDICTIONS_FILE).read_text())
    _remove_run(result)  # the Detector goes on in the trial's own checkpoint
    return dict(result.metrics), detector, record


def _ddp_storage() -> dict:
    """RunConfig storage for the Ray Train run: a `ddp` folder in this trial's folder on the
    sweep's storage (--storage; S3 on a cluster), which this process reads wherever rank 0 ran.
    A local temporary folder would be on rank 0's node, unreadable here when that is another node."""
    try:
        storage = tune.get_context().get_storage()
        path = f"{storage.trial_fs_path}/ddp"
    except Exception:  # not inside a Tune trial (a direct call): nothing to share
        return {"storage_path": tempfile.mkdtemp(prefix="raybench-ddp-")}
    return {"storage_path": path, "storage_filesystem": storage.storage_filesystem}


def _remove_run(result) -> None:
    try:
        result.filesystem.delete_dir(result.path)
    except Exception:
        pass  # leftover weights are only a cost, never wrong
