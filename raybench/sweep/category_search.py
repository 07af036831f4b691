"""Optuna studies multiplexed into one Ray Tune search, so that all categories of a sweep run
concurrently while each study keeps its own TPE model.

- `--select category` (default): one study per category (per crossfit fold: fold a's study is
  steered by fold a's validation alone, fold b's by fold b's), each Tune trial trains one category.
- `--select dataset` (the papers' protocol): one study per fold for the whole dataset; each of its
  configurations is handed to every category (one Tune trial, one MLflow run each, tagged with the
  same `config_id`) and Optuna is told the mean validation objective over the categories.
The first configuration of every study is the method's default (no sampled values: presets, budget,
the space's `fixed:` and `--set` only), tagged `default_config`, so each row can show what tuning bought.
"""
from __future__ import annotations

import math
import pickle

from ray.tune.search import Searcher

from raybench.sweep.search_space import SearchSpace, _encode
from raybench.tracking.leaderboard import OBJECTIVE

# only validation steers the search (and ASHA): the objective of tracking.leaderboard, the same
# function that ranks runs; the test metrics a trial reports at its end are never read
METRIC, MODE = OBJECTIVE, "max"
ERROR_REPORT = "raybench_error"  # see raybench.sweep.trial: a deterministic error reported as a result
# TPE's flags, all explicit: Optuna 5 turned `multivariate` and `constant_liar` on by default (both
# off in Optuna 4), so one --seed proposed other trials on each; these are Optuna 5's values (a
# joint model of the parameters; concurrent trials are told apart by a constant lie). Every run
# records them (tpe_* params). The deprecated prior / clip / endpoint arguments keep one default
# across both versions and are left alone (passing them warns).
TPE_FLAGS = {"multivariate": True, "constant_liar": True, "group": False, "n_ei_candidates": 24}


def make_sampler(seed: int, trials: int):
    """The sampler of one category's study: seeded, TPE_FLAGS, random for its first trials."""
    from optuna.samplers import TPESampler
    return TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials // 2)), **TPE_FLAGS)
SELECTS = ("category", "dataset")
# keys the searcher adds to a trial's config besides the sampled values (raybench.sweep.trial pops them)
TRIAL_KEYS = ("category", "fold", "config_id", "default_config")


class PicklingSearcher(Searcher):
    """Tune saves a searcher with the experiment and restores it on --resume: the whole state, pickled
    (which is why the storage must be writable by the team alone; docs/serving.md, Reliability)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__.copy(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


class PerCategorySearch(PicklingSearcher):
    """`default_params`: the default configuration's values of the sampled keys (told to Optuna
    as its first trial when they lie inside the space; else only run)."""

    def __init__(self, categories: list[str], space: SearchSpace, trials_per_category: int, seed: int,
                 metric: str = METRIC, mode: str = MODE, folds=("",), select: str = "category",
                 default_params: dict | None = None):
        super().__init__(metric=metric, mode=mode)
        import optuna
        if select not in SELECTS:
            raise ValueError(f"--select {select!r}: choose one of {SELECTS}")
        self.categories, self.select, self.folds = list(categories), select, tuple(folds)
        self.distributions = dict(space.distributions)
        self.default_params = {k: _encode(v) for k, v in (default_params or {}).items() if k in self.distributions}
        keys = [(c, f) for c in self.categories for f in self.folds] if select == "category" else [("*", f) for f in self.folds]
        self.studies = {k: optuna.create_study(direction="maximize" if mode == "max" else "minimize",
                                               sampler=make_sampler(seed + i, trials_per_category))
                        for i, k in enumerate(keys)}
        self.keys = keys
        self.remaining = {k: trials_per_category for k in keys}  # configurations left to propose
        self.asked: dict[tuple, int] = {k: 0 for k in keys}
        self.queue: list[dict] = []  # Tune trial configs waiting (dataset mode: one per category)
        self.owner: dict[str, tuple] = {}  # trial id -> (study key, config number)
        self.pending: dict[tuple, dict] = {}  # (study key, config number) -> {optuna trial, values, left}
        self._next = 0

    def _propose(self, key: tuple) -> None:
        number = self.asked[key]
        self.asked[key] += 1
        self.remaining[key] -= 1
        if number == 0:  # the method's default configuration first
            params, trial = {}, None
        else:
            trial = self.studies[key].ask(self.distributions)
            params = dict(trial.params)
        category, fold = key
        members = self.categories if category == "*" else [category]
        self.pending[(key, number)] = {"trial": trial, "values": [], "left": len(members)}
        config_id = f"{fold}{number}"
        for c in members:
            self.queue.append({**params, "category": c, "fold": fold, "config_id": config_id,
                               "default_config": number == 0, "_key": (key, number)})

    def suggest(self, trial_id: str):
        if not self.queue:
            for step in range(len(self.keys)):  # round robin, so every category starts early
                key = self.keys[(self._next + step) % len(self.keys)]
                if self.remaining[key] > 0:
                    self._next = (self._next + step + 1) % len(self.keys)
                    self._propose(key)
                    break
        if not self.queue:
            return Searcher.FINISHED if not any(self.pending.values()) else None
        config = self.queue.pop(0)
        self.owner[trial_id] = config.pop("_key")
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # Optuna is told the final (or last, when ASHA stopped it) objective at completion

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        import optuna
        owner = self.owner.get(trial_id)
        entry = self.pending.get(owner) if owner else None
        if entry is None:
            return
        value = (result or {}).get(self.metric)
        ok = not error and ERROR_REPORT not in (result or {}) and isinstance(value, (int, float)) and math.isfinite(value)
        entry["values"].append(float(value) if ok else math.nan)
        entry["left"] -= 1
        if entry["left"] > 0:
            return
        del self.pending[owner]
        (key, _), values = owner, entry["values"]
        mean = math.nan if any(math.isnan(v) for v in values) else sum(values) / len(values)
        study = self.studies[key]
        if entry["trial"] is not None:
            if math.isnan(mean):
                study.tell(entry["trial"], state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(entry["trial"], mean)
        elif not math.isnan(mean) and self.default_params.keys() == self.distributions.keys():
            try:  # the default configuration, told as a finished trial when it lies inside the space
                study.add_trial(optuna.trial.create_trial(params=self.default_params,
                                                          distributions=self.distributions, value=mean))
            except ValueError:
                pass  # outside the space (e.g. epochs beyond its range): run and reported, not told
