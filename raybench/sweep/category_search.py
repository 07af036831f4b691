"""One Optuna study per category, multiplexed into one Ray Tune search so that all categories of
a sweep run concurrently while each keeps its own TPE model."""
from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from raybench.sweep.search_space import SearchSpace

# only validation steers the search (and ASHA); the test metrics a trial reports at its end are never read
METRIC, MODE = "val_image_auroc", "max"
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


class PicklingSearcher(Searcher):
    """Tune saves a searcher with the experiment and restores it on --resume: the whole state, pickled
    (which is why the storage must be writable by the team alone; README, Reliability)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__.copy(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


class PerCategorySearch(PicklingSearcher):
    def __init__(self, categories: list[str], space: SearchSpace, trials_per_category: int, seed: int,
                 metric: str = METRIC, mode: str = MODE):
        super().__init__(metric=metric, mode=mode)
        from ray.tune.search.optuna import OptunaSearch
        self.categories = list(categories)
        self.remaining = {c: trials_per_category for c in self.categories}
        self.owner: dict[str, str] = {}
        self.studies = {}
        for i, c in enumerate(self.categories):
            if space.distributions:
                sampler = make_sampler(seed + i, trials_per_category)
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
        if study is not None and self.metric in result and ERROR_REPORT not in result:
            study.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        study = self.studies.get(self.owner.get(trial_id))
        if study is None:
            return
        if result is not None and (ERROR_REPORT in result or not isinstance(result.get(self.metric), (int, float))):
            result = None
        study.on_trial_complete(trial_id, result, error=error or result is None)
