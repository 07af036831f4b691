"""The sweep's driver, in three steps: `prepare` checks every input (data, search space, config,
weights, tracking, storage) before any trial; `tune` lets Ray Tune run the trials
(raybench.sweep.trial) with one Optuna study per category (raybench.sweep.category_search) while
MLflow records every trial (raybench.sweep.run_logger), then the final seeds; `finish` reads the
outcome, the leaderboard, and tags the winners and logs the sweep's charts (raybench.sweep.summary).

Data flows one way: the driver checks inputs and tracking, Ray runs `run_trial` (fit, evaluate,
save the Detector as the trial's checkpoint), and the driver's `MLflowTrialLogger` turns each
trial into exactly one MLflow run that ends FINISHED or FAILED.
"""
from __future__ import annotations

import logging
import os
import random
import shlex
from contextlib import contextmanager
from dataclasses import dataclass, replace

from ray import tune

from raybench import tracking
from raybench.data import load_dataset, validate_category
from raybench.errors import ConfigError, SweepInterrupted
from raybench.evaluation.splits import FOLDS, Split, check_validation, make_split
from raybench.local_ray import init_ray, start_local_ray
from raybench.methods import get_method
from raybench.models.weights import describe as describe_weights
from raybench.sweep.category_search import METRIC, MODE, PerCategorySearch
from raybench.sweep.plan import (DATASET_PRESETS, ConfigPlan, SweepSpec, check_spec, new_sweep_id,
                                 paper_setting_tags, plan_sweep, real_anomaly_need)
from raybench.sweep.progress import ProgressLine
from raybench.sweep.run_logger import INTERRUPTED, MLflowTrialLogger, close_interrupted_runs
from raybench.sweep.search_space import SearchSpace, load_search_space
from raybench.sweep.storage import (check_resumable, check_storage, read_latest_sweep_id, storage_root,
                                    write_latest_sweep_id)
from raybench.sweep.trial import TrialContext, quiet_ray_logs, run_trial, split_key

__all__ = ["SweepSpec", "SweepOutcome", "run_sweep"]


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


@dataclass
class Prepared:
    """Everything `prepare` checked and resolved: what `tune` and `finish` work from."""
    spec: SweepSpec
    space: SearchSpace  # what Optuna samples (--set and bounding budgets taken out)
    plan: ConfigPlan
    categories: list
    splits: dict[str, Split]  # split_key(category, fold) -> the split (crossfit: one per fold)
    uri: str
    experiment_name: str
    experiment_id: str
    root: str  # Ray Tune storage
    sweep_id: str

    @property
    def run_name(self) -> str:
        return f"{self.spec.dataset}-{self.spec.method.replace('-', '_')}-{self.sweep_id}"

    @property
    def tune_path(self) -> str:
        return f"{self.root.rstrip('/')}/{self.run_name}"


def run_sweep(spec: SweepSpec, log=print) -> SweepOutcome:
    """Run a sweep to completion; return the leaderboard rows of this dataset."""
    prepared = prepare(spec, log)
    results, total = tune_trials(prepared, log)
    return finish(prepared, results, total, log)


def prepare(spec: SweepSpec, log=print) -> Prepared:
    """Check every input before any trial: a bad file, value, store or storage fails here, named."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    check_spec(spec)
    method = get_method(spec.method)
    space, plan = plan_sweep(spec, load_search_space(spec.method, spec.search_space), log)
    first_config = plan.config()

    categories = load_dataset(spec.dataset, spec.data_root, spec.categories, spec.kinds)
    stray = sorted(set(spec.kinds) - {c.name for c in categories})
    if stray:
        raise ConfigError(f"--kind names {stray}, not among this sweep's categories {[c.name for c in categories]}")
    need = real_anomaly_need(spec, load_search_space(spec.method, spec.search_space))
    few_shot = need if spec.few_shot_pool is None else spec.few_shot_pool
    if few_shot < need:
        raise ConfigError(f"--few-shot-pool {few_shot}: trials of {spec.method} may train on up to {need} real "
                          f"anomalies (n_anomalies); raise it, or --set n_anomalies={max(few_shot, 1)}")
    splits = {}
    for cat in categories:  # every file opened once: a bad one stops us here, named
        validate_category(cat)
        log(f"data: {cat.summary()}")
        for fold in (FOLDS if spec.val_mode == "crossfit" else ("",)):
            split = make_split(cat, spec.val_mode, spec.val_split, spec.split_seed, spec.val_normals, few_shot,
                               fold or None)
            splits[split_key(cat.name, fold)] = split
            log(f"split: {split.summary()}")
    for split in splits.values():  # validation that cannot rank trials stops here, saying what to change
        warning = check_validation(split, spec.accept_weak_validation)
        if warning:
            log(warning)
    log(f"weights: {describe_weights(first_config.backbone, first_config.weights)}"
        + (" (the demo preset)" if spec.dataset in DATASET_PRESETS and not spec.weights else ""))
    for line in method.check(first_config):  # fetch (or read) weights once: a bad hub or file fails here
        log(line)
    paper = paper_setting_tags(spec.method, spec.budget, first_config)
    if paper:
        said = paper.get("paper_deviations")
        log(f"budget paper: {'departs from the papers: ' + said if said else 'the papers setting'} (tag paper_setting)")

    uri = tracking.tracking_uri(spec.tracking_uri)
    tracking.check_tracking(uri)
    root = storage_root(spec.storage)
    check_storage(root)
    exp_name = tracking.experiment_name(spec.dataset, spec.experiment)
    experiment_id = tracking.ensure_experiment(uri, exp_name)
    sweep_id = _sweep_id(spec, root, uri, experiment_id, splits)
    prepared = Prepared(spec, space, plan, categories, splits, uri, exp_name, experiment_id, root, sweep_id)
    if spec.resume and tune.Tuner.can_restore(prepared.tune_path):
        check_resumable(prepared.tune_path)
    write_latest_sweep_id(root, spec, sweep_id)
    return prepared


def _sweep_id(spec: SweepSpec, root: str, uri: str, experiment_id: str, splits: dict) -> str:
    """The sweep's id: given, the latest one for --resume, else a new one. A resumed sweep keeps
    its split: same seed, share, mode and data."""
    sweep_id = spec.sweep_id
    if spec.resume and not sweep_id:
        sweep_id = read_latest_sweep_id(root, spec.dataset, spec.method)
        if sweep_id is None:
            raise ValueError(f"--resume: no earlier sweep of {spec.dataset}/{spec.method} under {root}; pass --sweep-id")
    if spec.resume and sweep_id:
        groups = {sp.category.name: sp.split_group for sp in splits.values()}
        for name, logged in tracking.sweep_split_hashes(uri, experiment_id, sweep_id).items():
            now = groups.get(name)
            if now is not None and now != logged:
                raise ValueError(f"--resume of sweep {sweep_id}: {name}'s test split would change (hash "
                                 f"{logged[:12]} logged, {now[:12]} now); resume with the same --split-seed, "
                                 f"--val-split, --val-mode, --val-normals, few-shot pool and data")
    return sweep_id or new_sweep_id()


def _start_ray(spec: SweepSpec, log) -> None:
    import ray
    if ray.is_initialized():
        return
    from raybench.console import quiet_mode
    # quiet (the CLI without -v): the trials' own output (library warnings, a worker's shutdown
    # traceback when Tune ends it) stays in Ray's log files; a failed trial's error is in its MLflow run
    init = dict(include_dashboard=False, log_to_driver=not quiet_mode(),
                runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
    if spec.address:
        init_ray(address=spec.address, **init)  # ray.init, the process's SIGTERM handler kept
    else:  # private to this machine: loopback, token auth, never a stranger's cluster
        start_local_ray(log, **init)


def tune_trials(p: Prepared, log=print):
    """The search (one Optuna study per category), then the final seeds; (Tune results, trials)."""
    import ray
    spec, method = p.spec, get_method(p.spec.method)
    _start_ray(spec, log)
    names = [c.name for c in p.categories]
    folds = FOLDS if spec.val_mode == "crossfit" else ("",)
    total = spec.trials * len(names) * len(folds)
    gpus = spec.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    ctx = TrialContext(spec.dataset, spec.data_root, spec.method, p.plan, spec.workers,
                       spec.cpus_per_trial, gpus, report_epochs=spec.asha and method.trained,
                       val_mode=spec.val_mode, val_split=spec.val_split, split_seed=spec.split_seed,
                       test_hashes={n: sp.test_split_hash for n, sp in p.splits.items()}, kinds=dict(spec.kinds),
                       figures=spec.figures, val_normals=spec.val_normals,
                       few_shot=len(next(iter(p.splits.values())).pool) if p.splits else 0)
    if spec.workers > 1:
        resources = {"cpu": 0.1}  # the trial only drives a TorchTrainer; its workers hold the devices
    else:
        resources = {"cpu": spec.cpus_per_trial, "gpu": gpus}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    tags = _run_tags(p)
    per_category = {n: {"tags": {"test_split_hash": sp.test_split_hash, "split_group": sp.split_group},
                        "params": sp.params()} for n, sp in p.splits.items()}
    logger = MLflowTrialLogger(p.uri, p.experiment_id, tags, total, per_category, plan=p.plan)
    log(f"sweep {p.sweep_id}: {spec.method} on {spec.dataset} [{', '.join(names)}], {spec.trials} trial(s) each, "
        f"{spec.cpus_per_trial:g} CPU + {gpus:g} GPU per trial{f' x {spec.workers} workers' if spec.workers > 1 else ''}; "
        f"MLflow {p.uri} experiment {p.experiment_name!r}")

    if spec.resume and tune.Tuner.can_restore(p.tune_path):
        n = close_interrupted_runs(p.uri, p.experiment_id, p.sweep_id)
        log(f"resuming {p.tune_path} ({n} interrupted run(s) closed as FAILED until their trial reruns)")
        tuner = tune.Tuner.restore(p.tune_path, trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=True)
    else:
        scheduler = None
        if spec.asha and method.trained:
            from ray.tune.schedulers import ASHAScheduler
            scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode=MODE, grace_period=1,
                                      max_t=10_000)
        default = p.plan.config()  # the first configuration of every study: the method's default
        searcher = PerCategorySearch(names, p.space, spec.trials, spec.seed, folds=folds, select=spec.select,
                                     default_params={k: getattr(default, k) for k in p.space.distributions})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=total,
                                        max_concurrent_trials=spec.max_concurrent),
            run_config=tune.RunConfig(
                name=p.run_name, storage_path=p.root, callbacks=[logger, ProgressLine(total), _optuna_recorder(p, log)],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    random.seed(spec.seed)
    quiet_ray_logs()
    with own_resume_hint():
        results = tuner.fit()
        _raise_if_interrupted(p.uri, p.experiment_id, p.sweep_id, spec.method, total)
        if spec.final_seeds > 0:  # only after every search trial ended: the winners are known
            total += _run_final_seeds(spec, results, ctx, resources, tags, per_category, p.uri, p.experiment_id,
                                      f"{p.tune_path}-final", log)
    return results, total


def _optuna_recorder(p: Prepared, log):
    """Each category's search into the Optuna storage beside the MLflow store (optuna-dashboard)."""
    from raybench.sweep.optuna_storage import OptunaRecorder, storage_url
    return OptunaRecorder(storage_url(p.uri, p.root), p.spec.dataset, p.spec.method, p.sweep_id, p.space, log)


def _run_tags(p: Prepared) -> dict:
    # the papers' keys are out of the search (bound_by_budget): every trial's config agrees on them
    return {"dataset": p.spec.dataset, "method": p.spec.method, "sweep_id": p.sweep_id, "budget": p.spec.budget,
            "git_commit": tracking.git_commit(), "raybench": "1", "select": p.spec.select,
            tracking.COMPLETE_TAG: "no",  # set to yes by finish() once every trial ended
            **paper_setting_tags(p.spec.method, p.spec.budget, p.plan.config())}


def finish(p: Prepared, results, total: int, log=print) -> SweepOutcome:
    """The outcome (interrupted sweeps raise), the leaderboard, winner tags and the sweep's charts."""
    from raybench.sweep.summary import summarise_sweep
    outcome = _raise_if_interrupted(p.uri, p.experiment_id, p.sweep_id, p.spec.method, total)
    tracking.mark_complete(p.uri, p.experiment_id, p.sweep_id, p.spec.method)  # only now: never a partial "latest"
    rows = tracking.leaderboard(p.uri, experiment=p.experiment_name, sweep_id=p.sweep_id)
    tags = {**_run_tags(p), tracking.COMPLETE_TAG: "yes"}
    summarise_sweep(p.uri, p.experiment_id, p.experiment_name, tags, results, p.space, rows, log)
    return SweepOutcome(rows, sweep_id=p.sweep_id, total=total, failed=outcome["FAILED"])


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
    from raybench.sweep.final_seeds import FixedConfigs, chosen_configs, final_trial_configs
    ctx = replace(ctx, report_epochs=False, plan=ctx.plan.without_override("seed"))
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    rows = tracking.leaderboard(uri, experiment=tracking.experiment_name(spec.dataset, spec.experiment),
                                sweep_id=tags["sweep_id"], method=spec.method)
    jobs = final_trial_configs(chosen_configs(results, rows), spec.final_seeds)
    if not jobs:
        log("final seeds: no finished trial to retrain")
        return 0
    logger = MLflowTrialLogger(uri, experiment_id, {**tags, "final": "yes"}, len(jobs), per_category, plan=ctx.plan)
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
