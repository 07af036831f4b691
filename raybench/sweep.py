"""Ray Tune around `method.fit`: one Optuna study per category, trials on Ray, results to MLflow.

Data flows one way: the driver checks inputs and tracking, Ray runs `run_trial` (fit, evaluate,
save the Detector as the trial's checkpoint), and the driver's `MLflowTrialLogger` turns each
trial into exactly one MLflow run that ends FINISHED or FAILED.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from ray import tune
from ray.tune import Callback
from ray.tune.search import Searcher

from raybench import tracking
from raybench.config import field_types, from_dict, to_dict
from raybench.data import load_dataset, validate_category
from raybench.detector import Detector
from raybench.evaluation import evaluate_scorer
from raybench.methods.base import BUDGETS, get_method
from raybench.models.common import pick_device
from raybench.search_space import SearchSpace, decode_params, load_search_space

METRIC, MODE = "image_auroc", "max"

# Ready-made settings per dataset: the demo runs anywhere with no downloads, so it asks for
# random weights explicitly and uses its native 128 px.
DATASET_PRESETS = {"demo": {"weights": "random", "overrides": {"image_size": 128}, "trials": 4}}


@dataclass
class SweepSpec:
    dataset: str
    data_root: str | None = None
    categories: str | list[str] | None = "all"
    method: str = "patchcore"
    trials: int = 8
    search_space: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 if the Ray cluster has a GPU, else 0
    workers: int = 1
    seed: int = 0
    weights: str | None = None
    budget: str = "default"
    overrides: dict = field(default_factory=dict)  # --set KEY=VALUE: fixed for every trial
    storage: str | None = None
    sweep_id: str | None = None
    resume: bool = False
    asha: bool = False
    max_concurrent: int | None = None
    max_failures: int = 2  # retries of a trial whose node or worker died


@dataclass
class TrialContext:
    """What every trial needs besides its sampled parameters (picklable, no clients)."""
    dataset: str
    data_root: str | None
    method: str
    base: dict  # config values below the sampled ones: preset < budget < fixed
    overrides: dict  # --set values, above the sampled ones
    workers: int
    cpus_per_trial: float
    gpus_per_trial: float
    report_epochs: bool


def build_config(method: str, base: dict, sampled: dict, overrides: dict):
    spec = get_method(method)
    return from_dict(spec.config_cls, {**base, **sampled, **overrides}, method=method)


# ----------------------------------------------------------------------------------------------
# The trial (runs in a Ray worker process)

class EpochReporter:
    """on_epoch hook for ASHA: quick metrics (no AUPRO) after every epoch, `epoch` as the resource."""

    def __init__(self, category, device):
        self.category, self.device, self.epochs = category, device, 0

    def __call__(self, epoch: int, scorer, excluded_test=()) -> None:
        self.epochs = epoch + 1
        metrics = evaluate_scorer(scorer, self.category, self.device, excluded_test, with_aupro=False)
        tune.report({**metrics, "epoch": self.epochs})


def fit_and_evaluate(ctx: TrialContext, config, category, device, on_epoch=None,
                     evaluate: bool = True) -> tuple[dict, Detector]:
    from raybench.methods.base import Parallel
    spec = get_method(ctx.method)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    result = spec.fit(config, category, device, on_epoch=on_epoch)
    fit_seconds = time.perf_counter() - start
    metrics = evaluate_scorer(result.scorer, category, device, result.excluded_test) if evaluate else {}
    metrics.update(fit_seconds=fit_seconds, workers=Parallel.world_size())
    meta = {"dataset": ctx.dataset, "category": category.name, "excluded_test": result.excluded_test,
            "eval_resolution": result.scorer.image_size, "info": result.info}
    return metrics, Detector(spec.name, config, result.scorer, meta)


RESULT_FILE, DETECTOR_DIR = "result.json", "detector"


def _report_with_checkpoint(metrics: dict, detector: Detector, config) -> None:
    """The final report: metrics plus a checkpoint holding the Detector and those same metrics,
    so a trial restored from it (after a driver or node died) reports again without refitting."""
    final = {**metrics, "raybench_config": json.dumps(to_dict(config)), "final": 1}
    with tempfile.TemporaryDirectory(prefix="raybench-ckpt-") as tmp:
        detector.save(Path(tmp) / DETECTOR_DIR)
        (Path(tmp) / RESULT_FILE).write_text(json.dumps(final))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))


def _finished_result() -> dict | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = Path(folder) / RESULT_FILE
        return json.loads(path.read_text()) if path.is_file() else None


def _quiet_ray_logs() -> None:
    """Progress is one line per finished trial (MLflowTrialLogger); Ray's per-checkpoint INFO
    lines and snapshot warnings would bury it."""
    import logging
    for name in ("ray.train", "ray.tune", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_trial(params: dict, ctx: TrialContext) -> None:
    _quiet_ray_logs()
    done = _finished_result()
    if done is not None:  # restored after its final checkpoint was saved: nothing to redo
        tune.report(done)
        return
    params = dict(params)
    category_name = params.pop("category")
    config = build_config(ctx.method, ctx.base, decode_params(params), ctx.overrides)
    (category,) = load_dataset(ctx.dataset, ctx.data_root, [category_name])
    if ctx.workers > 1:
        metrics, detector = _fit_distributed(ctx, config, category_name)
    else:
        torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
        device = pick_device()
        reporter = EpochReporter(category, device) if ctx.report_epochs else None
        metrics, detector = fit_and_evaluate(ctx, config, category, device, reporter)
        if reporter is not None:  # the final metrics land on the last epoch's step, after it
            metrics["epoch"] = reporter.epochs
    _report_with_checkpoint(metrics, detector, config)


def _train_worker(loop_config: dict) -> None:
    """One Ray Train worker: the process group is up; the method's `Parallel` shards and wraps.
    Every rank trains; rank 0 alone evaluates and saves the Detector."""
    import ray.train
    ctx, config, category_name = loop_config["ctx"], loop_config["config"], loop_config["category"]
    (category,) = load_dataset(ctx.dataset, ctx.data_root, [category_name])
    device = ray.train.torch.get_device()
    rank0 = ray.train.get_context().get_world_rank() == 0
    metrics, detector = fit_and_evaluate(ctx, config, category, device, evaluate=rank0)
    if rank0:
        with tempfile.TemporaryDirectory() as tmp:
            detector.save(tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({})


def _fit_distributed(ctx: TrialContext, config, category_name: str) -> tuple[dict, Detector]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    use_gpu = ctx.gpus_per_trial > 0
    per_worker = {"CPU": max(ctx.cpus_per_trial / ctx.workers, 0.25)}
    if use_gpu:
        per_worker["GPU"] = ctx.gpus_per_trial / ctx.workers
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"ctx": ctx, "config": config, "category": category_name},
        scaling_config=ScalingConfig(num_workers=ctx.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=f"ddp-{uuid.uuid4().hex[:8]}", storage_path=tempfile.mkdtemp(prefix="raybench-ddp-")),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:  # rank 0 saved the Detector there
        detector = Detector.load(folder, device="cpu")
    return dict(result.metrics), detector


# ----------------------------------------------------------------------------------------------
# One Optuna study per category, multiplexed into one Tune search so categories run concurrently

class PerCategorySearch(Searcher):
    def __init__(self, categories: list[str], space: SearchSpace, trials_per_category: int, seed: int,
                 metric: str = METRIC, mode: str = MODE):
        super().__init__(metric=metric, mode=mode)
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch
        self.categories = list(categories)
        self.remaining = {c: trials_per_category for c in self.categories}
        self.owner: dict[str, str] = {}
        self.studies = {}
        for i, c in enumerate(self.categories):
            if space.distributions:
                sampler = TPESampler(seed=seed + i, n_startup_trials=min(10, max(2, trials_per_category // 2)))
                self.studies[c] = OptunaSearch(space=dict(space.distributions), metric=metric, mode=mode,
                                               sampler=sampler)
            else:
                self.studies[c] = None  # nothing to sample: every trial runs the fixed config
        self._next = 0

    def suggest(self, trial_id: str):
        if not any(self.remaining.values()):
            return Searcher.FINISHED
        for step in range(len(self.categories)):  # round robin, so every category starts early
            c = self.categories[(self._next + step) % len(self.categories)]
            if self.remaining[c] <= 0:
                continue
            study = self.studies[c]
            sampled = study.suggest(trial_id) if study is not None else {}
            if sampled is None:
                continue
            self.remaining[c] -= 1
            self.owner[trial_id] = c
            self._next = (self._next + step + 1) % len(self.categories)
            return {**sampled, "category": c}
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        study = self.studies.get(self.owner.get(trial_id))
        if study is not None and self.metric in result:
            study.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        study = self.studies.get(self.owner.get(trial_id))
        if study is None:
            return
        if result is not None and not isinstance(result.get(self.metric), (int, float)):
            result = None
        study.on_trial_complete(trial_id, result, error=error or result is None)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__.copy(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


# ----------------------------------------------------------------------------------------------
# MLflow: one run per trial, written by the driver only

class MLflowTrialLogger(Callback):
    def __init__(self, uri: str, experiment_id: str, tags: dict, total: int):
        self.uri, self.experiment_id, self.tags, self.total = uri, experiment_id, dict(tags), total
        self._client = None
        self._runs: dict[str, str] = {}
        self._params_logged: set[str] = set()
        self._already_finished: set[str] = set()  # trials a resumed sweep finds FINISHED: left as they are
        self.completed = 0

    def __getstate__(self):  # Tune pickles callbacks with the experiment state
        state = self.__dict__.copy()
        # a restored logger finds its runs again by tags (see _run_id), never by stale ids
        state.update(_client=None, _runs={}, _params_logged=set(), _already_finished=set())
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = tracking.client(self.uri)
        return self._client

    def _run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        # a resumed sweep continues the run it started before (never a second run per trial)
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.sweep_id = '{self.tags['sweep_id']}' and tags.trial_id = '{trial.trial_id}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status == "FINISHED":
                self._already_finished.add(trial.trial_id)
            elif found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            category = trial.config.get("category", "?")
            tags = {**self.tags, "category": category, "trial_id": trial.trial_id,
                    "mlflow.runName": f"{category}-{self.tags['method']}-{trial.trial_id}"}
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        self._runs[trial.trial_id] = run_id
        return run_id

    def _log_params(self, run_id: str, result: dict) -> None:
        if run_id in self._params_logged or "raybench_config" not in result:
            return
        from mlflow.entities import Param
        config = json.loads(result["raybench_config"])
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in config.items()]
        try:
            self.client.log_batch(run_id, params=params)
        except Exception:
            pass  # already logged by an earlier (interrupted) attempt of this trial
        self._params_logged.add(run_id)

    def _log_metrics(self, run_id: str, result: dict) -> None:
        from mlflow.entities import Metric
        step = int(result.get("epoch", 0))
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if k in tracking.METRICS + ("fit_seconds", "inference_seconds", "inference_images_per_second",
                                               "n_test_scored", "epoch", "workers")
                   and isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run_id(trial)
        if trial.trial_id in self._already_finished:
            return
        self._log_params(run_id, result)
        self._log_metrics(run_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        result = trial.last_result or {}
        self.completed += 1
        if trial.trial_id in self._already_finished:
            print(f"[{self.completed}/{self.total}] {trial.config.get('category')}: finished before the resume",
                  flush=True)
            return
        checkpoint = trial.checkpoint
        if checkpoint is not None and result.get("final"):
            with checkpoint.as_directory() as folder:
                self.client.log_artifacts(run_id, str(Path(folder) / DETECTOR_DIR), "detector")
            self.client.set_tag(run_id, "checkpoint", "yes")
        else:
            self.client.set_tag(run_id, "checkpoint", "no")
            self.client.set_tag(run_id, "stopped_early", "yes")
        self.client.set_terminated(run_id, "FINISHED")
        print(f"[{self.completed}/{self.total}] {trial.config.get('category')} {self.tags['method']}: "
              f"image AUROC {result.get('image_auroc', float('nan')):.4f}, "
              f"pixel AUROC {result.get('pixel_auroc', float('nan')):.4f}, "
              f"fit {result.get('fit_seconds', float('nan')):.1f} s", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        message = _trial_error_text(trial)
        self.client.set_tag(run_id, "error", message[:5000])
        self.client.set_terminated(run_id, "FAILED")
        self.completed += 1
        print(f"[{self.completed}/{self.total}] {trial.config.get('category')} FAILED: "
              f"{message.strip().splitlines()[-1] if message.strip() else '?'}", flush=True)

    def on_experiment_end(self, trials, **info):
        for trial in trials:  # a trial that never finished must not stay RUNNING
            run_id = self._runs.get(trial.trial_id)
            if run_id and self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "FAILED")


def _trial_error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        return Path(path).read_text(errors="replace")
    return str(getattr(trial, "error_msg", "") or "trial failed")


def close_interrupted_runs(uri: str, experiment_id: str, sweep_id: str) -> int:
    """Runs left RUNNING by a killed driver: mark them FAILED unless the resumed sweep picks them
    up again (it reopens a trial's own run by its trial_id)."""
    c = tracking.client(uri)
    runs = c.search_runs([experiment_id], f"tags.sweep_id = '{sweep_id}' and attributes.status = 'RUNNING'")
    for run in runs:
        c.set_terminated(run.info.run_id, "FAILED")
    return len(runs)


# ----------------------------------------------------------------------------------------------
# The driver

def resolve_base_config(spec: SweepSpec, space: SearchSpace) -> dict:
    method = get_method(spec.method)
    if spec.budget not in BUDGETS:
        raise ValueError(f"unknown budget {spec.budget!r}; choose one of {BUDGETS}")
    preset = DATASET_PRESETS.get(spec.dataset, {})
    # precedence (low -> high): config defaults, dataset preset, budget, search-space fixed,
    # sampled values, --set
    base = {**preset.get("overrides", {}), **method.budgets.get(spec.budget, {}), **space.fixed}
    weights = spec.weights or preset.get("weights")
    if weights:
        base["weights"] = weights
    base["seed"] = spec.seed
    types = field_types(method.config_cls)
    return {k: v for k, v in base.items() if k in types}


def storage_root(spec: SweepSpec) -> str:
    root = spec.storage or os.environ.get("RAYBENCH_STORAGE") or os.path.join(os.getcwd(), ".raybench", "ray_results")
    if "://" not in root:
        root = os.path.abspath(os.path.expanduser(root))
    return root


def check_storage(root: str) -> None:
    """Refuse to start when checkpoints could not be written."""
    from raybench.errors import TrackingError
    try:
        if "://" in root:
            import pyarrow.fs
            fs, path = pyarrow.fs.FileSystem.from_uri(root)
            probe = f"{path.rstrip('/')}/.raybench-write-test-{uuid.uuid4().hex[:8]}"
            with fs.open_output_stream(probe) as fh:
                fh.write(b"ok")
            fs.delete_file(probe)
        else:
            Path(root).mkdir(parents=True, exist_ok=True)
            probe = Path(root) / f".raybench-write-test-{uuid.uuid4().hex[:8]}"
            probe.write_text("ok")
            probe.unlink()
    except Exception as err:
        raise TrackingError(f"storage {root} cannot be written ({type(err).__name__}: {str(err)[:200]}); "
                            f"pass --storage PATH_OR_URI (shared storage such as s3:// on a cluster)") from None


def _latest_file(root: str, dataset: str, method: str) -> Path | None:
    return Path(root) / f"latest-{dataset}-{method}.json" if "://" not in root else None


def run_sweep(spec: SweepSpec, log=print) -> list:
    """Run a sweep to completion; return the leaderboard rows of this dataset."""
    import optuna
    import ray
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    method = get_method(spec.method)
    space = load_search_space(spec.method, spec.search_space)
    overrides = {}
    if spec.overrides:
        overrides = from_dict(method.config_cls, {**spec.overrides}, method=spec.method).__dict__
        overrides = {k: v for k, v in overrides.items() if k in spec.overrides}
        space = space.without(overrides)
    base = resolve_base_config(spec, space)
    first_config = from_dict(method.config_cls, {**base, **overrides}, method=spec.method)  # fails early

    categories = load_dataset(spec.dataset, spec.data_root, spec.categories)
    for cat in categories:  # every file opened once: a bad one stops us here, named
        validate_category(cat)
        log(f"data: {cat.summary()}")
    if first_config.weights == "random":
        log("weights: RANDOM initialisation (asked for" + (" by the demo preset" if not spec.weights else "") + ")")
    else:  # fetch (or read) the weights once here, so a missing hub or file fails before any trial
        method.build(first_config)

    uri = tracking.tracking_uri(spec.tracking_uri)
    tracking.check_tracking(uri)
    root = storage_root(spec)
    check_storage(root)
    exp_name = tracking.experiment_name(spec.dataset, spec.experiment)
    experiment_id = tracking.ensure_experiment(uri, exp_name)

    latest = _latest_file(root, spec.dataset, spec.method)
    sweep_id = spec.sweep_id
    if spec.resume and not sweep_id:
        if latest is None or not latest.is_file():
            raise ValueError(f"--resume: no earlier sweep of {spec.dataset}/{spec.method} under {root}; pass --sweep-id")
        sweep_id = json.loads(latest.read_text())["sweep_id"]
    sweep_id = sweep_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_name = f"{spec.dataset}-{spec.method.replace('-', '_')}-{sweep_id}"
    if latest is not None:
        latest.write_text(json.dumps({"sweep_id": sweep_id, "spec": asdict(spec)}, default=str))

    if not ray.is_initialized():
        ray.init(address=spec.address, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
    names = [c.name for c in categories]
    total = spec.trials * len(names)
    gpus = spec.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    ctx = TrialContext(spec.dataset, spec.data_root, spec.method, base, overrides, spec.workers,
                       spec.cpus_per_trial, gpus, report_epochs=spec.asha and method.trained)
    if spec.workers > 1:
        resources = {"cpu": 0.1}  # the trial only drives a TorchTrainer; its workers hold the devices
    else:
        resources = {"cpu": spec.cpus_per_trial, "gpu": gpus}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    tags = {"dataset": spec.dataset, "method": spec.method, "sweep_id": sweep_id, "budget": spec.budget,
            "git_commit": tracking.git_commit(), "raybench": "1"}
    logger = MLflowTrialLogger(uri, experiment_id, tags, total)
    log(f"sweep {sweep_id}: {spec.method} on {spec.dataset} [{', '.join(names)}], {spec.trials} trial(s) each, "
        f"{spec.cpus_per_trial:g} CPU + {gpus:g} GPU per trial{f' x {spec.workers} workers' if spec.workers > 1 else ''}; "
        f"MLflow {uri} experiment {exp_name!r}")

    path = f"{root.rstrip('/')}/{run_name}"
    if spec.resume and tune.Tuner.can_restore(path):
        n = close_interrupted_runs(uri, experiment_id, sweep_id)
        log(f"resuming {path} ({n} interrupted run(s) closed as FAILED until their trial reruns)")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=True)
    else:
        scheduler = None
        if spec.asha and method.trained:
            from ray.tune.schedulers import ASHAScheduler
            scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode=MODE, grace_period=1,
                                      max_t=10_000)
        searcher = PerCategorySearch(names, space, spec.trials, spec.seed)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=total,
                                        max_concurrent_trials=spec.max_concurrent),
            run_config=tune.RunConfig(
                name=run_name, storage_path=root, callbacks=[logger], verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    random.seed(spec.seed)
    _quiet_ray_logs()
    tuner.fit()
    return tracking.leaderboard(uri, experiment=exp_name)
