"""The sweep's driver: check every input, then let Ray Tune run the trials (raybench.trial) with
one Optuna study per category (raybench.category_search) while MLflow records every trial
(raybench.run_logger).

Data flows one way: the driver checks inputs and tracking, Ray runs `run_trial` (fit, evaluate,
save the Detector as the trial's checkpoint), and the driver's `MLflowTrialLogger` turns each
trial into exactly one MLflow run that ends FINISHED or FAILED.
"""
from __future__ import annotations

import json
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field

from ray import tune

from raybench import tracking
from raybench.category_search import METRIC, MODE, PerCategorySearch
from raybench.config import field_types, from_dict
from raybench.data import load_dataset, validate_category
from raybench.methods.base import BUDGETS, get_method
from raybench.models.weights import describe as describe_weights
from raybench.run_logger import MLflowTrialLogger, close_interrupted_runs
from raybench.search_space import SearchSpace, load_search_space
from raybench.trial import TrialContext, build_config, quiet_ray_logs, run_trial

__all__ = ["SweepSpec", "run_sweep", "build_config", "DATASET_PRESETS"]

# the demo runs on real ImageNet features with no hub: tf_efficientnet_lite0 from the installed
# package (raybench[weights]), for the saliency net of cutswap too
DATASET_PRESETS = {"demo": {"weights": "imagenet", "trials": 4,
                            "overrides": {"image_size": 128, "backbone": "tf_efficientnet_lite0",
                                          "saliency_net": "tf_efficientnet_lite0"}}}


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


def _storage_fs(root: str):
    """(pyarrow filesystem, path) for a local folder or a URI such as s3://bucket/prefix."""
    import pyarrow.fs
    if "://" in root:
        fs, path = pyarrow.fs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    return pyarrow.fs.LocalFileSystem(), root


def check_storage(root: str) -> None:
    """Refuse to start when checkpoints could not be written."""
    from raybench.errors import TrackingError
    try:
        fs, path = _storage_fs(root)
        if fs.type_name == "local":  # object stores have no folders (s3://bucket would mean CreateBucket)
            fs.create_dir(path, recursive=True)
        probe = f"{path}/.raybench-write-test-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(probe) as fh:
            fh.write(b"ok")
        fs.delete_file(probe)
    except Exception as err:
        raise TrackingError(f"storage {root} cannot be written ({type(err).__name__}: {str(err)[:200]}); "
                            f"pass --storage PATH_OR_URI (shared storage such as s3:// on a cluster)") from None


# `--resume` without `--sweep-id` continues the last sweep of this dataset and method, named in a
# small pointer file beside the sweeps, on the same (possibly remote) storage as Ray Tune's state.
def _latest_pointer(root: str, dataset: str, method: str):
    fs, base = _storage_fs(root)
    return fs, f"{base}/latest-{dataset}-{method}.json"


def read_latest_sweep_id(root: str, dataset: str, method: str) -> str | None:
    import pyarrow.fs
    fs, path = _latest_pointer(root, dataset, method)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read().decode())["sweep_id"]


def write_latest_sweep_id(root: str, spec: "SweepSpec", sweep_id: str) -> None:
    fs, path = _latest_pointer(root, spec.dataset, spec.method)
    with fs.open_output_stream(path) as fh:
        fh.write(json.dumps({"sweep_id": sweep_id, "spec": asdict(spec)}, default=str).encode())


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
    log(f"weights: {describe_weights(first_config.backbone, first_config.weights)}"
        + (" (the demo preset)" if spec.dataset in DATASET_PRESETS and not spec.weights else ""))
    for line in method.check(first_config):  # fetch (or read) weights once: a bad hub or file fails here
        log(line)

    uri = tracking.tracking_uri(spec.tracking_uri)
    tracking.check_tracking(uri)
    root = storage_root(spec)
    check_storage(root)
    exp_name = tracking.experiment_name(spec.dataset, spec.experiment)
    experiment_id = tracking.ensure_experiment(uri, exp_name)

    sweep_id = spec.sweep_id
    if spec.resume and not sweep_id:
        sweep_id = read_latest_sweep_id(root, spec.dataset, spec.method)
        if sweep_id is None:
            raise ValueError(f"--resume: no earlier sweep of {spec.dataset}/{spec.method} under {root}; pass --sweep-id")
    sweep_id = sweep_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_name = f"{spec.dataset}-{spec.method.replace('-', '_')}-{sweep_id}"
    write_latest_sweep_id(root, spec, sweep_id)

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
    quiet_ray_logs()
    tuner.fit()
    return tracking.leaderboard(uri, experiment=exp_name)
