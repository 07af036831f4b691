"""Each category's Optuna search, persisted: an Optuna RDB storage beside the MLflow store
(`sqlite:///DIR/optuna.db` next to `sqlite:///DIR/mlflow.db`; for a tracking server, in the local
Ray Tune storage folder, else `./optuna.db`),
written by the driver as each trial completes, so `optuna-dashboard sqlite:///DIR/optuna.db` shows
the search live and after the fact. Tune's searcher keeps its own studies in memory (they steer);
these are the record. One study per (dataset, method, category, sweep): `demo/patchcore/disc/<sweep id>`."""
from __future__ import annotations

import math
from pathlib import Path

from ray.tune import Callback

from raybench.sweep.category_search import ERROR_REPORT, METRIC


def storage_url(tracking_uri: str, tune_root: str | None = None) -> str:
    """Where the Optuna studies of a sweep that tracks into `tracking_uri` are kept: beside a
    sqlite store; else beside the Ray Tune storage when it is a local folder; else ./optuna.db."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve().parent
    elif tune_root and "://" not in tune_root:
        folder = Path(tune_root).expanduser().resolve()
    else:
        folder = Path.cwd()
    return f"sqlite:///{folder / 'optuna.db'}"


def study_name(dataset: str, method: str, category: str, sweep_id: str) -> str:
    return f"{dataset}/{method}/{category}/{sweep_id}"


class OptunaRecorder(Callback):
    """A Tune callback (driver side): each ended trial -> one trial of its category's study."""

    def __init__(self, storage: str, dataset: str, method: str, sweep_id: str, space, log=print):
        self.storage_url, self.dataset, self.method, self.sweep_id = storage, dataset, method, sweep_id
        self.distributions = dict(space.distributions)
        self.log, self._storage, self._studies, self._warned = log, None, {}, False

    def __getstate__(self):
        """Tune pickles its callbacks with the experiment: the open storage and the log function
        stay behind (reopened, and `print`, after a restore)."""
        state = dict(self.__dict__)
        state.update(_storage=None, _studies={}, log=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.log = self.log or print

    def _study(self, category: str):
        import optuna
        if self._storage is None:
            self._storage = optuna.storages.RDBStorage(self.storage_url)
        if category not in self._studies:
            study = optuna.create_study(storage=self._storage, direction="maximize", load_if_exists=True,
                                        study_name=study_name(self.dataset, self.method, category, self.sweep_id))
            study.set_user_attr("metric", f"{METRIC} (validation: image AUROC + 0.01 x pixel AUROC)")
            self._studies[category] = study
        return self._studies[category]

    def record(self, config: dict, result: dict | None) -> None:
        import optuna
        category = (config or {}).get("category")
        if category is None:
            return
        if (config or {}).get("fold"):  # crossfit: each fold has its own search (demo/m/disc:a/...)
            category = f"{category}:{config['fold']}"
        params = {k: config[k] for k in self.distributions if k in config}
        value = (result or {}).get(METRIC)
        ok = isinstance(value, (int, float)) and math.isfinite(value) and ERROR_REPORT not in (result or {})
        self._study(category).add_trial(optuna.trial.create_trial(
            params=params, distributions={k: self.distributions[k] for k in params},
            value=float(value) if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL))

    def _safe_record(self, trial, result) -> None:
        try:
            self.record(trial.config, result)
        except Exception as err:  # noqa: BLE001 - the record must never stop the sweep
            if not self._warned:
                self._warned = True
                self.log(f"WARNING: Optuna storage {self.storage_url} not written ({type(err).__name__}: {err})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._safe_record(trial, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safe_record(trial, None)
