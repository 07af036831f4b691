"""MLflow from the sweep's driver: one run per trial, FINISHED or FAILED, never left RUNNING.

Trials never talk to the store, so a sqlite file works with many concurrent trials, and a resumed
sweep finds each trial's own run again by its tags (sweep_id + trial_id)."""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

from ray.tune import Callback

from raybench import tracking
from raybench.evaluation.uncertainty import INTERVAL_METRICS
from raybench.sweep.category_search import TRIAL_KEYS
from raybench.sweep.search_space import decode_params
from raybench.sweep.trial import DETECTOR_DIR, ERROR_REPORT, FIGURES_DIR, PREDICTIONS_FILE, split_key

INTERRUPTED = ("interrupted: the sweep stopped before this trial ended "
               "(`raybench sweep ... --resume` reruns it)")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

LOGGED_METRICS = tracking.METRICS + tracking.VAL_METRICS + tracking.THRESHOLDS + (
    "fit_seconds", "inference_seconds", "inference_images_per_second", "n_test_scored", "n_val_scored",
    "eval_resolution", "epoch", "workers", tracking.OBJECTIVE) + INTERVAL_METRICS


def _config_params(plan, trial_config: dict) -> tuple[dict, str]:
    """The trial's whole configuration as MLflow params, and its variant: known before it runs, so
    a trial ASHA stops early carries them too (and lands in its leaderboard row)."""
    from raybench.config import to_dict
    from raybench.methods import get_method
    sampled = {k: v for k, v in trial_config.items() if k not in TRIAL_KEYS}
    config = plan.config(decode_params(sampled))
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in to_dict(config).items()}
    return params, get_method(plan.method).variant(config)


class MLflowTrialLogger(Callback):
    """`per_category`: split_key(category, fold) -> {"tags": ..., "params": ...} every run of it
    carries from the start (the split: test_split_hash, seed, counts); `plan` (the sweep's
    ConfigPlan): the trial's configuration and variant, logged from the start as well."""

    def __init__(self, uri: str, experiment_id: str, tags: dict, total: int, per_category: dict | None = None,
                 plan=None):
        self.uri, self.experiment_id, self.tags, self.total = uri, experiment_id, dict(tags), total
        self.per_category, self.plan = dict(per_category or {}), plan
        self._client = None
        self._runs: dict[str, str] = {}
        self._params_logged: set[str] = set()
        self._already_finished: set[str] = set()  # trials a resumed sweep finds FINISHED: left as they are

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
        found = tracking.search_runs(self.client, [self.experiment_id],
                                     {"sweep_id": self.tags["sweep_id"], "trial_id": trial.trial_id}, max_results=1)
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status == "FINISHED":
                self._already_finished.add(trial.trial_id)
            elif found[0].info.status != "RUNNING":  # reopened by a resumed sweep: its old error no longer holds
                self.client.update_run(run_id, status="RUNNING")
                if "error" in found[0].data.tags:
                    self.client.delete_tag(run_id, "error")
        else:
            category, fold = trial.config.get("category", "?"), trial.config.get("fold") or ""
            extra = self.per_category.get(split_key(category, fold), {})
            params, variant = _config_params(self.plan, trial.config) if self.plan is not None else ({}, "")
            tags = {**self.tags, **extra.get("tags", {}), "category": category, "trial_id": trial.trial_id,
                    "mlflow.runName": f"{category}-{self.tags['method']}{'-' + fold if fold else ''}-{trial.trial_id}",
                    "default_config": "yes" if trial.config.get("default_config") else "no",
                    **({"config_id": str(trial.config["config_id"])} if "config_id" in trial.config else {}),
                    **({"variant": variant} if variant else {})}
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            params = {**params, **{k: str(v) for k, v in extra.get("params", {}).items()}}
            if params:
                from mlflow.entities import Param
                self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        self._runs[trial.trial_id] = run_id
        return run_id

    def _log_params(self, run_id: str, result: dict) -> None:
        if run_id in self._params_logged or "raybench_config" not in result:
            return
        from mlflow.entities import Param
        config = json.loads(result["raybench_config"])
        config.update(json.loads(result.get("raybench_provenance", "{}")))  # weights source, normalisation
        logged = self.client.get_run(run_id).data.params  # the config, from the start: only what is new
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in config.items()
                  if k not in logged]
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
                   if k in LOGGED_METRICS and isinstance(v, (int, float))
                   and not (isinstance(v, float) and math.isnan(v))]
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
        if result.get("variant"):  # e.g. siamese-unet real / synthetic anomalies: leaderboard rows apart
            self.client.set_tag(run_id, "variant", result["variant"])

    def _progress(self, trials, trial) -> str:
        """[ended/total] from Tune's own trial states, so a resumed sweep neither skips nor repeats numbers."""
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id}
        return f"[{len(ended)}/{self.total}]"

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        result = trial.last_result or {}
        progress = self._progress(trials, trial)
        if trial.trial_id in self._already_finished:
            print(f"{progress} {trial.config.get('category')}: finished before the resume", flush=True)
            return
        if ERROR_REPORT in result:
            self._fail(run_id, trial, str(result[ERROR_REPORT]), progress)
            return
        checkpoint = trial.checkpoint
        if checkpoint is not None and result.get("final"):
            with checkpoint.as_directory() as folder:
                self.client.log_artifacts(run_id, str(Path(folder) / DETECTOR_DIR), "detector")
                if (Path(folder) / FIGURES_DIR).is_dir():  # PNGs the trial rendered (--no-figures: none)
                    self.client.log_artifacts(run_id, str(Path(folder) / FIGURES_DIR), FIGURES_DIR)
                if (Path(folder) / PREDICTIONS_FILE).is_file():  # per-image scores: paired comparisons
                    self.client.log_artifact(run_id, str(Path(folder) / PREDICTIONS_FILE))
            self.client.set_tag(run_id, "checkpoint", "yes")
        else:
            self.client.set_tag(run_id, "checkpoint", "no")
            self.client.set_tag(run_id, "stopped_early", "yes")
        self.client.set_terminated(run_id, "FINISHED")
        nan = float("nan")
        print(f"{progress} {trial.config.get('category')} {self.tags['method']}"
              f"{' (' + result['variant'] + ')' if result.get('variant') else ''}"
              f"{' final seed ' + str(trial.config.get('seed')) if self.tags.get('final') else ''}: "
              f"image AUROC val {result.get('val_image_auroc', nan):.4f} / test {result.get('image_auroc', nan):.4f}, "
              f"pixel AUROC val {result.get('val_pixel_auroc', nan):.4f} / test {result.get('pixel_auroc', nan):.4f}, "
              f"fit {result.get('fit_seconds', nan):.1f} s", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_id(trial)
        self._fail(run_id, trial, _trial_error_text(trial), self._progress(trials, trial))

    def _fail(self, run_id: str, trial, message: str, progress: str) -> None:
        message = _ANSI.sub("", message)  # Ray colours its tracebacks; the tag is read as plain text
        self.client.set_tag(run_id, "error", message[-5000:])  # the end holds the exception itself
        self.client.set_terminated(run_id, "FAILED")
        print(f"{progress} {trial.config.get('category')} FAILED: "
              f"{message.strip().splitlines()[-1] if message.strip() else '?'}", flush=True)

    def on_experiment_end(self, trials, **info):
        for trial in trials:  # a trial that never finished (the sweep was interrupted) must not stay RUNNING
            run_id = self._runs.get(trial.trial_id)
            if run_id and self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_tag(run_id, "error", INTERRUPTED)
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
    runs = tracking.search_runs(c, [experiment_id], {"sweep_id": sweep_id}, status="RUNNING")
    for run in runs:
        c.set_tag(run.info.run_id, "error", INTERRUPTED)
        c.set_terminated(run.info.run_id, "FAILED")
    return len(runs)
