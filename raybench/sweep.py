"""The sweep's driver: check every input, then let Ray Tune run the trials (raybench.trial) with
one Optuna study per category (raybench.category_search) while MLflow records every trial
(raybench.run_logger).

Data flows one way: the driver checks inputs and tracking, Ray runs `run_trial` (fit, evaluate,
save the Detector as the trial's checkpoint), and the driver's `MLflowTrialLogger` turns each
trial into exactly one MLflow run that ends FINISHED or FAILED.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shlex
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ray import tune

from raybench import tracking
from raybench.category_search import METRIC, MODE, PerCategorySearch
from raybench.config import field_types, from_dict
from raybench.data import load_dataset, validate_category
from raybench.errors import ConfigError, SweepInterrupted
from raybench.local_ray import start_local_ray
from raybench.methods.base import BOUNDING_BUDGETS, BUDGETS, get_method
from raybench.models.weights import describe as describe_weights
from raybench.progress import ProgressLine
from raybench.run_logger import INTERRUPTED, MLflowTrialLogger, close_interrupted_runs
from raybench.search_space import SearchSpace, load_search_space
from raybench.splits import DEFAULT_VAL_SHARE, check_few_shot_pool, make_split
from raybench.trial import TrialContext, build_config, quiet_ray_logs, run_trial

__all__ = ["SweepSpec", "SweepOutcome", "run_sweep", "build_config", "DATASET_PRESETS"]

# the demo runs on real ImageNet features with no hub: tf_efficientnet_lite0 from the installed
# package (raybench[weights]), for the saliency net of cutswap too
DATASET_PRESETS = {"demo": {"weights": "imagenet", "trials": 4,
                            "overrides": {"image_size": 128, "backbone": "tf_efficientnet_lite0",
                                          "saliency_net": "tf_efficientnet_lite0"},
                            "final_seeds": 2}}


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
    kinds: dict = field(default_factory=dict)  # category -> "object" | "texture" (--kind)
    figures: bool = True  # each trial's overlays, curves and histogram as MLflow artifacts

    val_split: float = DEFAULT_VAL_SHARE  # share of the test images (real) or training normals (synthetic)
    val_mode: str = "real"  # real | synthetic: what validation is made of (raybench.splits)
    split_seed: int = 0  # the split depends on (dataset, category, split_seed) alone
    final_seeds: int = 0  # retrain each category's chosen config with this many new seeds


class SweepOutcome(list):
    """The dataset's leaderboard rows (a list, as before), plus what became of this sweep's trials."""

    def __init__(self, rows, sweep_id: str, total: int, failed: int):
        super().__init__(rows)
        self.sweep_id, self.total, self.failed = sweep_id, total, failed


class _DropTuneRestoreHint(logging.Filter):
    """Tune's own interrupt message points to `Tuner.restore(...)`; raybench's is `--resume`."""

    def filter(self, record) -> bool:
        return "Tuner.restore" not in record.getMessage()


@contextmanager
def own_resume_hint():
    tune_logger, hint_filter = logging.getLogger("ray.tune.tune"), _DropTuneRestoreHint()
    tune_logger.addFilter(hint_filter)
    try:
        yield
    finally:
        tune_logger.removeFilter(hint_filter)


def check_spec(spec: SweepSpec) -> None:
    """The sweep's own numbers (the method's config is checked by config.from_dict)."""
    for name, value, least in (("trials", spec.trials, 1), ("workers", spec.workers, 1),
                               ("max_concurrent", spec.max_concurrent, 1), ("max_failures", spec.max_failures, 0),
                               ("final_seeds", spec.final_seeds, 0), ("split_seed", spec.split_seed, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ConfigError(f"{name}: must be an integer >= {least}, got {value!r}")
    if not spec.cpus_per_trial > 0:
        raise ConfigError(f"cpus_per_trial: must be > 0, got {spec.cpus_per_trial!r}")
    if spec.gpus_per_trial is not None and not spec.gpus_per_trial >= 0:
        raise ConfigError(f"gpus_per_trial: must be >= 0, got {spec.gpus_per_trial!r}")


def new_sweep_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def bound_by_budget(space: SearchSpace, method, budget: str, log=print) -> SearchSpace:
    """smoke and paper take their keys out of the search (as --set does), so the search can never
    draw past the budget: smoke stays smoke, paper is the papers' schedule. default leaves the
    search space's ranges alone and fills only what it does not sample."""
    if budget not in BOUNDING_BUDGETS:
        return space
    values = method.budgets.get(budget, {})
    taken = sorted(k for k in values if k in space.distributions)
    if taken:
        log(f"budget {budget}: {', '.join(f'{k}={values[k]}' for k in taken)} fixed (taken out of the search)")
    return space.without(values)


def resolve_base_config(spec: SweepSpec, space: SearchSpace) -> dict:
    method = get_method(spec.method)
    if spec.budget not in BUDGETS:
        raise ValueError(f"unknown budget {spec.budget!r}; choose one of {BUDGETS}")
    preset = DATASET_PRESETS.get(spec.dataset, {})
    # precedence (low -> high): config defaults, dataset preset, budget, search-space fixed,
    # sampled values, --set; smoke/paper budgets were taken out of the space (bound_by_budget),
    # so for them the budget sits above fixed and sampled values
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
    check_spec(spec)
    method = get_method(spec.method)
    space = load_search_space(spec.method, spec.search_space)
    overrides = {}
    if spec.overrides:
        overrides = from_dict(method.config_cls, {**spec.overrides}, method=spec.method).__dict__
        overrides = {k: v for k, v in overrides.items() if k in spec.overrides}
        space = space.without(overrides)
    space = bound_by_budget(space, method, spec.budget, log)
    base = resolve_base_config(spec, space)
    first_config = from_dict(method.config_cls, {**base, **overrides}, method=spec.method)  # fails early

    categories = load_dataset(spec.dataset, spec.data_root, spec.categories, spec.kinds)
    stray = sorted(set(spec.kinds) - {c.name for c in categories})
    if stray:
        raise ConfigError(f"--kind names {stray}, not among this sweep's categories {[c.name for c in categories]}")
    splits = {}
    for cat in categories:  # every file opened once: a bad one stops us here, named
        validate_category(cat)
        log(f"data: {cat.summary()}")
        splits[cat.name] = make_split(cat, spec.val_mode, spec.val_split, spec.split_seed)
        log(f"split: {splits[cat.name].summary()}")
    check_few_shot_pool(splits, method.max_real_anomalies(first_config, space.distributions))
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
    if spec.resume and sweep_id:  # a resumed sweep keeps its split: same seed, share, mode and data
        for name, logged in tracking.sweep_split_hashes(uri, experiment_id, sweep_id).items():
            now = splits.get(name)
            if now is not None and now.test_split_hash != logged:
                raise ValueError(f"--resume of sweep {sweep_id}: {name}'s test split would change (hash "
                                 f"{logged[:12]} logged, {now.test_split_hash[:12]} now); resume with the same "
                                 f"--split-seed, --val-split, --val-mode and data")
    sweep_id = sweep_id or new_sweep_id()
    run_name = f"{spec.dataset}-{spec.method.replace('-', '_')}-{sweep_id}"
    write_latest_sweep_id(root, spec, sweep_id)

    if not ray.is_initialized():
        init = dict(include_dashboard=False, log_to_driver=True, runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
        if spec.address:
            ray.init(address=spec.address, **init)
        else:  # private to this machine: loopback, token auth, never a stranger's cluster
            start_local_ray(log, **init)
    names = [c.name for c in categories]
    total = spec.trials * len(names)
    gpus = spec.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    ctx = TrialContext(spec.dataset, spec.data_root, spec.method, base, overrides, spec.workers,
                       spec.cpus_per_trial, gpus, report_epochs=spec.asha and method.trained,
                       split_mode=spec.val_mode, val_share=spec.val_split, split_seed=spec.split_seed,
                       test_hashes={n: sp.test_split_hash for n, sp in splits.items()}, kinds=dict(spec.kinds),
                       figures=spec.figures)
    if spec.workers > 1:
        resources = {"cpu": 0.1}  # the trial only drives a TorchTrainer; its workers hold the devices
    else:
        resources = {"cpu": spec.cpus_per_trial, "gpu": gpus}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    tags = {"dataset": spec.dataset, "method": spec.method, "sweep_id": sweep_id, "budget": spec.budget,
            "git_commit": tracking.git_commit(), "raybench": "1"}
    per_category = {n: {"tags": {"test_split_hash": sp.test_split_hash}, "params": sp.params()}
                    for n, sp in splits.items()}
    logger = MLflowTrialLogger(uri, experiment_id, tags, total, per_category)
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
                name=run_name, storage_path=root, callbacks=[logger, ProgressLine(total)], verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    random.seed(spec.seed)
    quiet_ray_logs()
    with own_resume_hint():
        results = tuner.fit()
        _raise_if_interrupted(uri, experiment_id, sweep_id, spec.method, total)
        if spec.final_seeds > 0:  # only after every search trial ended: the winners are known
            total += _run_final_seeds(spec, results, ctx, resources, tags, per_category, uri, experiment_id,
                                      f"{root.rstrip('/')}/{run_name}-final", log)
    outcome = _raise_if_interrupted(uri, experiment_id, sweep_id, spec.method, total)
    rows = tracking.leaderboard(uri, experiment=exp_name, sweep_id=sweep_id)
    from raybench.sweep_summary import summarise_sweep
    summarise_sweep(uri, experiment_id, exp_name, tags, results, space, rows, log)  # winner tags, the sweep's charts
    return SweepOutcome(rows, sweep_id=sweep_id, total=total, failed=outcome["FAILED"])


def _raise_if_interrupted(uri: str, experiment_id: str, sweep_id: str, method: str, expected: int) -> dict:
    # MLflow holds each trial's fate, across resumes too: FINISHED, FAILED with its error, or
    # FAILED as interrupted (Tune itself ends the trials it cut off as TERMINATED)
    outcome = sweep_outcome(uri, experiment_id, sweep_id, method)
    ended = outcome["FINISHED"] + outcome["FAILED"]
    if ended < expected:  # Tune stopped early: Ctrl-C (SIGINT) or SIGUSR1
        raise SweepInterrupted(
            f"sweep {sweep_id} interrupted: {ended} of {expected} trial(s) ended; finish it with the same "
            f"command plus `--resume --sweep-id {shlex.quote(sweep_id)}`")
    return outcome


def sweep_outcome(uri: str, experiment_id: str, sweep_id: str, method: str) -> dict:
    """How many of a sweep's runs FINISHED and FAILED (an interrupted run counts as neither)."""
    counts = {"FINISHED": 0, "FAILED": 0}
    for run in tracking.search_runs(tracking.client(uri), [experiment_id], {"sweep_id": sweep_id, "method": method}):
        if run.info.status == "FINISHED" or (run.info.status == "FAILED" and run.data.tags.get("error") != INTERRUPTED):
            counts[run.info.status] += 1
    return counts


def _run_final_seeds(spec, results, ctx, resources, tags, per_category, uri, experiment_id, path, log) -> int:
    """The chosen configuration of each category (and variant) again with new seeds: a second Tune
    run, configs fixed, no early stopping, runs tagged `final`."""
    from dataclasses import replace

    from raybench.final_seeds import FixedConfigs, chosen_configs, final_trial_configs
    ctx = replace(ctx, report_epochs=False, overrides={k: v for k, v in ctx.overrides.items() if k != "seed"})
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    jobs = final_trial_configs(chosen_configs(results), spec.final_seeds)
    if not jobs:
        log("final seeds: no finished trial to retrain")
        return 0
    logger = MLflowTrialLogger(uri, experiment_id, {**tags, "final": "yes"}, len(jobs), per_category)
    log(f"final seeds: the chosen configuration of {len(jobs) // spec.final_seeds} category/variant(s) "
        f"(best on validation) again with {spec.final_seeds} new seed(s) each")
    if spec.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=FixedConfigs(jobs), num_samples=len(jobs),
                                        max_concurrent_trials=spec.max_concurrent),
            run_config=tune.RunConfig(
                name=path.rsplit("/", 1)[-1], storage_path=path.rsplit("/", 1)[0], callbacks=[logger], verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    tuner.fit()
    return len(jobs)
